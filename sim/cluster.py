"""The SimPy cluster: tasks arrive, the planner places them, each task trains its configs.

Scenario: a cluster of `gpus` GPUs in nodes of `gpus_per_node` receives tuning tasks
from a trace. On every arrival and completion the inter-task planner
(`alto.policy.planner`) replans; tasks it starts *now* get specific GPUs from the
node-aware `GpuPool`. Inside a task, a `TaskTuner` (`alto.policy.task_tuner`) decides
which configs share the task's GPUs; the simulator advances simulated time from one
evaluation point to the next, with step times from the cost model and losses from a
loss-curve source, and reports every evaluation back to the tuner. That inner timeline
does not depend on when the task starts, so it is computed by
`sim.task_training.simulate_task_training` (in parallel processes for big traces) and
placed here at the task's start.

The simulator keeps the books and never decides. Two processes:
- `_arrivals`: one generator that releases trace tasks at their arrival times;
- `_run_task`: one generator per started task, from its start to its last config.

Time unit: seconds of simulated time. Determinism: no wall clock, no unseeded RNG;
the loss source is seeded, so the same inputs give identical outputs.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import simpy

from alto.policy.early_exit import EarlyExitConfig
from alto.policy.placement import GpuPool
from alto.policy.planner import PlanTask, RunningTask, make_planner
from alto.policy.types import TaskSpec
from sim.cost_model import CostModel
from sim.loss_curves import CurveSource
from sim.metrics import TaskOutcome
from sim.policies import ClusterPolicy
from sim.task_training import TaskCosts, TaskTraining, pack, simulate_task_training, unpack


@dataclass
class SimConfig:
    """Cluster and policy knobs of one simulation.

    gpus: GPUs in the cluster (count). gpus_per_node: GPUs per node (count); a task's
    GPUs always sit on one node when it needs <= gpus_per_node. When gpus is no multiple of
    gpus_per_node, the last node holds the remainder (placement.GpuPool.for_gpus).
    gpu_type: key into the cost tables (e.g. "H200", "H100").
    mem_margin_frac: HBM safety margin of the memory model (fraction of HBM kept free).
    eval_samples: validation samples scored per evaluation of one config (count). Configs
      due together are scored as the executor scores them: in forwards of at most
      EVAL_TOKENS_PER_FORWARD tokens (alto.policy.types), each charged half the training
      step of its adapters and tokens (an estimate: forward ~2N of the 4N FLOPs per token;
      before session 19, each config's evaluation was charged alone); training pauses
      while they are scored, as in the executor.
    log_events: keep the exact (time_s, event) log (tests; costs memory on big traces).
    max_total_batch, max_active: admission caps of every task beside the memory model, as
      `alto run`'s memory.max_total_batch (summed batch of the configs training together)
      and memory.max_active (configs training together); None: no cap.
    """

    gpus: int = 8
    gpus_per_node: int = 8
    gpu_type: str = "H200"
    early_exit: EarlyExitConfig = field(default_factory=EarlyExitConfig)
    mem_margin_frac: float = 0.1
    log_events: bool = False
    eval_samples: int = 64  # validation samples per evaluation of one config (0: evaluations are free)
    keep_history_tasks: int = 4  # first tasks (in arrival order) whose loss histories are kept for figures
    exact_solver: str = "enum"  # ALTO planner's exact path on small instances: "enum" or "milp" (HiGHS, 2 s limit)
    workers: int = 1  # processes that simulate task training up front (0: one per core; 1: inline)
    max_total_batch: int | None = None
    max_active: int | None = None


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
        self.pool = GpuPool.for_gpus(cfg.gpus, cfg.gpus_per_node)  # (a smaller last node if
        # gpus is no multiple of gpus_per_node: exactly cfg.gpus GPUs)
        # The ALTO planner solves small instances exactly; the simulator uses the exact
        # enumeration (same optimum, ms, deterministic) rather than the time-limited MILP,
        # whose incumbent at the limit depends on machine speed.
        kw = {"exact": cfg.exact_solver} if policy.planner == "alto" else {}
        self.planner = make_planner(policy.planner, **kw)
        self.pending: dict[str, tuple[TaskSpec, PlanTask]] = {}
        self._pending_sizes: Counter[int] = Counter()  # GPU demand -> pending tasks of it
        self.running: dict[str, RunningTask] = {}
        self.outcomes: list[TaskOutcome] = []
        self.events: list[tuple[float, str]] = []
        self.planner_calls = 0
        self.n_events = 0  # events simulated: arrivals, task starts and loss reports
        self.costs = TaskCosts(policy, cfg, cost)
        self._trainings: dict[str, TaskTraining] = {}
        self._arrival_rank = {t.task_id: i for i, t in enumerate(self.tasks)}

    # ------------------------------------------------------------------ public
    def run(self) -> list[TaskOutcome]:
        if self.cfg.workers != 1:
            self.precompute(self.cfg.workers or os.cpu_count() or 1)
        self.env.process(self._arrivals())
        self.env.run()
        self.events.sort(key=lambda e: e[0])  # stable: same-time events keep their order
        if len(self.outcomes) != len(self.tasks):
            stuck = sorted(set(self.pending))
            raise RuntimeError(f"simulation ended with {len(stuck)} unplaced tasks: {stuck[:5]}")
        return sorted(self.outcomes, key=lambda o: (o.arrival_s, o.task_id))

    # ------------------------------------------------------------------ books
    def _log(self, what: str) -> None:
        if self.cfg.log_events:
            self.events.append((round(self.env.now, 6), what))

    def predicted_duration(self, task: TaskSpec) -> float:
        return self.costs.predicted_duration(task)

    def _training(self, task: TaskSpec) -> TaskTraining:
        tr = self._trainings.pop(task.task_id, None)
        if tr is None:
            tr = simulate_task_training(task, self.costs, self.curves, self.cfg.log_events, self._keep_history(task))
        return tr

    def _keep_history(self, task: TaskSpec) -> bool:
        return self._arrival_rank[task.task_id] < self.cfg.keep_history_tasks

    def precompute(self, workers: int) -> None:
        """Simulate every task's training up front, in `workers` processes (same results)."""
        todo = [t for t in self.tasks if t.task_id not in self._trainings]
        no_fork = "fork" not in multiprocessing.get_all_start_methods()  # e.g. Windows: run inline
        if workers <= 1 or len(todo) < 2 * workers or no_fork:
            for i, t in enumerate(todo, 1):
                self._trainings[t.task_id] = self._training(t)
                if self.progress and i % 100 == 0:
                    self.progress(i, len(todo), math.nan)
            return
        global _WORKER_SIM
        _WORKER_SIM = self  # inherited by forked workers: no pickling of tables or curves
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers) as pool:
            for i, packed in enumerate(pool.imap(_train_in_worker, todo, chunksize=64), 1):
                self._trainings[todo[i - 1].task_id] = unpack(packed, todo[i - 1])
                if self.progress and i % 100 == 0:
                    self.progress(i, len(todo), math.nan)
        _WORKER_SIM = None

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
        plan = self.planner.plan(
            now, self.cfg.gpus, list(self.running.values()), [p for _, p in self.pending.values()],
            free_gpus=self.pool.free_count,
        )
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
            self.env.process(self._run_task(task, gpu_ids))

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
    def _run_task(self, task: TaskSpec, gpu_ids: tuple[int, ...]):
        """Hold the task's GPUs for its simulated training, then book its outcome."""
        start = self.env.now
        self._log(f"start {task.task_id} gpus={','.join(map(str, gpu_ids))}")
        tr = self._training(task)
        if self.cfg.log_events:  # future-dated now; run() sorts the log stably by time
            self.events.extend((round(start + t, 6), what) for t, what in tr.events)
        self.n_events += 1 + tr.evaluations
        yield self.env.timeout(tr.duration_s)
        self.pool.release(gpu_ids)
        del self.running[task.task_id]
        self.outcomes.append(self._outcome(task, gpu_ids, start, tr))
        self._log(f"finish {task.task_id}")
        if self.progress:
            self.progress(len(self.outcomes), len(self.tasks), self.env.now)
        self._replan()

    def _outcome(self, task: TaskSpec, gpu_ids: tuple[int, ...], start: float, tr: TaskTraining) -> TaskOutcome:
        for j in tr.jobs:
            j.exit_time_s += start
        return TaskOutcome(
            task_id=task.task_id, tenant=task.tenant, model=task.model, gpus=task.gpus,
            gpu_ids=gpu_ids, arrival_s=task.arrival_s, start_s=start, finish_s=self.env.now,
            predicted_duration_s=self.predicted_duration(task), jobs=tr.jobs,
        )


_WORKER_SIM: ClusterSim | None = None


def _train_in_worker(task: TaskSpec) -> tuple:
    sim = _WORKER_SIM
    return pack(simulate_task_training(task, sim.costs, sim.curves, sim.cfg.log_events, sim._keep_history(task)))
