"""Public GPU-cluster job traces -> ALTO tuning tasks: the mapping all converters share.

A public trace records *jobs* (submit time, GPUs, how long they ran); ALTO needs tuning
*tasks* (model, dataset, search space). Each converter parses its format into `RawJob`s
and skips rows by its documented state rule; `build_tasks` then applies one mapping:

- arrival_s = submit time - submit time of the first kept job (seconds), after the
  time window (if any) is applied, so the first task arrives at 0.
- gpus: the job's GPU count rounded UP to 1, 2 or 4 (3 -> 4; a fractional/shared GPU
  -> 1). Zero GPUs (CPU-only job): dropped. More than 4: `over_4="cap"` (default) maps
  the job to 4 GPUs (the largest task class, so big jobs stay heavy), "drop" drops it.
- model = alto.models.MODEL_FOR_GPUS[gpus] (1: llama-3.1-8b, 2: qwen2.5-32b, 4: llama-3.1-70b).
- dataset_size = clip(round(duration_s * samples_per_s / epochs), min_samples, max_samples):
  the job's run time read as the time ONE config needs to train `epochs` epochs at an
  assumed `samples_per_s` (default 2.0 samples/s: an ESTIMATE, not a measurement).
  Jobs without a known duration, or with a zero one (they never ran), are skipped.
- seq_len = 1024 (GSM8K-like), epochs = 3 (paper); search space = the paper's grid for the
  model's class (traces.synth.paper_search_space); alpha = 2r.
- tenant = the trace's user / virtual cluster / QoS column (per converter).
- task_id = the trace's job id.

Subsampling: `time_window=(start_s, end_s)` keeps jobs with start_s <= submit - t0 < end_s
(t0 = first kept job's submit); then `max_tasks=N` keeps the first N by submit time, so
the arrival process of the kept prefix is intact.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

from alto.models import MODEL_FOR_GPUS
from alto.policy.types import TaskSpec
from traces.schema import TraceError, validate_trace
from traces.synth import EPOCHS, paper_search_space


@dataclass(frozen=True)
class Mapping:
    """Knobs of the job -> task mapping (keyword arguments of every converter)."""

    samples_per_s: float = 2.0  # ESTIMATE: one LoRA config's training throughput
    epochs: float = EPOCHS  # epochs per config (paper: 3)
    seq_len: int = 1024  # tokens per sample (GSM8K-like)
    min_samples: int = 1000  # dataset_size clip, lower end (samples per epoch)
    max_samples: int = 20_000  # dataset_size clip, upper end
    over_4: str = "cap"  # jobs with > 4 GPUs: "cap" (-> 4 GPUs) or "drop"
    grid: str = "paper"  # search space: "paper" or "small" (traces.synth)

    def __post_init__(self) -> None:
        if self.over_4 not in ("cap", "drop"):
            raise ValueError(f"over_4 must be 'cap' or 'drop', got {self.over_4!r}")
        if not (self.samples_per_s > 0 and self.epochs > 0 and self.seq_len > 0):
            raise ValueError("samples_per_s, epochs and seq_len must be > 0")
        if not 0 < self.min_samples <= self.max_samples:
            raise ValueError("need 0 < min_samples <= max_samples")


def make_mapping(kw: dict) -> Mapping:
    """Mapping from converter keyword arguments; unknown names raise a TypeError listing them."""
    known = {f.name for f in dataclasses.fields(Mapping)}
    unknown = sorted(set(kw) - known)
    if unknown:
        raise TypeError(f"unknown converter option(s) {unknown}; known: {sorted(known)}")
    return Mapping(**kw)


@dataclass(frozen=True)
class RawJob:
    """One usable job of a public trace, before mapping. row: 1-based data row (for errors)."""

    job_id: str
    tenant: str
    submit_s: float  # seconds on the trace's own clock (epoch or trace-relative)
    gpus: float  # GPUs the job used/requested (> 0; may be fractional for shared GPUs)
    duration_s: float  # run time in seconds (>= 0)
    row: int


def round_gpus(gpus: float, over_4: str = "cap") -> int | None:
    """GPU demand -> 1, 2 or 4 (rounded up); None = drop (CPU-only, or > 4 with over_4='drop')."""
    if not gpus > 0:
        return None
    if gpus > 4:
        return 4 if over_4 == "cap" else None
    for g in (1, 2, 4):
        if gpus <= g:
            return g
    raise AssertionError("unreachable")


def dataset_size(duration_s: float, m: Mapping) -> int:
    """Samples per epoch from a job's duration (see module doc), clipped."""
    n = round(duration_s * m.samples_per_s / m.epochs)
    return int(min(max(n, m.min_samples), m.max_samples))


