"""Per-job early-exit rules: ALTO's loss-aware rules, plus ASHA and "none" as baselines.

One policy object serves one task. A driver (simulator or executor) evaluates each job
at the sample counts `eval_points(job)` and reports every evaluation with `observe()`;
the policy answers `None` (keep training) or an `Exit` decision. The warmup-boundary
ranking (ALTO's *underperforming* rule) needs all jobs of the task at once, so it is a
separate call, `cutoff()`, made by the task tuner (`alto.policy.task_tuner`).

Units: progress is counted in samples (see `types.py`); losses are nats per token, as the
model reports them; slopes are in loss units per *evaluation* (see `EarlyExitConfig`).

Eval points are aligned up to multiples of the job's batch size (capped at
`total_samples`), so a driver that steps whole batches hits every point exactly. E.g.
total 1000, batch 8, warmup 5%: warmup boundary = ceil(50 / 8) * 8 = 56 samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from alto.policy.types import Exit, ExitReason, JobConfig, LossReported


def _ceil(x: float) -> int:
    """ceil() that ignores float noise: 0.05 * 100 = 5.000000000000001 -> 5, not 6."""
    return math.ceil(round(x, 6))


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class EarlyExitConfig:
    """Knobs of the early-exit policies (paper defaults where the paper gives them).

    Fractions are of one job's `total_samples` (all jobs of a task share it).
    """

    policy: str = field(default="alto", metadata=_help('"alto" | "asha" | "none"'))
    ema_alpha: float = field(
        default=0.3,
        metadata=_help(
            "EMA weight of the newest train loss, in (0, 1]. The paper does not give alpha; "
            "0.3 is our choice (about a 3-evaluation memory)."
        ),
    )
    window: int = field(default=2, metadata=_help("w: evaluations in the slope fit (>= 2)"))
    patience: int = field(
        default=2, metadata=_help("p: consecutive evaluations a rule must hold before exit (>= 1)")
    )
    tau_slope: float = field(
        default=0.001,
        metadata=_help(
            "divergence threshold, loss units per evaluation index (not per sample): the "
            "least-squares slope of the last w values against 0..w-1"
        ),
    )
    tau_gap: float = field(
        default=0.1, metadata=_help("overfitting threshold on (val - ema) / ema, dimensionless")
    )
    warmup_frac: float = field(
        default=0.05, metadata=_help("warmup boundary as a fraction of total samples, in (0, 1)")
    )
    keep_ratio: float = field(
        default=0.25, metadata=_help("fraction of warmed-up jobs kept at the cutoff, in (0, 1]")
    )
    eval_every_frac: float = field(
        default=0.01, metadata=_help("evaluation spacing during warmup, fraction of total samples")
    )
    eval_every_frac_after: float = field(
        default=0.05,
        metadata=_help(
            "evaluation spacing after warmup (and for asha/none), fraction of total samples. "
            "Coarser than during warmup because once the cutoff is done only divergence and "
            "overfitting remain, which need p evaluations anyway; each evaluation costs a "
            "validation pass in the executor and an event in the simulator (~24 instead of "
            "~100 evaluations per job)."
        ),
    )
    record_warmup: bool = field(
        default=False,
        metadata=_help(
            "none: also evaluate at ALTO's dense warmup points (every eval_every_frac up "
            "to warmup_frac), so curves recorded by a full-grid run can replay ALTO's cutoff"
        ),
    )
    asha_reduction: int = field(
        default=4, metadata=_help("ASHA reduction factor eta (Ray Tune default 4), >= 2")
    )
    asha_grace_frac: float = field(
        default=1 / 64,
        metadata=_help(
            "ASHA minimum resource as a fraction of total samples: rungs at grace * eta^k < 1, "
            "i.e. 1/64, 1/16, 1/4 of training with the defaults"
        ),
    )

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"EarlyExitConfig.{name}={getattr(self, name)!r}: {why}")

        if self.policy not in POLICIES:
            raise bad("policy", f"must be one of {sorted(POLICIES)}")
        if not 0 < self.ema_alpha <= 1:
            raise bad("ema_alpha", "must be in (0, 1]")
        if int(self.window) != self.window or self.window < 2:
            raise bad("window", "must be an integer >= 2")
        if int(self.patience) != self.patience or self.patience < 1:
            raise bad("patience", "must be an integer >= 1")
        for name in ("tau_slope", "tau_gap"):
            if not math.isfinite(getattr(self, name)):
                raise bad(name, "must be finite")
        if self.tau_gap < 0:
            raise bad("tau_gap", "must be >= 0")
        for name in ("warmup_frac", "asha_grace_frac"):
            if not 0 < getattr(self, name) < 1:
                raise bad(name, "must be in (0, 1)")
        for name in ("keep_ratio", "eval_every_frac", "eval_every_frac_after"):
            if not 0 < getattr(self, name) <= 1:
                raise bad(name, "must be in (0, 1]")
        if int(self.asha_reduction) != self.asha_reduction or self.asha_reduction < 2:
            raise bad("asha_reduction", "must be an integer >= 2")
        for name in ("window", "patience", "asha_reduction"):  # 2.0 -> 2: used as slice bounds
            setattr(self, name, int(getattr(self, name)))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text (for CLIs and docs)."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def slope(ys: Sequence[float]) -> float:
    """Least-squares slope of ys against x = 0..len(ys)-1 (loss units per evaluation)."""
    n = len(ys)
    if n == 2:  # the paper's w = 2, checked on every evaluation: skip the general sums
        return ys[1] - ys[0]
    mx = (n - 1) / 2
    my = sum(ys) / n
    num = sum((i - mx) * (y - my) for i, y in enumerate(ys))
    return num / sum((i - mx) ** 2 for i in range(n))


@dataclass
class _JobState:
    """What a policy remembers of one job (lists grow by one per evaluation)."""

    ema: list[float] = field(default_factory=list)  # EMA of train loss after each eval
    val: list[float] = field(default_factory=list)
    best_val: float = math.inf
    best_step: int = -1
    div_count: int = 0  # consecutive evals with both slopes >= tau_slope
    gap_count: int = 0  # consecutive evals with gap > tau_gap
    rungs_done: int = 0  # ASHA: rungs this job has been judged at


class EarlyExitPolicy:
    """Base class: eval schedule, NaN rule and best-val tracking; subclasses add rules."""

    name = "none"

    def __init__(self, cfg: EarlyExitConfig, jobs: Sequence[JobConfig]) -> None:
        self.cfg = cfg
        self.jobs = {j.job_id: j for j in jobs}
        if len(self.jobs) != len(jobs):
            raise ValueError("duplicate job_id in jobs")
        self.state = {jid: _JobState() for jid in self.jobs}
        self._points: dict[tuple[int, int], list[int]] = {}

    # ---------------------------------------------------------------- schedule
    @staticmethod
    def _align(samples: float, job: JobConfig) -> int:
        """Round a sample count up to a whole batch, within [batch-or-total, total]."""
        b = job.batch_size
        return min(job.total_samples, max(1, _ceil(samples / b)) * b)

    def _grid(self, job: JobConfig, frac: float) -> set[int]:
        """Aligned points at k * frac * total for k = 1, 2, ... (total included)."""
        n = _ceil(1 / frac)
        return {self._align(k * frac * job.total_samples, job) for k in range(1, n + 1)}

    def _schedule(self, job: JobConfig) -> set[int]:
        return self._grid(job, self.cfg.eval_every_frac_after)

    def _warmup_boundary(self, job: JobConfig) -> int:
        """Sample count of ALTO's warmup boundary (warmup_frac of training, batch-aligned)."""
        return self._align(self.cfg.warmup_frac * job.total_samples, job)

    def _warmup_schedule(self, job: JobConfig) -> set[int]:
        """ALTO's schedule: every eval_every_frac below the warmup boundary, the boundary
        itself, then every eval_every_frac_after above it."""
        warm = self._warmup_boundary(job)
        dense = {p for p in self._grid(job, self.cfg.eval_every_frac) if p < warm}
        coarse = {p for p in self._grid(job, self.cfg.eval_every_frac_after) if p > warm}
        return dense | {warm} | coarse

    def eval_points(self, job: JobConfig) -> list[int]:
        """Sorted sample counts at which `job` is evaluated; the last is job.total_samples."""
        key = (job.batch_size, job.total_samples)  # the schedule depends on nothing else
        pts = self._points.get(key)
        if pts is None:
            pts = self._points[key] = sorted(self._schedule(job) | {job.total_samples})
        return pts

    def warmup_samples(self, job: JobConfig) -> int | None:
        """Sample count of the warmup boundary; None: this policy has no warmup cutoff."""
        return None

    # ---------------------------------------------------------------- rules
    def best(self, job_id: str) -> tuple[float, int]:
        """(best finite val loss so far, step of it); (inf, -1) before any finite val."""
        st = self.state[job_id]
        return st.best_val, st.best_step

    def observe(self, ev: LossReported) -> Exit | None:
        """Record one evaluation; return an Exit if a rule fires, else None."""
        if ev.job_id not in self.state:
            raise ValueError(f"unknown job {ev.job_id!r}")
        st = self.state[ev.job_id]
        if not (math.isfinite(ev.train_loss) and math.isfinite(ev.val_loss)):
            return Exit(ev.job_id, ExitReason.DIVERGENCE)  # NaN/inf: every policy, at once
        prev = st.ema[-1] if st.ema else ev.train_loss  # EMA starts at the first value
        a = self.cfg.ema_alpha
        st.ema.append(a * ev.train_loss + (1 - a) * prev)
        st.val.append(ev.val_loss)
        if ev.val_loss < st.best_val:  # strict: earliest step wins ties
            st.best_val, st.best_step = ev.val_loss, ev.step
        return self._rules(ev, st)

    def _rules(self, ev: LossReported, st: _JobState) -> Exit | None:
        return None

    def cutoff(self, warm_val: dict[str, float]) -> list[str]:
        """Job ids to evict at the warmup boundary (none for policies without warmup)."""
        return []


