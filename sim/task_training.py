"""Simulated training of one task on its GPUs: a pure function of the task.

Inside a task nothing depends on *when* it runs: step times come from the cost model,
losses from the curve source, and the `TaskTuner` decides from losses alone (it never
reads a clock). So a task's whole training — which configs share the GPUs, when each is
evaluated, paused, exited or completed, and how long it all takes — is computed once,
in time relative to the task's start, and the cluster simulator (`sim/cluster.py`) only
places the finished timeline. Tasks are independent, so they can be computed in parallel
processes with identical results.

Time advances from one evaluation point to the next: all adapters in slots take one
co-located step together (duration from `CostModel.predict` for the slots' batch mix);
due configs are evaluated (forward-only time, training paused) and reported to the tuner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from alto.policy.early_exit import make_early_exit
from alto.policy.memory import MemoryModel
from alto.policy.task_tuner import TaskTuner
from alto.policy.types import (
    EVAL_TOKENS_PER_FORWARD,
    Admit,
    Exit,
    JobConfig,
    LossReported,
    Pause,
    TaskSpec,
)
from sim.metrics import JobOutcome
from sim.task_slots import TaskSlots


@dataclass
class TaskTraining:
    """One task's simulated training, times relative to its start (seconds)."""

    duration_s: float
    jobs: list[JobOutcome]  # exit_time_s relative to the start
    events: list[tuple[float, str]]  # (relative time, event), when logging was asked for
    evaluations: int  # loss reports made (a measure of simulation work)


def pack(tr: TaskTraining) -> tuple:
    """A compact, cheap-to-pickle form of tr (job configs are rebuilt from the task)."""
    jobs = [(j.samples_trained, j.exit_reason, j.best_val_loss, j.exit_time_s, j.final_best_val, j.history) for j in tr.jobs]
    return tr.duration_s, jobs, tr.events, tr.evaluations


def unpack(packed: tuple, task: TaskSpec) -> TaskTraining:
    duration, jobs, events, evaluations = packed
    outcomes = [JobOutcome(cfg, *fields) for cfg, fields in zip(task.jobs(), jobs, strict=True)]
    return TaskTraining(duration, outcomes, events, evaluations)


