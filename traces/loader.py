"""One entry point for every trace format: `load_trace(path, fmt)`.

    load_trace("paper-11")                          # a bundled trace, by name
    load_trace("my_trace.csv")                      # native CSV (traces/schema.py)
    load_trace("trace_seren.csv", "acme", max_tasks=200, time_window=(0, 86400))
    load_trace("cluster_job_log", "philly", cluster_gpus=16)

Every format returns TaskSpecs sorted by (arrival_s, task_id). Converter options
(max_tasks, time_window, stats, samples_per_s, ...) are documented in traces/converters.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from alto.policy.types import TaskSpec
from traces.converters.acme import convert_acme
from traces.converters.openb import convert_openb
from traces.converters.philly import convert_philly
from traces.schema import TraceError, read_native, validate_trace
from traces.synth import BUNDLED_DIR, BUNDLED_FILES

BUNDLED: dict[str, Path] = {name: BUNDLED_DIR / fname for name, fname in BUNDLED_FILES.items()}
DEFAULT_TRACE = "paper-11"


def _read_native(path, max_tasks: int | None = None, time_window=None) -> list[TaskSpec]:
    """Native reader with the converters' subsampling options (same semantics)."""
    tasks = sorted(read_native(path), key=lambda t: (t.arrival_s, t.task_id))
    if time_window is not None:
        lo, hi = time_window
        if not lo < hi:
            raise ValueError(
                f"time_window must be (start_s, end_s) with start < end, got {time_window}"
            )
        t0 = tasks[0].arrival_s
        tasks = [t for t in tasks if lo <= t.arrival_s - t0 < hi]
    if max_tasks is not None:
        if max_tasks <= 0:
            raise ValueError(f"max_tasks must be > 0, got {max_tasks}")
        tasks = tasks[:max_tasks]
    if not tasks:
        raise TraceError(path, None, None, f"no tasks inside time_window {time_window}")
    return tasks


FORMATS: dict[str, Callable[..., list[TaskSpec]]] = {
    "native": _read_native,
    "acme": convert_acme,
    "philly": convert_philly,
    "openb": convert_openb,
}


def resolve_trace(path: str | os.PathLike) -> Path:
    """A bundled trace name ("paper-11", "online-day") -> its CSV; anything else -> Path."""
    if str(path) in BUNDLED and not Path(path).exists():
        return BUNDLED[str(path)]
    return Path(path)


def load_trace(
    path: str | os.PathLike,
    fmt: str = "native",
    *,
    cluster_gpus: int | None = None,
    **kw,
) -> list[TaskSpec]:
    """Load a trace of format fmt (native | acme | philly | openb), sorted by arrival, task_id.

    path: a file, or a bundled trace's name (see BUNDLED). cluster_gpus: if given, also
    check that every task fits the cluster (TraceError, field 'gpus'). kw: the format's
    options (max_tasks, time_window for all; the converters' mapping options).
    Native traces keep their arrival times as written (time_window shifts nothing).
    """
    if fmt not in FORMATS:
        raise TraceError(
            path, None, None, f"unknown trace format {fmt!r}; known: {', '.join(FORMATS)}"
        )
    p = resolve_trace(path)
    tasks = FORMATS[fmt](p, **kw)
    tasks.sort(key=lambda t: (t.arrival_s, t.task_id))
    validate_trace(tasks, p, cluster_gpus)
    return tasks


def conversion_summary(stats: dict) -> str:
    """What a converter did to the rows (its ``stats``), in one line: "" when it kept every
    row as it was. Skip reasons are the converters' keys (e.g. state_FAILED, zero_duration)."""
    capped = stats.get("capped_to_4_gpus", 0)
    dropped = {k: v for k, v in sorted(stats.items()) if k not in ("kept", "capped_to_4_gpus") and v}
    parts = []
    if dropped:
        parts.append(f"dropped {sum(dropped.values())} row(s) ("
                     + ", ".join(f"{k}: {v}" for k, v in dropped.items()) + ")")
    if capped:
        parts.append(f"{capped} job(s) of more than 4 GPUs mapped to 4-GPU tasks")
    return "; ".join(parts)