class AltoPolicy(EarlyExitPolicy):
    """ALTO (paper §1): divergence, overfitting, and the warmup cutoff."""

    name = "alto"

    def _schedule(self, job: JobConfig) -> set[int]:
        return self._warmup_schedule(job)

    def warmup_samples(self, job: JobConfig) -> int:
        return self._warmup_boundary(job)

    def _rules(self, ev: LossReported, st: _JobState) -> Exit | None:
        cfg = self.cfg
        # Divergence: both smoothed-train and val slopes >= tau_slope, p evals in a row.
        if len(st.val) >= cfg.window:
            up = (
                slope(st.ema[-cfg.window :]) >= cfg.tau_slope
                and slope(st.val[-cfg.window :]) >= cfg.tau_slope
            )
            st.div_count = st.div_count + 1 if up else 0
            if st.div_count >= cfg.patience:
                return Exit(ev.job_id, ExitReason.DIVERGENCE)
        # Overfitting: relative val/train gap > tau_gap, p evals in a row. A non-positive
        # EMA (impossible for CE; defensive for other losses) makes g meaningless: no count.
        ema = st.ema[-1]
        gap = (st.val[-1] - ema) / ema if ema > 0 else -math.inf
        st.gap_count = st.gap_count + 1 if gap > cfg.tau_gap else 0
        if st.gap_count >= cfg.patience:
            return Exit(ev.job_id, ExitReason.OVERFITTING, keep_step=st.best_step)
        return None

    def cutoff(self, warm_val: dict[str, float]) -> list[str]:
        """Evict all but the top ceil(keep_ratio * n) by warmup val loss.

        warm_val: job_id -> val loss at the boundary, for the n jobs still alive.
        Ties break by job_id (smaller id ranks higher); NaN ranks last. Returns the
        evicted ids best-first (rank order).
        """
        ranked = sorted(warm_val, key=lambda j: (math.isnan(warm_val[j]), warm_val[j], j))
        keep = max(1, _ceil(self.cfg.keep_ratio * len(ranked))) if ranked else 0
        return ranked[keep:]


