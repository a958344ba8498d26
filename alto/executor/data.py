"""Data for `alto run`: sources, tokenizers, per-job sample streams, token batches.

A *sample* is a (prompt, completion) pair. Encoded, it is `ids = [bos] + prompt +
completion + [eos]`; the model reads `ids[:-1]` and is scored on predicting
`ids[1:]`, with the loss mask set only on completion tokens (and eos), so prompt
tokens never contribute (completion-only loss).

Batch layout (documented in docs/executor.md): one training step holds the samples
of every active adapter as rows of one `[R, L]` token matrix, adapter by adapter,
each adapter's rows contiguous. `L` is the longest sample *in this step* (at most
the task's max_seq_len); shorter samples are right-padded inside their own row.
With causal attention and right padding no real token ever sees another sample or
a pad, so the per-sample math equals an unpadded run. There is no padding across
adapters: adapter i owns exactly rows_i * L tokens of the flattened [R*L, d] input.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from alto.executor.config import Config, ConfigError, TaskCfg, resolve

Sample = tuple[str, str]  # (prompt, completion)


# ---------------------------------------------------------------- tokenizers


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus bos=256, eos=257, pad=258 (vocab 260, llama-tiny's vocab)."""

    bos_id, eos_id, pad_id, vocab_size = 256, 257, 258, 260

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


class HFTokenizer:
    """Wraps a transformers tokenizer; encodes without special tokens (we add bos/eos)."""

    def __init__(self, tok):
        self.tok = tok
        self.bos_id = tok.bos_token_id
        self.eos_id = tok.eos_token_id if tok.eos_token_id is not None else 0
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)


def encode_sample(tok, s: Sample, max_len: int) -> tuple[list[int], int]:
    """Token ids of one sample (length <= max_len + 1) and the index where the completion starts.

    Long samples lose prompt tokens from the left first (the completion is what is
    scored), then completion tokens from the right.
    """
    return _encode(tok, s, max_len)[:2]


def encode_samples(tok, samples, max_len: int) -> tuple[list[tuple[list[int], int]], int, int]:
    """encode_sample of each sample, each tokenized once, with (how many were cut, how many
    of those lost completion tokens)."""
    out, cut, lost = [], 0, 0
    for s in samples:
        ids, start, n_full, n_c = _encode(tok, s, max_len)
        out.append((ids, start))
        cut += len(ids) < n_full
        lost += len(ids) - start < n_c
    return out, cut, lost


def _encode(tok, s: Sample, max_len: int) -> tuple[list[int], int, int, int]:
    """(ids, completion start, uncut length, uncut completion length with eos)."""
    head = [tok.bos_id] if tok.bos_id is not None else []
    p, c = tok.encode(s[0]), tok.encode(s[1]) + [tok.eos_id]
    n_full, n_c = len(head) + len(p) + len(c), len(c)
    budget = max_len + 1 - len(head)
    c = c[:budget - 1] if len(c) > budget - 1 else c  # keep >= 1 prompt/bos token as context
    p = p[max(0, len(p) - (budget - len(c))):]
    return head + p + c, len(head) + len(p), n_full, n_c


@dataclass
class TokenBatch:
    """One step's tokens. inputs/targets: [R, L] int64; mask: [R, L] float (1 = scored);
    rows: rows per adapter, in slot order (sum(rows) == R)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    rows: list[int]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    def to(self, device) -> TokenBatch:
        return TokenBatch(self.inputs.to(device), self.targets.to(device), self.mask.to(device), self.rows)


def collate(encoded: Sequence[Sequence[tuple[list[int], int]]], pad_id: int) -> TokenBatch:
    """encoded[i]: adapter i's samples as (ids, completion_start). Rows adapter-major."""
    flat = [e for group in encoded for e in group]
    L = max(1, max((len(ids) - 1 for ids, _ in flat), default=1))
    R = len(flat)
    inputs = torch.full((R, L), pad_id, dtype=torch.long)
    targets = torch.full((R, L), pad_id, dtype=torch.long)
    mask = torch.zeros((R, L), dtype=torch.float32)
    for r, (ids, cstart) in enumerate(flat):
        n = len(ids) - 1
        inputs[r, :n] = torch.tensor(ids[:-1])
        targets[r, :n] = torch.tensor(ids[1:])
        mask[r, max(0, cstart - 1):n] = 1.0  # target position t predicts ids[t+1]
    return TokenBatch(inputs, targets, mask, [len(g) for g in encoded])


# ---------------------------------------------------------------- per-job sample stream


