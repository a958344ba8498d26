"""Events in, decisions out: the vocabulary shared by every policy and both drivers.

The policy package never reads a clock. Every event carries the driver's notion of
time (`time_s`: simulated seconds in `sim/`, wall seconds since run start in the
executor). Decisions are plain frozen dataclasses that a driver carries out.

Progress is counted in *samples* (training examples consumed by one job), because
jobs of one task differ in batch size and hence in steps: a job with batch 1 takes
8x the steps of a job with batch 8 to finish the same epochs.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

# Tokens (val rows x configs) one evaluation forward of `alto run` holds by default, and what
# the simulator charges an evaluation by (configs due together are scored in such forwards).
EVAL_TOKENS_PER_FORWARD = 65536


class ExitReason(str, enum.Enum):
    """Why a job stopped. `COMPLETED` means it trained its full budget."""

    COMPLETED = "completed"
    DIVERGENCE = "divergence"  # loss slopes up (or is NaN/inf)
    OVERFITTING = "overfitting"  # val/train gap above tau_gap; best-val checkpoint kept
    UNDERPERFORMING = "underperforming"  # below the keep cutoff at the warmup boundary
    ASHA = "asha"  # stopped at an ASHA rung (baseline policy)
    FAILED = "failed"  # the driver could not run it (e.g. does not fit in memory at all)


@dataclass(frozen=True)
class JobConfig:
    """One point of a task's hyperparameter search space (one LoRA adapter).

    total_samples: samples the job trains if nothing stops it (epochs * dataset size).
    """

    job_id: str
    task_id: str
    lr: float
    rank: int
    batch_size: int
    alpha: float
    total_samples: int

    @property
    def total_steps(self) -> int:
        """Optimizer steps to consume total_samples (last step may be partial)."""
        return max(1, math.ceil(self.total_samples / self.batch_size))


@dataclass(frozen=True)
class TaskSpec:
    """A tuning task: one base model, one dataset, a grid of LoRA configs.

    Fields mirror the native trace schema (see README, "Task traces").
    """

    task_id: str
    arrival_s: float
    tenant: str
    model: str  # key of alto.models.MODELS
    gpus: int  # GPUs the base model needs (rigid)
    dataset_size: int  # training samples per epoch
    seq_len: int  # tokens per sample (max sequence length)
    epochs: float
    lrs: tuple[float, ...]
    ranks: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    alpha_over_rank: float = 2.0

    def jobs(self) -> list[JobConfig]:
        """The full grid, lr-major then rank then batch: deterministic job ids."""
        total = max(1, round(self.dataset_size * self.epochs))
        out = []
        for lr in self.lrs:
            for r in self.ranks:
                for b in self.batch_sizes:
                    jid = f"{self.task_id}/lr{lr:g}-r{r}-b{b}"
                    out.append(JobConfig(jid, self.task_id, lr, r, b, self.alpha_over_rank * r, total))
        return out


# ---------------------------------------------------------------- events (driver -> policy)


@dataclass(frozen=True)
class LossReported:
    """An evaluation of one job. val_loss may be NaN/inf (the policy treats it as divergence)."""

    time_s: float
    job_id: str
    step: int
    samples_seen: int
    train_loss: float  # raw train loss at this eval (the policy keeps its own EMA)
    val_loss: float


@dataclass(frozen=True)
class JobExited:
    time_s: float
    job_id: str
    reason: ExitReason


@dataclass(frozen=True)
class TaskArrived:
    time_s: float
    task: TaskSpec


@dataclass(frozen=True)
class TaskFinished:
    time_s: float
    task_id: str


@dataclass(frozen=True)
class GpusFreed:
    time_s: float
    gpu_ids: tuple[int, ...]


# ---------------------------------------------------------------- decisions (policy -> driver)


@dataclass(frozen=True)
class Admit:
    """Put job_id in a slot and train it. resume=True: restore its paused state."""

    job_id: str
    resume: bool = False


@dataclass(frozen=True)
class Pause:
    """Take job_id out of its slot but keep its adapter + optimizer state (warmup done)."""

    job_id: str


@dataclass(frozen=True)
class Exit:
    """Stop job_id for good and free its slot.

    keep_step: for overfitting exits, the step of the best validation loss whose
    weights are the job's result; None means keep the current weights.
    """

    job_id: str
    reason: ExitReason
    keep_step: int | None = None


@dataclass(frozen=True)
class StartTask:
    """Start task_id now on exactly these GPUs (inter-task planner decision)."""

    task_id: str
    gpu_ids: tuple[int, ...]


Decision = Admit | Pause | Exit | StartTask


@dataclass
class JobRecord:
    """Book-keeping a driver keeps per job; the result row of `tasks`/`jobs` files."""

    config: JobConfig
    samples_trained: int = 0
    steps_trained: int = 0
    exit_reason: ExitReason | None = None
    best_val_loss: float = math.inf
    best_val_step: int = -1
    final_val_loss: float = math.nan
    history: list[tuple[int, int, float, float]] = field(default_factory=list)  # (step, samples, train, val)