class AshaPolicy(EarlyExitPolicy):
    """Asynchronous successive halving (Li et al. 2020; Ray Tune's ASHAScheduler shape).

    Rungs at grace * eta^k of total samples (k = 0, 1, ... while < total). When a job
    first reaches a rung its val loss joins that rung's record (kept forever, stopped
    jobs included); it continues only if at most ceil(n / eta) - 1 recorded losses are
    strictly better than its own (n includes itself; ties favour continuing), i.e. it is
    in the top ceil(n / eta), at least 1. Unlike Ray, the job counts itself in n.
    """

    name = "asha"

    def __init__(self, cfg: EarlyExitConfig, jobs: Sequence[JobConfig]) -> None:
        super().__init__(cfg, jobs)
        self.rung_losses: list[list[float]] = []  # rung index -> recorded val losses
        self._rungs: dict[str, list[int]] = {}

    def rungs(self, job: JobConfig) -> list[int]:
        """Aligned rung sample counts of `job` (may repeat for tiny totals), all < total."""
        if job.job_id in self._rungs:
            return self._rungs[job.job_id]
        out, k = [], 0
        while self.cfg.asha_grace_frac * self.cfg.asha_reduction**k < 1 - 1e-9:
            r = self._align(
                self.cfg.asha_grace_frac * self.cfg.asha_reduction**k * job.total_samples, job
            )
            if r < job.total_samples:
                out.append(r)
            k += 1
        self._rungs[job.job_id] = out
        return out

    def _schedule(self, job: JobConfig) -> set[int]:
        return super()._schedule(job) | set(self.rungs(job))

    def _rules(self, ev: LossReported, st: _JobState) -> Exit | None:
        rungs = self.rungs(self.jobs[ev.job_id])
        while st.rungs_done < len(rungs) and ev.samples_seen >= rungs[st.rungs_done]:
            k = st.rungs_done
            st.rungs_done += 1
            while len(self.rung_losses) <= k:
                self.rung_losses.append([])
            rec = self.rung_losses[k]
            rec.append(ev.val_loss)
            top = max(1, _ceil(len(rec) / self.cfg.asha_reduction))
            if sum(v < ev.val_loss for v in rec) >= top:
                return Exit(ev.job_id, ExitReason.ASHA)
        return None


class NoExitPolicy(EarlyExitPolicy):
    """Baseline: train every config to the end (only NaN/inf losses stop a job)."""

    name = "none"

    def _schedule(self, job: JobConfig) -> set[int]:
        # record_warmup: exactly ALTO's points (no decision is taken at them), so that train
        # losses averaged between evaluations match too
        return self._warmup_schedule(job) if self.cfg.record_warmup else super()._schedule(job)


POLICIES: dict[str, type[EarlyExitPolicy]] = {
    "alto": AltoPolicy,
    "asha": AshaPolicy,
    "none": NoExitPolicy,
}


def make_early_exit(cfg: EarlyExitConfig, jobs: list[JobConfig]) -> EarlyExitPolicy:
    """Build the policy named by cfg.policy for one task's jobs."""
    return POLICIES[cfg.policy](cfg, jobs)
