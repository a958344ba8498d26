"""The SimPy cluster: tasks arrive, the planner places them, each task trains its configs.

Scenario: a cluster of `gpus` GPUs in nodes of `gpus_per_node` receives tuning tasks
from a trace. On every arrival and completion the inter-task planner
(`alto.policy.planner`) replans; tasks it starts *now* get specific GPUs from the
node-aware `GpuPool`. Inside a task, a `TaskTuner` (`alto.policy.task_tuner`) decides
which configs share the task's GPUs; the simulator advances simulated time from one
evaluation point to the next, with step times from the cost model and losses from a
loss-curve source, and reports every evaluation back to the tuner.

The simulator keeps the books and never decides. Two processes:
- `_arrivals`: one generator that releases trace tasks at their arrival times;
- `_train_task`: one generator per started task, from start to its last config.

Time unit: seconds of simulated time. Determinism: no wall clock, no unseeded RNG;
the loss source is seeded, so the same inputs give identical outputs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import simpy

from alto.policy.early_exit import EarlyExitConfig, make_early_exit
from alto.policy.memory import MemoryModel
from alto.policy.placement import GpuPool
from alto.policy.planner import PlanTask, RunningTask, make_planner
from alto.policy.task_tuner import TaskTuner
from alto.policy.types import Admit, Exit, JobConfig, LossReported, Pause, TaskSpec
from sim.cost_model import CostModel
from sim.loss_curves import CurveSource
from sim.metrics import JobOutcome, TaskOutcome
from sim.policies import ClusterPolicy
from sim.task_slots import TaskSlots


@dataclass
class SimConfig:
    """Cluster and policy knobs of one simulation.

    gpus: GPUs in the cluster (count). gpus_per_node: GPUs per node (count); a task's
    GPUs always sit on one node when it needs <= gpus_per_node.
    gpu_type: key into the cost tables (e.g. "H200", "H100").
    mem_margin_frac: HBM safety margin of the memory model (fraction of HBM kept free).
    eval_samples: validation samples scored per evaluation of one config (count). An
      evaluation is a forward pass only, so it is charged half the single-adapter step
      time of eval_samples x seq_len tokens (an estimate: forward ~2N of the 4N FLOPs per
      token), and training pauses while the due configs are scored, as in the executor.
    log_events: keep the exact (time_s, event) log (tests; costs memory on big traces).
    """

    gpus: int = 8
    gpus_per_node: int = 8
    gpu_type: str = "H200"
    early_exit: EarlyExitConfig = field(default_factory=EarlyExitConfig)
    mem_margin_frac: float = 0.1
    log_events: bool = False
    eval_samples: int = 64  # validation samples per evaluation of one config (0: evaluations are free)
    keep_history_tasks: int = 4  # tasks (in finish order) whose loss histories are kept for figures


class ClusterSim:
    """Simulate one trace under one cluster policy. Call `run()` once."""

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        policy: ClusterPolicy,
        cfg: SimConfig,
        cost: CostModel,
        curves: CurveSource,
        progress: Callable[[int, int, float], None] | None = None,
    ):
        self.tasks = sorted(tasks, key=lambda t: (t.arrival_s, t.task_id))
        self.policy, self.cfg, self.cost, self.curves = policy, cfg, cost, curves
        self.progress = progress
        self.env = simpy.Environment()
        nodes = max(1, math.ceil(cfg.gpus / cfg.gpus_per_node))
        self.pool = GpuPool(nodes, min(cfg.gpus_per_node, cfg.gpus))
        self.planner = make_planner(policy.planner)
        self.pending: dict[str, tuple[TaskSpec, PlanTask]] = {}
        self._pending_sizes: Counter[int] = Counter()  # GPU demand -> pending tasks of it
        self.running: dict[str, RunningTask] = {}
        self.outcomes: list[TaskOutcome] = []
        self.events: list[tuple[float, str]] = []
        self.planner_calls = 0
        self.n_events = 0  # simulation events processed (arrivals + training advances)
        self._step_cache: dict[tuple, float] = {}
        self._dur_cache: dict[tuple, float] = {}

    # ------------------------------------------------------------------ public
    def run(self) -> list[TaskOutcome]:
        self.env.process(self._arrivals())
        self.env.run()
        if len(self.outcomes) != len(self.tasks):
            stuck = sorted(set(self.pending))
            raise RuntimeError(f"simulation ended with {len(stuck)} unplaced tasks: {stuck[:5]}")
        return sorted(self.outcomes, key=lambda o: (o.arrival_s, o.task_id))

    # ------------------------------------------------------------------ books
    def _log(self, what: str) -> None:
        if self.cfg.log_events:
            self.events.append((round(self.env.now, 6), what))

    def _fits(self, task: TaskSpec) -> Callable[[Sequence[JobConfig]], bool]:
        """Whether a set of the task's configs can train together on its GPUs.

        The paper's M(B) = k0 + k1·B·L (k0 and HBM scale with the task's GPUs, since
        adapters are rank-local), plus each adapter's own parameters, gradients and AdamW
        state, which M(B) leaves out and which reach ~80 GB for 60 rank-32 adapters on 8B.
        """
        k0, k1, hbm = self.cost.memory(self.cfg.gpu_type, task.model)
        mem = MemoryModel(k0 * task.gpus, k1, hbm * task.gpus, self.cfg.mem_margin_frac)
        state = {r: self.cost.adapter_bytes(self.cfg.gpu_type, task.model, r) for r in task.ranks}
        usable, L = mem.usable_bytes, task.seq_len
        return lambda js: mem.predict(sum(j.batch_size for j in js), L) + sum(state[j.rank] for j in js) <= usable

    def _step_time(self, task: TaskSpec, jobs: Sequence[JobConfig]) -> float:
        """Seconds of one co-located step of `jobs`, cached per (model, kernel, batch mix)."""
        key = (task.model, task.seq_len, tuple(sorted((j.batch_size, j.rank) for j in jobs)))
        t = self._step_cache.get(key)
        if t is None:
            tokens = sum(j.batch_size for j in jobs) * task.seq_len
            ranks = [j.rank for j in jobs]
            t = self.cost.predict(self.cfg.gpu_type, task.model, self.policy.kernel, len(jobs), tokens, ranks)
            self._step_cache[key] = t
        return t

    def _eval_time(self, task: TaskSpec) -> float:
        """Seconds to score one config on eval_samples validation samples (forward only)."""
        key = ("eval", task.model, task.seq_len)
        t = self._step_cache.get(key)
        if t is None:
            tokens = self.cfg.eval_samples * task.seq_len
            t = 0.5 * self.cost.predict(self.cfg.gpu_type, task.model, self.policy.kernel, 1, tokens, [min(task.ranks)])
            self._step_cache[key] = t
        return t

    def predicted_duration(self, task: TaskSpec) -> float:
        """Worst-case duration (no early exit), as the planner's input (paper §5).

        Packs the grid greedily (largest batch first) until the memory model says stop,
        then assumes that packing's throughput for every sample of every config.
        """
        key = (task.model, task.seq_len, task.dataset_size, task.epochs, task.lrs, task.ranks, task.batch_sizes)
        d = self._dur_cache.get(key)
        if d is not None:
            return d
        jobs = task.jobs()
        if self.policy.max_active == 1:
            d = sum(j.total_steps * self._step_time(task, [j]) for j in jobs)
        else:
            fits, packed = self._fits(task), []
            for j in sorted(jobs, key=lambda j: -j.batch_size):
                if fits([*packed, j]):
                    packed.append(j)
            packed = packed or [min(jobs, key=lambda j: j.batch_size)]
            per_s = sum(j.batch_size for j in packed) / self._step_time(task, packed)
            d = sum(j.total_samples for j in jobs) / per_s
        self._dur_cache[key] = d
        return d

    # ------------------------------------------------------------------ planner
    def _replan(self) -> None:
        """Ask the planner; start every task it schedules for *now* that the pool can place."""
        if not self.pending:
            return
        # Nothing pending can start if no node has room for the smallest pending task:
        # skip the plan (arrivals into a full cluster are most calls on a loaded cluster).
        smallest = min(g for g, n in self._pending_sizes.items() if n)
        free = self.pool.largest_free_block if smallest <= self.pool.gpus_per_node else self.pool.free_count
        if free < smallest:
            return
        self.planner_calls += 1
        now = self.env.now
        plan = self.planner.plan(now, self.cfg.gpus, list(self.running.values()), [p for _, p in self.pending.values()])
        for ps in sorted(plan, key=lambda p: (p.start_s, p.task_id)):
            if ps.start_s > now + 1e-9:
                continue
            task, _ = self.pending[ps.task_id]
            gpu_ids = self.pool.allocate(task.gpus)
            if gpu_ids is None:  # node fragmentation: wait for the next replan
                continue
            del self.pending[ps.task_id]
            self._pending_sizes[task.gpus] -= 1
            self.running[task.task_id] = RunningTask(task.task_id, task.gpus, now + self.predicted_duration(task))
            self.env.process(self._train_task(task, gpu_ids))

    def _arrivals(self):
        """Release each trace task at its arrival time, then replan."""
        for task in self.tasks:
            if task.arrival_s > self.env.now:
                yield self.env.timeout(task.arrival_s - self.env.now)
            self.n_events += 1
            self._log(f"arrive {task.task_id}")
            self._pending_sizes[task.gpus] += 1
            self.pending[task.task_id] = (task, PlanTask(task.task_id, task.gpus, self.predicted_duration(task), task.arrival_s))
            self._replan()

    # ------------------------------------------------------------------ one task
    def _train_task(self, task: TaskSpec, gpu_ids: tuple[int, ...]):
        """Train one task's configs on its GPUs, evaluation point to evaluation point."""
        env, start = self.env, self.env.now
        self._log(f"start {task.task_id} gpus={','.join(map(str, gpu_ids))}")
        jobs = task.jobs()
        ee = make_early_exit(self._ee_config(), jobs)
        tuner = TaskTuner(jobs, ee, self._fits(task), backfill=self.policy.backfill, max_active=self.policy.max_active)
        slots = TaskSlots(jobs)
        exit_time: dict[str, float] = {}
        apply = lambda ds: self._apply(ds, exit_time, slots, tuner)
        apply(tuner.start())
        step_s = 0.0
        while not tuner.done:
            due_step = slots.next_due_step()
            if due_step is None:
                raise RuntimeError(f"task {task.task_id}: tuner has no active job but is not done")
            if slots.changed:
                step_s, slots.changed = self._step_time(task, list(slots.in_slot.values())), False
            yield env.timeout((due_step - slots.step) * step_s)
            self.n_events += 1
            n_evals = 0
            for jid in slots.pop_due():
                if jid not in slots.in_slot:  # exited by an earlier decision at this same instant
                    continue
                n_evals += 1
                j = slots.by_id[jid]
                samples, steps = slots.trained(jid)
                train, val = self.curves.losses(task, j, samples)
                apply(tuner.on_loss(LossReported(env.now, jid, steps, samples, train, val)))
                if jid not in slots.in_slot:
                    continue
                if samples >= j.total_samples:
                    self._log(f"complete {jid}")
                    exit_time[jid] = env.now
                    slots.leave(jid)
                    apply(tuner.on_complete(env.now, jid))
                else:
                    slots.reschedule(jid, tuner.next_eval(jid))
            if n_evals and self.cfg.eval_samples:
                yield env.timeout(n_evals * self._eval_time(task))
        self.pool.release(gpu_ids)
        del self.running[task.task_id]
        self.outcomes.append(self._outcome(task, gpu_ids, start, tuner, slots.samples, exit_time))
        self._log(f"finish {task.task_id}")
        if self.progress:
            self.progress(len(self.outcomes), len(self.tasks), env.now)
        self._replan()

    def _ee_config(self) -> EarlyExitConfig:
        from dataclasses import replace

        return replace(self.cfg.early_exit, policy=self.policy.early_exit)

    def _apply(self, decisions, exit_time: dict[str, float], slots: TaskSlots, tuner: TaskTuner) -> None:
        """Carry out tuner decisions: book-keeping only (the next loop turn trains the new slots)."""
        for d in decisions:
            if isinstance(d, Admit):
                slots.admit(d.job_id, tuner.next_eval(d.job_id))
                self._log(f"{'resume' if d.resume else 'admit'} {d.job_id}")
            elif isinstance(d, Pause):
                slots.leave(d.job_id)
                self._log(f"pause {d.job_id}")
            elif isinstance(d, Exit):
                slots.leave(d.job_id)
                exit_time[d.job_id] = self.env.now
                self._log(f"exit {d.job_id} {d.reason.value}")

    def _outcome(self, task, gpu_ids, start, tuner, samples, exit_time) -> TaskOutcome:
        jobs, keep = [], len(self.outcomes) < self.cfg.keep_history_tasks
        grid = task.jobs()
        final_best = self.curves.final_best_vals(task, grid)
        for j, best in zip(grid, final_best, strict=True):
            rec = tuner.records[j.job_id]
            jobs.append(
                JobOutcome(
                    job=j, samples_trained=samples[j.job_id], exit_reason=rec.exit_reason,
                    best_val_loss=rec.best_val_loss, exit_time_s=exit_time.get(j.job_id, self.env.now),
                    final_best_val=best,
                    history=list(rec.history) if keep else [],
                )
            )
        return TaskOutcome(
            task_id=task.task_id, tenant=task.tenant, model=task.model, gpus=task.gpus,
            gpu_ids=gpu_ids, arrival_s=task.arrival_s, start_s=start, finish_s=self.env.now,
            predicted_duration_s=self.predicted_duration(task), jobs=jobs,
        )