class TaskCosts:
    """Step, evaluation and memory costs of tasks under one cluster policy (cached)."""

    def __init__(self, policy, cfg, cost):
        self.policy, self.cfg, self.cost = policy, cfg, cost
        self._cache: dict[tuple, float] = {}
        caps = [c for c in (policy.max_active, cfg.max_active) if c is not None]
        self.max_active = min(caps) if caps else None  # the policy's and the cluster's cap

    def fits(self, task: TaskSpec) -> Callable[[Sequence[JobConfig]], bool]:
        """Whether a set of the task's configs can train together on its GPUs.

        The paper's M(B) = k0 + k1·B·L (k0 and HBM scale with the task's GPUs, since
        adapters are rank-local), plus each adapter's own parameters, gradients and AdamW
        state, which M(B) leaves out and which reach ~80 GB for 60 rank-32 adapters on 8B;
        and the summed batch under SimConfig.max_total_batch when set.
        """
        k0, k1, hbm = self.cost.memory(self.cfg.gpu_type, task.model)
        mem = MemoryModel(k0 * task.gpus, k1, hbm * task.gpus, self.cfg.mem_margin_frac)
        state = {r: self.cost.adapter_bytes(self.cfg.gpu_type, task.model, r) for r in task.ranks}
        # bytes each job adds: M(B) is linear in B, so the check is a sum of per-job footprints
        per_job = {j.job_id: k1 * j.batch_size * task.seq_len + state[j.rank] for j in task.jobs()}
        room = mem.usable_bytes - mem.predict(0, task.seq_len)
        fits_memory = lambda js: sum([per_job[j.job_id] for j in js]) <= room
        cap = self.cfg.max_total_batch
        if cap is None:
            return fits_memory
        return lambda js: sum([j.batch_size for j in js]) <= cap and fits_memory(js)

    def step_time(self, task: TaskSpec, jobs: Sequence[JobConfig]) -> float:
        """Seconds of one co-located step of `jobs`.

        predict() sees only the adapter count, the tokens and the mean rank, so the cache
        key is (model, seq len, n, total batch, total rank).
        """
        n, batch, rank = len(jobs), sum([j.batch_size for j in jobs]), sum([j.rank for j in jobs])
        key = (task.model, task.seq_len, n, batch, rank)
        t = self._cache.get(key)
        if t is None:
            ranks = [j.rank for j in jobs]
            t = self.cost.predict(self.cfg.gpu_type, task.model, self.policy.kernel, n, batch * task.seq_len, ranks)
            self._cache[key] = t
        return t

    def eval_time(self, task: TaskSpec, n_configs: int) -> float:
        """Seconds to score ``n_configs`` configs due together on cfg.eval_samples validation
        samples each, as the executor does: in forwards of at most EVAL_TOKENS_PER_FORWARD
        tokens (one config per forward for the sequential "single" kernel), each charged half
        the training step of its adapters and tokens (forward only: ~2N of the 4N FLOPs)."""
        if n_configs <= 0 or not self.cfg.eval_samples:
            return 0.0
        per_config = self.cfg.eval_samples * task.seq_len
        k = 1 if self.policy.kernel == "single" else max(1, EVAL_TOKENS_PER_FORWARD // per_config)
        full, rest = divmod(n_configs, k)
        return full * self._eval_forward(task, k) + (self._eval_forward(task, rest) if rest else 0.0)

    def _eval_forward(self, task: TaskSpec, k: int) -> float:
        """Seconds of one evaluation forward of ``k`` configs (at the grid's smallest rank)."""
        key = ("eval", task.model, task.seq_len, min(task.ranks), k)
        t = self._cache.get(key)
        if t is None:
            tokens = k * self.cfg.eval_samples * task.seq_len
            t = 0.5 * self.cost.predict(self.cfg.gpu_type, task.model, self.policy.kernel, k, tokens,
                                        [min(task.ranks)] * k)
            self._cache[key] = t
        return t

    def predicted_duration(self, task: TaskSpec) -> float:
        """Worst-case duration (no early exit), the planner's input (paper §5).

        Packs the grid greedily (largest batch first) until the memory model (or a cap)
        says stop, then assumes that packing's throughput for every sample of every config.
        """
        key = ("dur", task.model, task.gpus, task.seq_len, task.dataset_size, task.epochs, task.ranks, task.batch_sizes, len(task.lrs))
        d = self._cache.get(key)
        if d is None:
            jobs = task.jobs()
            if self.max_active == 1:
                d = sum(j.total_steps * self.step_time(task, [j]) for j in jobs)
            else:
                fits, packed = self.fits(task), []
                for j in sorted(jobs, key=lambda j: -j.batch_size):
                    if len(packed) != self.max_active and fits([*packed, j]):
                        packed.append(j)
                packed = packed or [min(jobs, key=lambda j: j.batch_size)]
                per_s = sum(j.batch_size for j in packed) / self.step_time(task, packed)
                d = sum(j.total_samples for j in jobs) / per_s
            self._cache[key] = d
        return d


def simulate_task_training(task: TaskSpec, costs: TaskCosts, curves, log: bool = False, keep_history: bool = False) -> TaskTraining:
    """Train `task` under costs.policy: the tuner decides, the slots keep the books."""
    policy, cfg = costs.policy, costs.cfg
    jobs = task.jobs()
    ee = make_early_exit(replace(cfg.early_exit, policy=policy.early_exit), jobs)
    tuner = TaskTuner(jobs, ee, costs.fits(task), policy.backfill, costs.max_active, keep_history)
    slots = TaskSlots(jobs)
    now, evaluations = 0.0, 0
    events: list[tuple[float, str]] = []
    exit_time: dict[str, float] = {}
    # every loss the task can ask for, in one vectorised call: evaluations hit eval points
    at_points = curves.losses_at(task, jobs, [ee.eval_points(j) for j in jobs])
    loss_table = {j.job_id: t for j, t in zip(jobs, at_points, strict=True)}
    # where the curves know the step at which training first gave a non-finite loss (recorded
    # runs), the job reports there, as the executor does, instead of at its next evaluation
    onset_of = getattr(curves, "divergence_onset", None)
    onsets = {j.job_id: o for j in jobs if onset_of and (o := onset_of(task, j)) is not None}

    def next_report(jid: str, samples: int) -> int:
        o = onsets.get(jid)
        n = tuner.next_eval(jid)
        return n if o is None or o <= samples else min(n, o)

    def apply(decisions) -> None:
        for d in decisions:
            if isinstance(d, Admit):
                slots.admit(d.job_id, next_report(d.job_id, slots.samples[d.job_id]))
                what = f"{'resume' if d.resume else 'admit'} {d.job_id}"
            elif isinstance(d, Pause):
                slots.leave(d.job_id)
                what = f"pause {d.job_id}"
            elif isinstance(d, Exit):
                slots.leave(d.job_id)
                exit_time[d.job_id] = now
                what = f"exit {d.job_id} {d.reason.value}"
            if log:
                events.append((now, what))

    apply(tuner.start())
    step_s = 0.0
    while not tuner.done:
        due_step = slots.next_due_step()
        if due_step is None:
            raise RuntimeError(f"task {task.task_id}: tuner has no active job but is not done")
        if slots.changed:
            step_s, slots.changed = costs.step_time(task, list(slots.in_slot.values())), False
        now += (due_step - slots.step) * step_s
        n_evals = 0
        for jid in slots.pop_due():
            if jid not in slots.in_slot:  # exited by an earlier decision at this same instant
                continue
            j = slots.by_id[jid]
            samples, steps = slots.trained(jid)
            if onsets.get(jid) != samples:  # (the executor does not evaluate a diverged config)
                n_evals += 1
            pair = loss_table[jid].get(samples)
            train, val = pair if pair is not None else curves.losses(task, j, samples)
            decisions = tuner.on_loss(LossReported(now, jid, steps, samples, train, val))
            if decisions:
                apply(decisions)
            if jid not in slots.in_slot:
                continue
            if samples >= j.total_samples:
                if log:
                    events.append((now, f"complete {jid}"))
                exit_time[jid] = now
                slots.leave(jid)
                apply(tuner.on_complete(now, jid))
            else:
                slots.reschedule(jid, next_report(jid, samples), samples)
        evaluations += n_evals
        now += costs.eval_time(task, n_evals)
    final_best = curves.final_best_vals(task, jobs)
    outcomes = [
        JobOutcome(
            job=j, samples_trained=slots.samples[j.job_id], exit_reason=tuner.records[j.job_id].exit_reason,
            best_val_loss=tuner.records[j.job_id].best_val_loss, exit_time_s=exit_time.get(j.job_id, now),
            final_best_val=best, history=tuner.records[j.job_id].history,
        )
        for j, best in zip(jobs, final_best, strict=True)
    ]
    return TaskTraining(now, outcomes, events, evaluations)
