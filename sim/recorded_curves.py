"""Recorded loss curves for the simulator: `RecordedCurves`, curves from real runs in the
CSV format of traces/curves/README.md (a directory means every *.csv in it with that format's
columns, e.g. the curves.csv of an `alto run` output folder), chosen by
`sim.loss_curves.make_curve_source("recorded:<path>[,<path>...]")`; and the helpers that
write that format. Split from sim/loss_curves.py (the parametric source and the protocol).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alto.policy.types import JobConfig, TaskSpec
from sim.cost_model import read_csv_table, write_rows
from sim.loss_curves import CurveSource, stable_hash

RECORDED_COLUMNS = ("task", "job_id", "lr", "rank", "batch_size", "samples", "total_samples",
                    "train_loss", "val_loss", "source")
_RECORDED_TYPES = {"lr": float, "rank": int, "batch_size": int, "samples": int,
                   "total_samples": int, "train_loss": float, "val_loss": float}


@dataclass(frozen=True)
class _Recorded:
    frac: np.ndarray  # samples / total_samples, increasing
    train: np.ndarray
    val: np.ndarray


def _interp_frac(f: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """Linear in f between recorded fractions, flat beyond the ends; a non-finite neighbour wins."""
    if f <= xs[0]:
        return float(ys[0])
    if f >= xs[-1]:
        return float(ys[-1])
    i = int(np.searchsorted(xs, f, side="right")) - 1
    y0, y1 = ys[i], ys[i + 1]
    if f == xs[i]:
        return float(y0)
    if not (math.isfinite(y0) and math.isfinite(y1)):
        return float(y1 if not math.isfinite(y1) else y0)
    return float(y0 + (y1 - y0) * (f - xs[i]) / (xs[i + 1] - xs[i]))


RUN_MARKERS = ("run.json", "losses.csv", "adapters")  # what only an `alto run` output folder holds
# (alto/executor/outputs.py; `alto simulate` writes jobs.csv and curves.csv too, never these)


def run_marks(folder: Path) -> list[str]:
    """The RUN_MARKERS present in ``folder``: non-empty iff it holds an `alto run` output."""
    return [n for n in RUN_MARKERS if (Path(folder) / n).exists()]


def _unfinished_jobs(curves: Path, job_ids: Iterable[str]) -> frozenset[str]:
    """Of ``job_ids`` (those recorded in ``curves``), the ones whose `alto run` did not finish
    them: no row in the jobs.csv beside ``curves`` (a job gets its row when it finishes, so a
    killed run lacks it), or a row marked `interrupted` (Ctrl-C). Their curves stop where the
    run was cut, not where the job would have ended, and a replay would hold them flat from
    there. Empty for a file outside a run: no jobs.csv (with job_id, exit_reason) and no
    RUN_MARKERS beside it. ValueError for a run folder with no jobs.csv: no job finished."""
    jobs = curves.with_name("jobs.csv")
    if not jobs.exists() and run_marks(curves.parent):
        raise ValueError(f"{curves}: the run did not finish: its folder has {', '.join(run_marks(curves.parent))} "
                         "but no jobs.csv (a job's row is written when it finishes); replay a finished run")
    if not _has_columns(jobs, ("job_id", "exit_reason")):
        return frozenset()
    finished = {r["job_id"] for r in read_run_jobs(jobs) if r["exit_reason"] not in UNFINISHED_EXITS}
    return frozenset(set(job_ids) - finished)


UNFINISHED_EXITS = frozenset({"", "interrupted"})  # a jobs.csv exit_reason its run did not finish


def read_run_jobs(path: Path) -> list[dict]:
    """The rows of an `alto run` jobs.csv."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _has_columns(path: Path, columns) -> bool:
    """Whether the CSV's header holds every one of ``columns``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = {h.strip() for h in next(csv.reader(f), [])}
    except (OSError, UnicodeDecodeError):
        return False
    return set(columns) <= header


class RecordedCurves:
    """Curves recorded from real runs (format: traces/curves/README.md).

    Task -> recorded set: `curve_task[task.task_id]` if given, else the set named
    task.task_id, else a fallback that cycles over the sets in sorted order: the first run
    of digits in the task id (e.g. 7 in "syn-0007-llama-3.1-8b-gsm8k") modulo the number of
    sets; ids without digits use stable_hash(task_id) instead (independent of query order).
    Job -> recorded curve: exact (lr, rank, batch_size), else the nearest by
    |log10 lr ratio| + 0.5 |log2 rank ratio| + 0.5 |log2 batch ratio| (ties: lowest key).
    Losses interpolate linearly in the samples FRACTION samples / total_samples, so a
    recorded curve stretches to the simulated dataset size; flat beyond the recorded ends.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], curve_task: Mapping[str, str] | None = None) -> None:
        if isinstance(paths, (str, Path)):
            paths = [paths]
        files: list[Path] = []
        for p in map(Path, paths):  # a folder: its CSVs in the recorded-curve format (so an
            # `alto run` output folder gives its curves.csv, not jobs.csv or losses.csv)
            files.extend([f for f in sorted(p.glob("*.csv")) if _has_columns(f, RECORDED_COLUMNS)]
                         if p.is_dir() else [p])
        if not files:
            raise ValueError(f"no recorded-curve CSV files in {list(paths)}")
        self.curve_task = dict(curve_task or {})
        self._sets: dict[str, dict[tuple[float, int, int], _Recorded]] = {}
        self.skipped_unfinished: list[str] = []  # job ids left out (see _unfinished_jobs)
        for f in files:
            self._load(f)
        self._names = sorted(self._sets)
        for t, name in self.curve_task.items():
            if name not in self._sets:
                raise ValueError(f"curve_task[{t!r}] = {name!r}: no such recorded task; known: {', '.join(self._names)}")

    def _load(self, path: Path) -> None:
        """Read one recorded-curve file; the rows of jobs its run did not finish are left out."""
        rows = read_csv_table(path, RECORDED_COLUMNS, _RECORDED_TYPES)
        if not rows:
            raise ValueError(f"{path}: no data rows")
        skip = _unfinished_jobs(path, {r["job_id"] for r in rows})
        self.skipped_unfinished += sorted(skip)
        for task in sorted({r["task"] for r in rows}):
            ids = {r["job_id"] for r in rows if r["task"] == task}
            if ids <= skip:
                raise ValueError(f"{path}: task {task!r}: the run did not finish: none of its {len(ids)} "
                                 f"recorded job(s) has a finished row in {path.with_name('jobs.csv')}")
        points: dict[tuple[str, tuple[float, int, int]], dict[int, tuple[float, float, float]]] = {}
        totals: dict[tuple[str, tuple[float, int, int]], tuple[int, str]] = {}
        for i, r in enumerate(rows, start=1):  # (i: the row number in the file, skipped rows counted)
            if r["job_id"] in skip:
                continue
            for field, ok in (("lr", r["lr"] > 0 and math.isfinite(r["lr"])), ("rank", r["rank"] >= 1),
                              ("batch_size", r["batch_size"] >= 1), ("samples", r["samples"] >= 0),
                              ("total_samples", r["total_samples"] >= 1),
                              ("train_loss", r["train_loss"] >= 0),  # cross-entropy: >= 0 (inf: diverged)
                              ("val_loss", r["val_loss"] >= 0)):  # (NaN fails these too)
                if not ok:
                    raise ValueError(f"{path}: row {i}: field {field!r}: invalid value {r[field]!r}")
            key = (r["task"], (r["lr"], r["rank"], r["batch_size"]))
            total, jid = totals.setdefault(key, (r["total_samples"], r["job_id"]))
            if (total, jid) != (r["total_samples"], r["job_id"]):
                raise ValueError(f"{path}: row {i}: field 'total_samples'/'job_id': {r['job_id']!r} "
                                 f"disagrees with earlier rows of the same (lr, rank, batch_size)")
            curve = points.setdefault(key, {})
            if r["samples"] in curve:
                raise ValueError(f"{path}: row {i}: field 'samples': duplicate {r['samples']} for {jid!r}")
            curve[r["samples"]] = (r["samples"] / total, r["train_loss"], r["val_loss"])
        for (task, jkey), curve in points.items():
            if jkey in self._sets.get(task, {}):
                raise ValueError(f"{path}: task {task!r} job {jkey} is already recorded in another file")
            f, tr, va = (np.array(c, float) for c in zip(*(curve[s] for s in sorted(curve)), strict=True))
            self._sets.setdefault(task, {})[jkey] = _Recorded(f, tr, va)

    def recorded_tasks(self) -> list[str]:
        return list(self._names)

    def curve_set_for(self, task_id: str) -> str:
        """Name of the recorded set that stands in for task_id (rules in the class docstring)."""
        if task_id in self.curve_task:
            return self.curve_task[task_id]
        if task_id in self._sets:
            return task_id
        digits = re.search(r"\d+", task_id)
        idx = int(digits.group()) if digits else stable_hash(task_id)
        return self._names[idx % len(self._names)]

    def is_exact(self, task: TaskSpec, job: JobConfig) -> bool:
        """Whether the job's own (lr, rank, batch_size) is recorded in its task's set (else it
        replays the nearest recorded config's curve)."""
        return (job.lr, job.rank, job.batch_size) in self._sets[self.curve_set_for(task.task_id)]

    def _curve(self, task: TaskSpec, job: JobConfig) -> _Recorded:
        jobs = self._sets[self.curve_set_for(task.task_id)]
        dist = lambda k: (abs(math.log10(job.lr / k[0])) + 0.5 * abs(math.log2(job.rank / k[1]))
                          + 0.5 * abs(math.log2(job.batch_size / k[2])), k)
        return jobs[min(jobs, key=dist)]

    def losses(self, task: TaskSpec, job: JobConfig, samples: int) -> tuple[float, float]:
        c = self._curve(task, job)
        f = samples / job.total_samples
        return _interp_frac(f, c.frac, c.train), _interp_frac(f, c.frac, c.val)

    def divergence_onset(self, task: TaskSpec, job: JobConfig) -> int | None:
        """Samples at which the recorded run's training loss first became non-finite (the
        executor checks every step and reports it there), scaled by the samples fraction and
        rounded up to a whole step of this job; None if it never did."""
        c = self._curve(task, job)
        bad = np.flatnonzero(~np.isfinite(c.train))
        if not bad.size:
            return None
        steps = max(1, math.ceil(c.frac[bad[0]] * job.total_samples / job.batch_size - 1e-9))
        return min(job.total_samples, steps * job.batch_size)

    def final_best_val(self, task: TaskSpec, job: JobConfig) -> float:
        val = self._curve(task, job).val
        finite = val[np.isfinite(val)]
        return float(finite.min()) if finite.size else math.inf

    def final_best_vals(self, task: TaskSpec, jobs: Sequence[JobConfig]) -> list[float]:
        return [self.final_best_val(task, j) for j in jobs]

    def losses_at(self, task, jobs, points):
        return [{p: self.losses(task, j, p) for p in pts} for j, pts in zip(jobs, points, strict=True)]


def recorded_paths(spec: str) -> list[str]:
    """The paths of a "recorded:<path>[,<path>...]" curve spec; [] for any other spec."""
    kind, _, arg = spec.partition(":")
    return [p for p in arg.split(",") if p] if kind == "recorded" else []


def record_rows(source: CurveSource, task: TaskSpec, jobs: Iterable[JobConfig], points: int,
                label: str) -> list[dict]:
    """Rows in RECORDED_COLUMNS: each job sampled at `points` evenly spaced sample counts."""
    rows = []
    for j in jobs:
        for s in np.linspace(0, j.total_samples, points).round().astype(int):
            tr, va = source.losses(task, j, int(s))
            rows.append({"task": task.task_id, "job_id": j.job_id, "lr": f"{j.lr:g}", "rank": j.rank,
                         "batch_size": j.batch_size, "samples": int(s), "total_samples": j.total_samples,
                         "train_loss": f"{tr:.6g}", "val_loss": f"{va:.6g}", "source": label})
    return rows


def write_recorded_csv(path: str | Path, rows: Iterable[Mapping]) -> None:
    """Write recorded-curve rows (RECORDED_COLUMNS) atomically."""
    write_rows(path, RECORDED_COLUMNS, rows)
