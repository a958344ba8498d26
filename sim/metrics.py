"""Per-task outcomes and the per-policy summary metrics (the `summary.json` contract).

Definitions (all times in seconds of simulated time):
- makespan_s: last finish - first arrival.
- jct (job completion time of a *task*): finish - arrival; mean_jct_s, p99_jct_s.
- queue_s: start - arrival; mean_queue_s.
- gpu_hours: sum over tasks of gpus x (finish - start) / 3600 (GPUs held, busy or not).
- gpu_util: gpu_hours x 3600 / (cluster GPUs x makespan): share of the cluster held by tasks.
- samples_saved_frac: samples NOT trained because configs exited early, over the grid's
  full budget (sum of every config's epochs x dataset size). Broken down by exit reason.
  Configs that never ran (FAILED: they fit no GPU's memory) save nothing: their samples
  are counted apart, in samples_failed, and such configs in configs_failed.
- best_regret: per task, the config the task returns is the lowest observed best
  validation loss among configs that hold a full-quality result (completed, or exited
  for overfitting with their best checkpoint kept). Its regret is
  (q_returned - q_best) / q_best, where q is each config's best validation loss over its
  *full* trajectory (from the curve source) and q_best is the grid's best. best_regret is
  the mean over tasks; max_regret the worst task.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from alto.policy.types import ExitReason, JobConfig

RETURNABLE = (ExitReason.COMPLETED, ExitReason.OVERFITTING)


@dataclass
class JobOutcome:
    job: JobConfig
    samples_trained: int
    exit_reason: ExitReason | None
    best_val_loss: float
    exit_time_s: float
    final_best_val: float  # best val over the full trajectory (curve source), for regret
    history: list = field(default_factory=list)  # (step, samples, train, val), kept for a few tasks


@dataclass
class TaskOutcome:
    task_id: str
    tenant: str
    model: str
    gpus: int
    gpu_ids: tuple[int, ...]
    arrival_s: float
    start_s: float
    finish_s: float
    predicted_duration_s: float
    jobs: list[JobOutcome]

    @property
    def jct_s(self) -> float:
        return self.finish_s - self.arrival_s

    @property
    def queue_s(self) -> float:
        return self.start_s - self.arrival_s

    @property
    def samples_total(self) -> int:
        return sum(j.job.total_samples for j in self.jobs)

    @property
    def samples_trained(self) -> int:
        return sum(j.samples_trained for j in self.jobs)

    def returned_job(self) -> JobOutcome | None:
        """The config the task hands back (see module docstring); None if every config died."""
        ok = [j for j in self.jobs if j.exit_reason in RETURNABLE]
        return min(ok, key=lambda j: (j.best_val_loss, j.job.job_id)) if ok else None

    def regret(self) -> float:
        best = min(j.final_best_val for j in self.jobs)
        ret = self.returned_job()
        if ret is None or not math.isfinite(best) or best <= 0:
            return math.inf
        return (ret.final_best_val - best) / best


def summarize(outcomes: Sequence[TaskOutcome], cluster_gpus: int) -> dict:
    """The summary.json object of one policy (keys documented in the module docstring)."""
    if not outcomes:
        raise ValueError("summarize: no task outcomes")
    first = min(o.arrival_s for o in outcomes)
    makespan = max(o.finish_s for o in outcomes) - first
    jct = np.array([o.jct_s for o in outcomes])
    gpu_s = sum(o.gpus * (o.finish_s - o.start_s) for o in outcomes)
    total = sum(o.samples_total for o in outcomes)
    trained = sum(o.samples_trained for o in outcomes)
    saved: dict[str, int] = {}
    failed_samples = failed_configs = 0
    for o in outcomes:
        for j in o.jobs:
            left = j.job.total_samples - j.samples_trained
            if j.exit_reason == ExitReason.FAILED:  # not an early exit: the config never fit
                failed_samples, failed_configs = failed_samples + left, failed_configs + 1
            elif j.exit_reason not in (None, ExitReason.COMPLETED):
                saved[j.exit_reason.value] = saved.get(j.exit_reason.value, 0) + left
    regrets = np.array([o.regret() for o in outcomes])
    finite = regrets[np.isfinite(regrets)]
    return {
        "tasks": len(outcomes),
        "makespan_s": float(makespan),
        "mean_jct_s": float(jct.mean()),
        "p99_jct_s": float(np.percentile(jct, 99)),
        "mean_queue_s": float(np.mean([o.queue_s for o in outcomes])),
        "gpu_util": float(gpu_s / (cluster_gpus * makespan)) if makespan > 0 else 0.0,
        "gpu_hours": float(gpu_s / 3600.0),
        "samples_total": int(total),
        "samples_trained": int(trained),
        "samples_saved_frac": float(sum(saved.values()) / total) if total else 0.0,
        "samples_saved_by_reason": {k: int(v) for k, v in sorted(saved.items())},
        "samples_failed": int(failed_samples),
        "configs_failed": int(failed_configs),
        "best_regret": float(finite.mean()) if len(finite) else math.inf,
        "max_regret": float(finite.max()) if len(finite) else math.inf,
        "tasks_without_result": int((~np.isfinite(regrets)).sum()),
    }
