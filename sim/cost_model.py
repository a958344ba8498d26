"""Step times and memory per (GPU type, model, kernel), read from profiled cost tables.

The simulator asks one question through one interface (vidur-style): `predict()` = the
seconds of ONE co-located training step (fwd + bwd + optimizer) of `n_adapters` adapters
of one task on all of that task's GPUs. Numbers come from two CSV files in a profile dir
(default `traces/profiles/`); until `alto profile` measures them, the committed rows are
ESTIMATES from `traces/profiles/estimate_costs.py` (source column says "estimate: ...").

step_costs.csv, one row per profiled point:
    gpu              GPU type, e.g. "H200"
    model            key of alto.models.MODELS
    kernel           one of KERNELS (below)
    n_adapters       adapters co-located in the step (int >= 1; "single" rows: 1)
    tokens_per_step  tokens of the step summed over all adapters and all the task's GPUs
    mean_rank        mean LoRA rank of the adapters in the profiled step
    step_time_s      seconds of one step (fwd + bwd + optimizer), > 0
    source           "estimate: <formula>" or "measured: <gpu> <date> <tool>"
    date             ISO date of the measurement / estimate

memory.csv, one row per (gpu, model), per GPU for the paper's M(B) = k0 + k1 * B * L:
    gpu, model, k0_bytes, k1_bytes_per_token, hbm_bytes, source

Lookup rules:
- Measured override: if any row of a (gpu, model, kernel) has a source starting with
  "measured", only its measured rows are used for that key (one consistent surface, one
  source string); estimate rows serve the keys nobody measured. Same for memory rows.
  Of two rows at the same point (n_adapters, tokens_per_step), the later one in the file wins.
- Interpolation: each row is first corrected to the query's mean rank (`rank_factor`);
  then piecewise-linear in tokens_per_step within each n_adapters, then piecewise-linear
  in n_adapters. Beyond the grid both extrapolate with the end segment's slope, floored
  at the smallest value of that 1-D series (a step never gets cheaper than the cheapest
  profiled one by extrapolating). Grids need not be rectangular.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from alto.models import MODELS, UnknownNameError
from alto.policy.memory import adapter_state_bytes as adapter_state_bytes_of
from traces.schema import give_mode_of

KERNELS = ("fused", "loop", "lorafusion", "single")
#  fused: ALTO fused multi-LoRA kernels (base GEMM once + constant launches)
#  loop: mLoRA-like shared base + per-adapter python loop of LoRA GEMMs
#  lorafusion: fused kernels, at most 4 adapters per fused group (ceil(n/4) groups)
#  single: one adapter alone (sequential baseline); n_adapters must be 1

STEP_COLUMNS = ("gpu", "model", "kernel", "n_adapters", "tokens_per_step", "mean_rank",
                "step_time_s", "source", "date")
MEMORY_COLUMNS = ("gpu", "model", "k0_bytes", "k1_bytes_per_token", "hbm_bytes", "source")
DEFAULT_PROFILE_DIR = Path(__file__).resolve().parents[1] / "traces" / "profiles"

_STEP_TYPES = {"n_adapters": int, "tokens_per_step": int, "mean_rank": float, "step_time_s": float}
_MEMORY_TYPES = {"k0_bytes": float, "k1_bytes_per_token": float, "hbm_bytes": float}


# ---------------------------------------------------------------- CSV helpers (shared)


def read_csv_table(path: str | os.PathLike, columns: Sequence[str], types: Mapping[str, type]) -> list[dict]:
    """Rows of a CSV as dicts, fields converted by `types` (others stay str).

    Raises ValueError naming the file, the 1-based data row (header = row 0) and the field
    for a missing column, an empty field or a value that does not parse.
    """
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
        rows = []
        for i, raw in enumerate(reader, start=1):
            row = {}
            for c in columns:
                v = raw.get(c)
                if v is None or v.strip() == "":
                    raise ValueError(f"{path}: row {i}: field {c!r} is empty")
                try:
                    row[c] = types[c](v.strip()) if c in types else v.strip()
                except ValueError:
                    raise ValueError(f"{path}: row {i}: field {c!r}: cannot parse {v!r} as "
                                     f"{types[c].__name__}") from None
            rows.append(row)
    return rows


def write_rows(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping]) -> None:
    """Write a whole CSV atomically (temp file in the same dir, then os.replace)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
            w.writeheader()
            for r in rows:
                extra = set(r) - set(columns)
                if extra or set(columns) - set(r):
                    raise ValueError(f"{path}: row {dict(r)} does not have exactly the columns {list(columns)}")
                w.writerow(r)
            f.flush()
            os.fsync(f.fileno())
        give_mode_of(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_appendable(path: str | os.PathLike) -> tuple[str, ...]:
    """The columns rows appended to ``path`` must have (see append_rows); ValueError naming
    the file if it is a folder or a CSV with another header. Reads only the header."""
    path = Path(path)
    columns = MEMORY_COLUMNS if path.name.startswith("memory") else STEP_COLUMNS
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; expected a CSV file")
    if path.exists():
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != columns:
            raise ValueError(f"{path}: header {header} is not {list(columns)}")
    return columns


def append_rows(path: str | os.PathLike, rows: Iterable[Mapping]) -> None:
    """Append rows (e.g. measured ones from `alto profile`) to step_costs.csv or memory.csv.

    The schema is the file's (MEMORY_COLUMNS when the file name starts with "memory",
    STEP_COLUMNS otherwise, for a file that does not exist yet). Every row must have exactly
    those columns. The file is rewritten atomically, so a crash leaves the old table.
    """
    path = Path(path)
    columns = check_appendable(path)
    old: list[dict] = []
    if path.exists():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    write_rows(path, columns, old + [dict(r) for r in rows])


# ---------------------------------------------------------------- interpolation


def interp_clamped(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """Piecewise-linear y(x) through sorted distinct xs; end-segment slope outside; >= min(ys)."""
    xs_a, ys_a = np.asarray(xs, float), np.asarray(ys, float)
    if len(xs_a) == 1:
        return float(ys_a[0])
    i = int(np.clip(np.searchsorted(xs_a, x) - 1, 0, len(xs_a) - 2))
    slope = (ys_a[i + 1] - ys_a[i]) / (xs_a[i + 1] - xs_a[i])
    return float(max(ys_a[i] + slope * (x - xs_a[i]), ys_a.min()))


def rank_factor(model: str, new_rank: float, table_rank: float | np.ndarray) -> float | np.ndarray:
    """Multiplier taking a step time at mean rank table_rank to mean rank new_rank.

    Only the LoRA share of the FLOPs scales with rank: phi = 6 P(r) / (4 N + 6 P(r)) with
    P(r) the LoRA params of a rank-r adapter (per token each is used ~6 times: fwd, dX, dW)
    and 4 N the frozen base (fwd + input grad). factor = 1 - phi + phi * new/table.
    """
    lora1, base = _flops_per_token(model)
    lora = lora1 * table_rank
    phi = lora / (base + lora)
    return 1.0 - phi + phi * new_rank / table_rank


@functools.cache
def _flops_per_token(model: str) -> tuple[float, float]:
    """(LoRA FLOPs per token per unit rank = 6 P(1), frozen-base FLOPs per token = 4 N)."""
    m = MODELS[model]
    return 6.0 * m.lora_params(1), 4.0 * m.params


def adapter_state_bytes(model: str, rank: int) -> float:
    """ESTIMATE of one adapter's resident bytes: fp32 params + grads + AdamW m, v (16 B/param).

    Not part of memory()'s k0 (which is per the base model only); add n * this for n adapters.
    """
    return adapter_state_bytes_of(MODELS[model].lora_params(rank))


# ---------------------------------------------------------------- the model


class CostModel:
    """predict() / memory() over parsed table rows (see module docstring for the rules)."""

    def __init__(self, step_rows: Iterable[Mapping], memory_rows: Iterable[Mapping] = (),
                 unused_extra: Mapping[tuple[str, str], list[str]] | None = None,
                 extra_keys: Iterable[tuple[str, str]] = ()) -> None:
        """unused_extra: (gpu, model) of added tables that --costs auto left out -> the
        kernels they lack; extra_keys: every (gpu, model) the added tables hold rows for
        (from_dir; the CLI says which of them a simulation does not use)."""
        self.unused_extra = dict(unused_extra or {})
        self.extra_keys = frozenset(extra_keys)
        by_key: dict[tuple[str, str, str], list[Mapping]] = {}
        for r in step_rows:
            check_step_row(r)
            by_key.setdefault((r["gpu"], r["model"], r["kernel"]), []).append(r)
        # key -> {n: (tokens, times, ranks) sorted by tokens}, and the key's source string
        self._grid: dict[tuple[str, str, str], dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._source: dict[tuple[str, str, str], str] = {}
        for key, rows in by_key.items():
            rows = _preferred(rows)
            points: dict[tuple[int, int], Mapping] = {}
            for r in rows:  # later rows overwrite earlier ones at the same point
                points[(r["n_adapters"], r["tokens_per_step"])] = r
            grid: dict[int, list] = {}
            for (n, t), r in sorted(points.items()):
                grid.setdefault(n, []).append((t, r["step_time_s"], r["mean_rank"]))
            self._grid[key] = {n: tuple(np.array(c, float) for c in zip(*v, strict=True)) for n, v in grid.items()}
            self._source[key] = "; ".join(dict.fromkeys(r["source"] for r in rows))
        self._memory: dict[tuple[str, str], tuple[float, float, float]] = {}
        mem_by_key: dict[tuple[str, str], list[Mapping]] = {}
        for r in memory_rows:
            mem_by_key.setdefault((r["gpu"], r["model"]), []).append(r)
        for key, rows in mem_by_key.items():
            r = _preferred(rows)[-1]
            self._memory[key] = (r["k0_bytes"], r["k1_bytes_per_token"], r["hbm_bytes"])

    @classmethod
    def from_dir(cls, path: str | os.PathLike = DEFAULT_PROFILE_DIR, costs: str = "auto",
                 extra: Sequence[str | os.PathLike] = ()) -> CostModel:
        """Load the tables in `path`: estimates (step_costs.csv, memory.csv) plus measured
        tables written by `alto profile` / the executor benchmark (measured_*.csv,
        memory_measured_*.csv).

        extra: more measured step-cost tables (`alto profile --out` files), each with its
        memory table when there is one beside it under alto profile's default name
        (memory_<name>); they join the measured tables of `path` (later files win at the
        same point). Their rows must be measured ones (source "measured: ...").

        costs: which step rows to use per (gpu, model):
          "estimate": only estimate rows;
          "auto" (default): measured rows only for a (gpu, model) whose measured rows cover
              every kernel the estimates cover, so that policies are never compared on a mix
              of measured and estimated kernels; estimates elsewhere;
          "measured": measured rows wherever they exist (mixing allowed; say so in results).
        Memory rows: a measured row replaces the estimate for its (gpu, model) in auto/measured.
        """
        if costs not in ("auto", "estimate", "measured"):
            raise ValueError(f"--costs must be auto, estimate or measured, got {costs!r}")
        path = Path(path)
        steps = read_csv_table(path / "step_costs.csv", STEP_COLUMNS, _STEP_TYPES)
        mem = read_csv_table(path / "memory.csv", MEMORY_COLUMNS, _MEMORY_TYPES)
        measured = [r for f in sorted(path.glob("measured_*.csv")) for r in read_csv_table(f, STEP_COLUMNS, _STEP_TYPES)]
        extra_mem, extra_keys = [], set()
        for f in map(Path, extra):
            try:
                rows = read_csv_table(f, STEP_COLUMNS, _STEP_TYPES)
                for i, r in enumerate(rows, start=1):
                    if not str(r["source"]).startswith("measured"):
                        raise ValueError(f"row {i}: field 'source': extra cost tables hold measured rows "
                                         f"(source 'measured: ...'), got {r['source']!r}")
                    try:
                        check_step_row(r)
                    except ValueError as e:
                        raise ValueError(f"row {i}: {e}") from None
                beside = f.with_name(f"memory_{f.name}")
                if beside.exists():
                    extra_mem += read_csv_table(beside, MEMORY_COLUMNS, _MEMORY_TYPES)
            except UnicodeDecodeError as e:
                raise ValueError(f"{f}: not UTF-8 text ({e.reason})") from None
            except ValueError as e:
                msg = str(e)
                raise ValueError(msg if msg.startswith(str(f)) else f"{f}: {msg}") from None
            measured += rows
            extra_keys |= {(r["gpu"], r["model"]) for r in rows}
        unused = {}
        if costs == "estimate":
            measured = []
        elif costs == "auto":
            kernels = lambda rows, gm: {r["kernel"] for r in rows if (r["gpu"], r["model"]) == gm}
            complete = {
                gm for gm in {(r["gpu"], r["model"]) for r in measured}
                if kernels(steps, gm) <= kernels(measured, gm)
            }
            # added tables that auto leaves out, with the kernels they lack
            unused = {gm: sorted(kernels(steps, gm) - kernels(measured, gm)) for gm in extra_keys - complete}
            measured = [r for r in measured if (r["gpu"], r["model"]) in complete]
        if costs != "estimate":
            for f in sorted(path.glob("memory_measured_*.csv")):
                mem += read_csv_table(f, MEMORY_COLUMNS, _MEMORY_TYPES)
            mem += extra_mem
        return cls(steps + measured, mem, unused, extra_keys)

    def gpu_types(self) -> list[str]:
        return sorted({k[0] for k in self._grid})

    def models(self) -> list[str]:
        return sorted({k[1] for k in self._grid})

    def _key(self, gpu: str, model: str, kernel: str) -> tuple[str, str, str]:
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; known: {', '.join(KERNELS)}")
        if gpu not in self.gpu_types():
            raise UnknownNameError(f"unknown gpu {gpu!r}; known: {', '.join(self.gpu_types())}")
        key = (gpu, model, kernel)
        if key not in self._grid:
            known = sorted(k[1] for k in self._grid if k[0] == gpu and k[2] == kernel)
            raise UnknownNameError(f"no {kernel!r} costs for model {model!r} on {gpu}; known: {', '.join(known)}")
        return key

    def source(self, gpu: str, model: str, kernel: str) -> str:
        """Provenance of the rows predict() uses for this key ("estimate: ..." / "measured: ...")."""
        return self._source[self._key(gpu, model, kernel)]

    def predict(self, gpu: str, model: str, kernel: str, n_adapters: int, tokens_per_step: int,
                ranks: Sequence[int]) -> float:
        """Seconds of ONE co-located step (fwd + bwd + optimizer) of all adapters on the task's GPUs.

        ranks: one LoRA rank per adapter (len == n_adapters); their mean drives rank_factor.
        Raises KeyError (unknown gpu/model) or ValueError (unknown kernel, bad arguments).
        """
        key = self._key(gpu, model, kernel)
        if n_adapters < 1 or tokens_per_step <= 0:
            raise ValueError(f"need n_adapters >= 1 and tokens_per_step > 0, got {n_adapters}, {tokens_per_step}")
        if kernel == "single" and n_adapters != 1:
            raise ValueError(f"kernel 'single' runs one adapter alone; got n_adapters={n_adapters}")
        if len(ranks) != n_adapters or min(ranks) <= 0:
            raise ValueError(f"ranks must hold n_adapters={n_adapters} positive ranks, got {list(ranks)}")
        r = float(np.mean(ranks))
        ns, per_n = [], []
        for n, (tok, t, rk) in sorted(self._grid[key].items()):
            corrected = t * rank_factor(model, r, rk)  # each row to the query's mean rank
            ns.append(n)
            per_n.append(interp_clamped(tokens_per_step, tok, corrected))
        return interp_clamped(n_adapters, ns, per_n)

    def adapter_bytes(self, gpu: str, model: str, rank: int) -> float:
        """ESTIMATE of one adapter's resident bytes (params, grads, AdamW state); see adapter_state_bytes."""
        return adapter_state_bytes(model, rank)

    def memory(self, gpu: str, model: str) -> tuple[float, float, float]:
        """(k0_bytes, k1_bytes_per_token, hbm_bytes) per GPU, for M(B) = k0 + k1 * B * L."""
        try:
            return self._memory[(gpu, model)]
        except KeyError:
            known = ", ".join(f"{g}/{m}" for g, m in sorted(self._memory))
            raise UnknownNameError(f"no memory row for gpu {gpu!r}, model {model!r}; known: {known}") from None


def check_step_row(r: Mapping) -> None:
    """ValueError naming the row if a parsed step-cost row cannot be used."""
    if r["kernel"] not in KERNELS:
        raise ValueError(f"step row {dict(r)}: kernel must be one of {KERNELS}")
    if r["model"] not in MODELS:
        raise ValueError(f"step row {dict(r)}: unknown model; known: {', '.join(sorted(MODELS))}")
    if not (r["n_adapters"] >= 1 and r["tokens_per_step"] >= 1 and r["mean_rank"] > 0
            and 0 < r["step_time_s"] < math.inf):
        raise ValueError(f"step row {dict(r)}: need n_adapters, tokens_per_step >= 1, "
                         f"mean_rank > 0 and finite step_time_s > 0")


def _preferred(rows: list[Mapping]) -> list[Mapping]:
    """The measured rows if there are any, else all rows (file order kept)."""
    measured = [r for r in rows if str(r["source"]).startswith("measured")]
    return measured or rows
