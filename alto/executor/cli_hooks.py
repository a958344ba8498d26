"""`alto run` and `alto profile` argument parsing and entry points (wired in alto/cli.py).

    alto run CONFIG.yaml --out DIR [--kernel auto|reference|fused] [--device cuda]
    alto profile --model random:llama-3.2-1b --kernels fused,loop,single --adapters 1,8,32 \\
                 --batch 1,2,4 --seq-len 1024 --ranks 16,32,64 --out traces/profiles/measured_h200.csv
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/*.yaml and docs/executor.md)")
    p.add_argument("--out", required=True, help="output folder: jobs.csv, losses.csv, curves.csv, adapters/")
    p.add_argument("--kernel", choices=["auto", "reference", "fused"], default=None,
                   help="LoRA implementation (overrides run.kernel; auto: fused on CUDA when kernels/ works)")
    p.add_argument("--device", default=None, help="override model.device (cpu, cuda, cuda:1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --out (its jobs.csv, losses.csv, curves.csv, "
                        "adapters/ and base_model/; other files stay); without it such a folder is refused")


def run_main(args: argparse.Namespace) -> int:
    """Validate the config (errors start with the config file and name the key, exit 2), train,
    write DIR/."""
    import io

    from alto.executor.config import ConfigError, load_config
    from alto.executor.session import check_device, run_config

    if args.device:
        check_device(args.device, "--device")
    try:
        cfg = load_config(args.config)
        if args.kernel:
            cfg.run.kernel = args.kernel
        if args.device:
            cfg.model.device = args.device
        with _hf_progress_bars(not args.quiet):
            res = run_config(cfg, args.out, log=io.StringIO() if args.quiet else sys.stderr,
                             overwrite=args.overwrite)
    except ConfigError as e:  # the one place that names the file (its data too: found in run_config)
        msg, name = str(e), str(Path(args.config))
        raise ConfigError(msg if name in msg else f"{name}: {msg}") from None
    print(f"wrote {Path(args.out) / 'jobs.csv'}")
    return 130 if res.interrupted else 0


def _ints(s: str, flag: str = "") -> list[int]:
    """Comma list of ints; with ``flag``, each must be >= 1 (ValueError naming the flag)."""
    try:
        vals = [int(x) for x in s.split(",") if x]
    except ValueError:
        raise ValueError(f"{flag or 'value'}: expected comma-separated integers, got {s!r}") from None
    if flag and (not vals or min(vals) < 1):
        raise ValueError(f"{flag}: expected integers >= 1, got {s!r}")
    return vals


PROFILE_KERNELS = ("fused", "loop", "single")  # kernels of the simulator's cost tables (sim/cost_model.py)


def _check_profile_args(args: argparse.Namespace) -> None:
    """Every option of `alto profile` checked before the model loads or anything is timed
    (ValueError naming the flag), and --out / --memory-out writable as CSV files."""
    for flag, val in (("--adapters", args.adapters), ("--batch", args.batch), ("--ranks", args.ranks)):
        _ints(val, flag)
    for flag, val in (("--seq-len", args.seq_len), ("--iters", args.iters)):
        if val < 1:
            raise ValueError(f"{flag}: expected an integer >= 1, got {val}")
    if "bmm" in args.kernels.split(","):  # (the eager reference path; profile.py could time it)
        raise ValueError("--kernels: bmm is not profiled: the simulator's cost tables have no bmm kernel "
                         "(sim/cost_model.py), so its rows could not be used")
    bad = [k for k in args.kernels.split(",") if k not in PROFILE_KERNELS]
    if bad or not args.kernels:
        raise ValueError(f"--kernels: unknown {', '.join(bad) or 'empty list'} (known: {', '.join(PROFILE_KERNELS)})")
    from sim.cost_model import check_appendable

    check_appendable(Path(args.out))
    if args.memory:
        check_appendable(_memory_out(args))


def _memory_out(args: argparse.Namespace) -> Path:
    """Where `alto profile --memory` appends its row: --memory-out, else memory_<out name>."""
    out = Path(args.out)
    return Path(args.memory_out) if args.memory_out else out.with_name("memory_" + out.name)


def add_profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="random:llama-3.2-1b", help="random:<arch>, HF folder or .gguf")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--kernels", default="fused,loop,single", help="comma list of fused, loop, single")
    p.add_argument("--adapters", default="1,4,16,32", help="comma list of adapter counts")
    p.add_argument("--batch", default="1,2,4", help="comma list of per-adapter batch sizes (rows)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per row")
    p.add_argument("--ranks", default="16", help="ranks, cycled over the adapters (mean_rank column)")
    p.add_argument("--iters", type=int, default=5, help="timed steps per point (median reported)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--memory", action="store_true", help="also fit M(B) and write a memory row")
    p.add_argument("--out", default="traces/profiles/measured.csv", help="step-cost CSV to append to")
    p.add_argument("--memory-out", default=None,
                   help="memory CSV to append to (default: memory_<out name> beside --out)")


def profile_main(args: argparse.Namespace) -> int:
    """Measure step times (and optionally the memory fit) and append rows to the cost tables."""
    import datetime as dt

    import torch

    from alto.executor.config import Config, MemoryCfg, RunCfg, parse_model, validate_files
    from alto.executor.lora_model import MultiLoraModel
    from alto.executor.models import load_backbone
    from alto.executor.profile import PROFILE_COLS, device_name, fit_memory, profile_rows
    from alto.executor.session import check_device
    from sim.cost_model import append_rows

    _check_profile_args(args)
    mc = parse_model({"path": args.model, "dtype": args.dtype, "device": args.device,
                      "gradient_checkpointing": args.gradient_checkpointing})
    check_device(args.device, "--device")
    cfg = Config(mc, [], {}, MemoryCfg(), RunCfg(), Path.cwd())
    validate_files(cfg)
    model, tok, dev = load_backbone(cfg)
    mlm = MultiLoraModel(model, ["q", "k", "v", "o", "gate", "up", "down"],
                         gradient_checkpointing=args.gradient_checkpointing)
    name = args.model.split(":", 1)[1] if args.model.startswith("random:") else Path(args.model).stem
    vocab = model.config.vocab_size
    ranks = _ints(args.ranks)
    rows = []
    for k in args.kernels.split(","):
        ns = [1] if k == "single" else _ints(args.adapters)
        rows += profile_rows(mlm, name, k, ns, _ints(args.batch), args.seq_len, ranks, vocab,
                             iters=args.iters, log=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    append_rows(out, [{c: r[c] for c in PROFILE_COLS} for r in rows])
    print(f"appended {len(rows)} rows to {out}")
    if args.memory and dev.type != "cuda":
        print("--memory: skipped, the memory fit measures CUDA allocations (this run is on "
              f"{dev.type})", file=sys.stderr)
    if args.memory and dev.type == "cuda":
        hbm = torch.cuda.get_device_properties(dev).total_memory
        mm, pts = fit_memory(mlm, args.seq_len, max(ranks), vocab=vocab)
        mout = _memory_out(args)
        append_rows(mout, [{"gpu": device_name(dev), "model": name, "k0_bytes": f"{mm.k0_bytes:.6g}",
                            "k1_bytes_per_token": f"{mm.k1_bytes_per_token:.6g}", "hbm_bytes": hbm,
                            "source": f"measured: {device_name(dev)} {dt.date.today()} alto-profile "
                                      f"rank {max(ranks)} points {pts}, adapter states taken out"}])
        print(f"appended memory row to {mout}: {mm}")
    print(simulate_hint(out, device_name(dev), name, _memory_out(args) if args.memory else None))
    return 0


def simulate_hint(out: Path, gpu: str, model: str, memory_out: Path | None = None) -> str:
    """How `alto simulate` uses the rows of (gpu, model) just appended to ``out``, or why it
    cannot yet. It reads such a table only through --cost-table (by itself, only
    traces/profiles/measured_*.csv), with the memory_<name> table beside it, and only under
    --costs measured: auto wants every kernel of the estimates, lorafusion included, which
    `alto profile` does not time. Checked by loading the tables as that command would.
    memory_out: where this run wrote its memory row (--memory-out), if anywhere."""
    from alto.models import UnknownNameError
    from sim.cost_model import CostModel

    try:
        cost = CostModel.from_dir(costs="measured", extra=[out])
    except ValueError as e:  # e.g. an HF model outside the catalogue (alto.models)
        return f"note: `alto simulate` cannot use {out}: {e}"
    try:
        cost.memory(gpu, model)
    except UnknownNameError:
        beside = out.with_name(f"memory_{out.name}")
        if memory_out is not None and Path(memory_out).resolve() != beside.resolve():
            return (f"note: `alto simulate --cost-table {out}` reads memory rows from {beside} only: "
                    f"append the row written to {memory_out} there")
        return (f"note: `alto simulate` cannot use {out} yet: no memory row for {gpu}/{model} "
                f"(`alto profile --memory` fits one on CUDA, into {beside.name} beside it)")
    cmd = f"alto simulate --cost-table {out} --costs measured" + ("" if gpu == "H200" else f" --gpu-type {gpu}")
    return f"to simulate with these costs: {cmd}"


@contextlib.contextmanager
def _hf_progress_bars(on: bool):
    """transformers' own progress bars (e.g. "Writing model shards" when base_model/ is
    saved) off while ``on`` is False, as --quiet promises; restored afterwards."""
    if on:
        yield
        return
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()

