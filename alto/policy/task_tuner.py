"""One task's intra-task scheduler: admission, backfill, warmup rotation, cutoff (paper §4).

A driver owns the clock and the training; the tuner owns the decisions. Protocol:

    tuner = TaskTuner(jobs, make_early_exit(cfg, jobs), fits=mem.jobs_fit(seq_len))
    apply(tuner.start())                       # initial Admit decisions
    while not tuner.done:
        train the active jobs until one reaches tuner.next_eval(job_id) samples
        apply(tuner.on_loss(LossReported(...)))
        if job still active and at total_samples: apply(tuner.on_complete(t, job_id))
        (on OOM: apply(tuner.shrink()); a job that OOMs alone: tuner.on_failed(t, job_id))

Every job id is in exactly one of four places:
  active   in a slot, training (admission order; the set always satisfies fits());
  queued   waiting for a slot, admissible now (front first; resumes if it has state);
  paused   warmup done, state kept, waiting for the cutoff (ALTO policy only);
  finished exited or completed, exit_reason set in records.

Decision lists are deterministic (only list orders are iterated). Completion is not
echoed as a decision: the driver already knows the job finished its budget.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from alto.policy.early_exit import EarlyExitPolicy
from alto.policy.types import (
    Admit,
    Decision,
    Exit,
    ExitReason,
    JobConfig,
    JobRecord,
    LossReported,
    Pause,
)


class TaskTuner:
    """Admission / backfill / rotation / warmup-cutoff state machine of one task.

    fits(jobs): whether these jobs can train together (memory model). Must be monotone
    (a subset of a fitting set fits) and depend on a job only through its
    (batch_size, rank), as every memory model here does.
    backfill: refill a freed slot at once (ALTO); False = only refill when the active
    set is empty, i.e. the task trains in waves (the "no backfill" ablation).
    max_active: cap on concurrent jobs (None = only fits() limits); shrink() lowers it.
    """

    def __init__(
        self,
        jobs: list[JobConfig],
        early_exit: EarlyExitPolicy,
        fits: Callable[[Sequence[JobConfig]], bool],
        backfill: bool = True,
        max_active: int | None = None,
        keep_history: bool = True,
    ) -> None:
        self.jobs = {j.job_id: j for j in jobs}
        if len(self.jobs) != len(jobs):
            raise ValueError("duplicate job_id in jobs")
        if max_active is not None and max_active < 1:
            raise ValueError(f"max_active={max_active!r}: must be >= 1 or None")
        self.early_exit = early_exit
        self.fits = fits
        self.backfill = backfill
        self.keep_history = keep_history  # False: records keep no per-eval history (simulator speed)
        self.max_active = max_active if max_active is not None else max(1, len(jobs))
        order = {j.job_id: i for i, j in enumerate(jobs)}
        self._priority = lambda jid: (-self.jobs[jid].batch_size, order[jid])
        self._active: list[str] = []
        self._queue: list[str] = sorted(self.jobs, key=self._priority)
        self._paused: list[str] = []
        self._finished: list[str] = []
        self._started: set[str] = set()  # admitted at least once: re-admission resumes
        self._warmup = {jid: early_exit.warmup_samples(j) for jid, j in self.jobs.items()}
        self.warm_scores: dict[str, float] = {}  # job_id -> val loss at its warmup boundary
        self.cutoff_done = all(w is None for w in self._warmup.values())
        self.records = {jid: JobRecord(j) for jid, j in self.jobs.items()}
        self._next: dict[str, int] = {}  # job_id -> next eval point (cache)
        self._began = False

    # ---------------------------------------------------------------- views
    @property
    def active(self) -> tuple[str, ...]:
        return tuple(self._active)

    @property
    def queued(self) -> tuple[str, ...]:
        return tuple(self._queue)

    @property
    def paused(self) -> tuple[str, ...]:
        return tuple(self._paused)

    @property
    def finished(self) -> tuple[str, ...]:
        """Exited or completed job ids, in the order they finished."""
        return tuple(self._finished)

    @property
    def done(self) -> bool:
        """True when every job has exited or completed."""
        return len(self._finished) == len(self.jobs)

    def next_eval(self, job_id: str) -> int:
        """Samples at which job_id must next report (first eval point past its progress)."""
        nxt = self._next.get(job_id)
        if nxt is None:  # cached: drivers ask for every active job at every event
            pts = self.early_exit.eval_points(self.jobs[job_id])
            i = bisect.bisect_right(pts, self.records[job_id].samples_trained)
            nxt = self._next[job_id] = pts[min(i, len(pts) - 1)]
        return nxt

    # ---------------------------------------------------------------- events
    def start(self) -> list[Decision]:
        """Initial admissions (largest batch first); Exit(FAILED) for jobs that never fit."""
        if self._began:
            raise RuntimeError("start() called twice")
        self._began = True
        out: list[Decision] = []
        for jid in list(self._queue):
            if not self.fits([self.jobs[jid]]):
                out.append(self._finish(jid, ExitReason.FAILED))
        self._settle(out, None)
        return out

    def on_loss(self, ev: LossReported) -> list[Decision]:
        """Record an evaluation of an active job; apply the exit rules and warmup rotation.

        At its warmup boundary a job's val loss becomes its warmup score; it is paused
        (slot freed) only if a queued job still lacks a score (never started, or shrunk
        back before its warmup), so every config gets warmed up. When every alive job has
        a score the cutoff runs: losers exit UNDERPERFORMING (active, queued or paused),
        paused winners join the queue and resume as they fit.
        """
        jid = ev.job_id
        if jid not in self._active:
            raise ValueError(f"loss reported for {jid!r}, which is not active")
        job, rec = self.jobs[jid], self.records[jid]
        if not rec.samples_trained <= ev.samples_seen <= job.total_samples:
            raise ValueError(
                f"{jid}: samples_seen={ev.samples_seen} outside "
                f"[{rec.samples_trained}, {job.total_samples}]"
            )
        rec.samples_trained, rec.steps_trained = ev.samples_seen, ev.step
        self._next.pop(jid, None)
        if self.keep_history:
            rec.history.append((ev.step, ev.samples_seen, ev.train_loss, ev.val_loss))
        rec.final_val_loss = ev.val_loss
        if ev.val_loss < rec.best_val_loss:  # NaN compares False: never "best"
            rec.best_val_loss, rec.best_val_step = ev.val_loss, ev.step
        out: list[Decision] = []
        prefer = None
        changed = False  # nothing freed and no warm score: the slots are as they were
        ex = self.early_exit.observe(ev)
        if ex is not None:
            out.append(self._finish(jid, ex.reason, ex.keep_step))
            prefer, changed = job.batch_size, True
        elif self._reaches_warmup(jid, ev.samples_seen):
            self.warm_scores[jid] = ev.val_loss
            changed = True
            # Rotate: give the slot to a config that has not warmed up yet, if any.
            if ev.samples_seen < job.total_samples and any(
                q not in self.warm_scores for q in self._queue
            ):
                self._active.remove(jid)
                self._paused.append(jid)
                out.append(Pause(jid))
                prefer = job.batch_size
        if changed:  # an unchanged state cannot admit anything new (fits() is monotone)
            self._settle(out, prefer)
        return out

    def on_complete(self, time_s: float, job_id: str) -> list[Decision]:
        """job_id trained its total_samples. No-op ([]) if its final eval already exited it."""
        if job_id in self._finished:
            return []
        if job_id not in self._active:
            raise ValueError(f"on_complete for {job_id!r}, which is not active")
        self._finish(job_id, ExitReason.COMPLETED)
        out: list[Decision] = []
        self._settle(out, self.jobs[job_id].batch_size)
        return out

    def on_failed(self, time_s: float, job_id: str) -> list[Decision]:
        """The driver cannot run job_id (e.g. OOM alone): Exit(FAILED), then backfill."""
        if job_id in self._finished:
            return []
        out: list[Decision] = [self._finish(job_id, ExitReason.FAILED)]
        self._settle(out, self.jobs[job_id].batch_size)
        return out

    def shrink(self) -> list[Decision]:
        """OOM with several jobs in slots: pause the most recently admitted one back to the
        queue front (its state is kept; it resumes later) and cap max_active at the new
        active count. With <= 1 active job there is nothing to shrink: returns [] (the
        driver should call on_failed for a job that does not fit alone)."""
        if len(self._active) <= 1:
            return []
        jid = self._active.pop()
        self._queue.insert(0, jid)
        self.max_active = len(self._active)
        return [Pause(jid)]

    # ---------------------------------------------------------------- internals
    def _reaches_warmup(self, jid: str, samples: int) -> bool:
        w = self._warmup[jid]
        return (
            not self.cutoff_done and w is not None and jid not in self.warm_scores and samples >= w
        )

    def _finish(self, jid: str, reason: ExitReason, keep_step: int | None = None) -> Exit:
        for place in (self._active, self._queue, self._paused):
            if jid in place:
                place.remove(jid)
                break
        else:
            raise ValueError(f"{jid!r} is not alive (unknown or already finished)")
        self._finished.append(jid)
        self.records[jid].exit_reason = reason
        return Exit(jid, reason, keep_step)

    def _settle(self, out: list[Decision], prefer: int | None) -> None:
        """After any change: run the warmup cutoff if due, then (back)fill free slots."""
        if not self.cutoff_done and all(
            j in self.warm_scores for j in (*self._active, *self._queue, *self._paused)
        ):
            self.cutoff_done = True
            alive = [*self._active, *self._queue, *self._paused]
            for jid in self.early_exit.cutoff({j: self.warm_scores[j] for j in alive}):
                out.append(self._finish(jid, ExitReason.UNDERPERFORMING))
            # Winners waiting at the boundary become admissible (they resume).
            self._queue.extend(sorted(self._paused, key=self._priority))
            self._paused.clear()
            prefer = None
        if self.backfill or not self._active:
            self._fill(out, prefer)

    def _fill(self, out: list[Decision], prefer: int | None) -> None:
        """Admit queued jobs in queue order (same batch as `prefer` first) while they fit.

        Memory depends on a job only through (batch_size, rank), and the active set only
        grows during one fill, so once a (batch, rank) shape fails to fit, later jobs of
        that shape are skipped without asking fits() again (O(shapes) calls, not O(queue)).
        """
        cands = [q for q in self._queue if self.jobs[q].batch_size == prefer]
        cands += [q for q in self._queue if self.jobs[q].batch_size != prefer]
        current = [self.jobs[a] for a in self._active]
        too_big: set[tuple[int, int]] = set()
        for jid in cands:
            if len(self._active) >= self.max_active:
                break
            job = self.jobs[jid]
            shape = (job.batch_size, job.rank)
            if shape in too_big:
                continue
            if self.fits([*current, job]):
                self._queue.remove(jid)
                self._active.append(jid)
                current.append(job)
                out.append(Admit(jid, resume=jid in self._started))
                self._started.add(jid)
            elif not self.fits([job]):
                out.append(self._finish(jid, ExitReason.FAILED))
            else:
                too_big.add(shape)