class SampleStream:
    """A job's own data order: a fresh seeded permutation per epoch; counts epochs.

    take(b) returns b dataset indices (crossing epoch boundaries as needed).
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._perm = self._make_perm()

    def _make_perm(self) -> list[int]:
        p = list(range(self.n))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(p)
        return p

    def take(self, b: int) -> list[int]:
        out = []
        while len(out) < b:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._make_perm()
            k = min(b - len(out), self.n - self.pos)
            out += self._perm[self.pos:self.pos + k]
            self.pos += k
        return out


# ---------------------------------------------------------------- sources


def _read_jsonl(p: Path, where: str) -> list[Sample]:
    """(prompt, completion) of each non-blank line of a JSONL file (UTF-8, a BOM allowed).
    Lines end at "\n" only: JSON strings may hold U+2028 and the like, which str.splitlines
    would split on. ConfigError naming the file, the line and what is wrong."""
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: {p}: not UTF-8 ({e})") from None
    out = []
    for i, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: {p} line {i + 1}: not JSON ({e})") from None
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in ("prompt", "completion")):
            raise ConfigError(f"{where}: {p} line {i + 1}: need a JSON object whose prompt and completion "
                              "are strings")
        out.append((d["prompt"], d["completion"]))
    if not out:
        raise ConfigError(f"{where}: {p} holds no samples")
    return out


def _reasoning_gym(args: dict, where: str) -> tuple[list[Sample], list[Sample]]:
    try:
        import reasoning_gym
    except ImportError:
        raise ConfigError(f"{where}: package reasoning-gym is not installed (pip install 'alto[real]')") from None
    seed = int(args.get("seed", 0))
    extra = dict(args.get("config") or {})

    def make(size: int, s: int) -> list[Sample]:
        try:
            ds = reasoning_gym.create_dataset(args["name"], size=size, seed=s, **extra)
        except Exception as e:  # unknown generator name etc.
            raise ConfigError(f"{where}.name: {args['name']!r}: {e}") from None
        return [(f"{x['question']}\nAnswer: ", str(x["answer"])) for x in ds]

    # distinct seeds give disjoint-in-practice train/val splits
    return make(int(args.get("train_size", 256)), seed), make(int(args.get("val_size", 32)), seed + 10_007)


def bigbench_root(args: dict) -> Path:
    """Folder holding <task>/task.json: args.root, else $ALTO_BIGBENCH_DIR, else
    ~/.cache/alto/bigbench (unpack `pip download --no-deps bigbench==1.0.0`'s
    bigbench/benchmark_tasks there)."""
    r = args.get("root") or os.environ.get("ALTO_BIGBENCH_DIR") or "~/.cache/alto/bigbench"
    return Path(os.path.expanduser(str(r)))


def _bigbench(cfg: Config, args: dict, where: str) -> tuple[list[Sample], list[Sample]]:
    root = bigbench_root(args)
    if not root.is_absolute() and args.get("root"):
        root = resolve(cfg, str(args["root"]))
    p = root / str(args["task"]) / "task.json"
    if not p.is_file():
        raise ConfigError(f"{where}.task: file not found: {p}")
    d = json.loads(p.read_text())
    pre_in = d.get("example_input_prefix", "\nQ: ")
    pre_out = d.get("example_output_prefix", "\nA: ")
    samples = []
    for ex in d.get("examples", []):
        tgt = ex.get("target")
        if tgt is None and "target_scores" in ex:  # multiple choice: the best-scored option
            tgt = max(ex["target_scores"].items(), key=lambda kv: kv[1])[0]
        if isinstance(tgt, list):
            tgt = tgt[0] if tgt else ""
        if tgt is None:
            continue
        samples.append((f"{d.get('task_prefix', '')}{pre_in}{ex['input']}{pre_out}", str(tgt)))
    if len(samples) < 2:
        raise ConfigError(f"{where}.task: {p} has fewer than 2 usable examples")
    random.Random(int(args.get("seed", 0))).shuffle(samples)
    if args.get("max_examples"):
        samples = samples[: int(args["max_examples"])]
    nv = max(1, int(round(len(samples) * float(args.get("val_frac", 0.1)))))
    return samples[nv:], samples[:nv]


def load_task_data(cfg: Config, task: TaskCfg, i: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val) samples of a task; errors name the config key or file."""
    where = f"tasks[{i}].data.{task.data.kind}"
    a = task.data.args
    if task.data.kind == "jsonl":
        return (_read_jsonl(resolve(cfg, str(a["train"])), where + ".train"),
                _read_jsonl(resolve(cfg, str(a["val"])), where + ".val"))
    if task.data.kind == "reasoning_gym":
        return _reasoning_gym(a, where)
    return _bigbench(cfg, a, where)