def build_tasks(
    jobs: list[RawJob],
    path: str | os.PathLike,
    m: Mapping,
    skipped: Counter,
    max_tasks: int | None = None,
    time_window: tuple[float, float] | None = None,
    stats: dict | None = None,
    source_fields: dict[str, str] | None = None,
) -> list[TaskSpec]:
    """Map kept jobs to tasks (module doc), sorted by arrival then task_id; validated.

    skipped: reason -> count of rows the converter already dropped (reported on failure and
    copied into `stats`, with "kept" and "capped_to_4_gpus", if stats is given). source_fields: native field ->
    the trace's column (e.g. {"task_id": "job_id", "tenant": "user"}), so that an error
    about a task names the trace's own row and column.
    """
    if max_tasks is not None and max_tasks <= 0:
        raise ValueError(f"max_tasks must be > 0, got {max_tasks}")
    if time_window is not None and not time_window[0] < time_window[1]:
        raise ValueError(
            f"time_window must be (start_s, end_s) with start < end, got {time_window}"
        )
    sized = []
    for j in jobs:
        if not j.duration_s > 0:  # never ran (e.g. cancelled while queued): no work to map
            skipped["zero_duration"] += 1
            continue
        g = round_gpus(j.gpus, m.over_4)
        if g is None:
            skipped["cpu_only" if not j.gpus > 0 else "over_4_gpus"] += 1
            continue
        sized.append((j, g))
    sized.sort(key=lambda jg: (jg[0].submit_s, jg[0].job_id))
    if sized and time_window is not None:
        lo, hi = time_window
        t0 = sized[0][0].submit_s
        inside = [(j, g) for j, g in sized if lo <= j.submit_s - t0 < hi]
        skipped["outside_time_window"] += len(sized) - len(inside)
        sized = inside
    if max_tasks is not None and len(sized) > max_tasks:
        skipped["over_max_tasks"] += len(sized) - max_tasks
        sized = sized[:max_tasks]
    if stats is not None:
        stats.clear()
        stats.update(skipped)
        stats["kept"] = len(sized)
        stats["capped_to_4_gpus"] = sum(j.gpus > 4 for j, _ in sized)  # kept, as 4-GPU tasks
    if not sized:
        why = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "no rows"
        raise TraceError(path, None, None, f"no usable GPU jobs left after filtering ({why})")
    t0 = sized[0][0].submit_s
    fields = source_fields or {}
    first_row: dict[str, int] = {}
    tasks = []
    for j, g in sized:
        model = MODEL_FOR_GPUS[g]
        lrs, ranks, batches = paper_search_space(model, m.grid)
        tasks.append(
            TaskSpec(
                task_id=j.job_id,
                arrival_s=float(j.submit_s - t0),
                tenant=j.tenant,
                model=model,
                gpus=g,
                dataset_size=dataset_size(j.duration_s, m),
                seq_len=m.seq_len,
                epochs=m.epochs,
                lrs=lrs,
                ranks=ranks,
                batch_sizes=batches,
            )
        )
        try:
            validate_trace(tasks[-1:], path)  # e.g. a job id unusable as a task id
        except TraceError as e:
            raise TraceError(path, j.row, fields.get(e.field, e.field), e.problem) from None
        if j.job_id in first_row:
            raise TraceError(
                path,
                j.row,
                fields.get("task_id", "task_id"),
                f"duplicate job id {j.job_id!r} (first in row {first_row[j.job_id]})",
            )
        first_row[j.job_id] = j.row
    tasks.sort(key=lambda t: (t.arrival_s, t.task_id))
    return tasks


# ---------------------------------------------------------------- cell parsers


def parse_number(path, row: int, field: str, text: str) -> float:
    """A finite float, or TraceError naming file, row and field."""
    try:
        x = float(text)
    except ValueError:
        raise TraceError(path, row, field, f"not a number: {text!r}") from None
    if not math.isfinite(x):
        raise TraceError(path, row, field, f"must be finite, got {text!r}")
    return x


def parse_time(path, row: int, field: str, text: str, fmt: str | None = None) -> float:
    """Seconds since the Unix epoch of an ISO-8601 (or `fmt`) timestamp; naive = UTC."""
    try:
        dt = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)
    except ValueError:
        want = fmt or "ISO 8601, e.g. 2023-03-01 00:18:22+08:00"
        raise TraceError(path, row, field, f"not a timestamp ({want}): {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
