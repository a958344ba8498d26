"""Inter-task planner: when should each pending task start on the shared GPU pool?

Planning model (PAPER_NOTES.md section 5): P|size_j|C_max with release dates.
* The cluster is a pool of `total_gpus` identical GPUs (node boundaries are the driver's
  business, see `alto.policy.placement`).
* A pending task needs `gpus` GPUs at once for `duration_s` seconds (rigid; the duration
  is the worst-case prediction, without early exit). Its release is max(now, arrival_s).
* A running task holds `gpus` GPUs until `expected_end_s` (clamped to >= now); it is
  never moved.
* A plan is feasible iff at every instant running + started pending tasks use
  <= total_gpus GPUs.
* Makespan = max(now, every running task's end, every pending task's planned end): the
  time at which all known work is done. Running ends count, so the area lower bound below
  is valid.

`plan()` returns a `PlannedStart` (start_s >= now) for EVERY pending task, sorted by start,
ties in the planner's priority order. The driver starts the ones with start_s <= now + 1e-9
that it can place, and calls `plan()` again on every arrival and completion; completions
come early because of early exit, so only the "start now" part is ever carried out.

Planners (`PLANNERS`, `make_planner`):
* "fifo": arrival order (arrival_s, task_id), no overtaking: a task never starts before
  the one ahead of it, so a large head-of-line task blocks the queue.
* "sjf":  shortest duration first (duration_s, arrival_s, task_id), no overtaking.
* "lpt":  longest duration first (-duration_s, -gpus, arrival_s, task_id), serial schedule
  generation: each task, in that order, starts at the earliest time it fits given the
  tasks placed before it (so short tasks backfill holes without delaying longer ones).
* "lpt-greedy" (extra baseline): the same LPT order through the parallel SGS, i.e. greedy
  list scheduling: at every event, start the best-priority tasks that fit (no reservation).
* "alto": the exact MILP of `planner_exact` when len(pending) <= exact_max and
  total_gpus <= exact_max_gpus, else the "lpt" plan. The MILP is skipped when the "lpt"
  plan already meets `makespan_lower_bound` (it is then optimal). Of the MILP plan (re-timed
  by the serial SGS in the MILP's start order) and the "lpt" plan, the one with the smaller
  makespan is returned, ties broken by the smaller sum of starts; a MILP stopped by its time
  limit may return an incumbent worse than the heuristic, or none.

Cost: "fifo"/"sjf"/"lpt-greedy" O(P log P + R log R); "lpt" and alto's heuristic path: one
serial SGS (see `planner_sgs`): ~3 ms at P = 380 pending / 585 running on 1,024 GPUs and
~6 ms at P = 1,000 (measured on plan() inputs dumped from the SimPy cluster). The MILP
takes ~0.1 s (median; up to the 2 s limit) on 6 tasks / 8 GPUs; `exact="enum"` finds the
same optimum in ~3 ms. Everything is deterministic except a MILP that hits its time limit
(its incumbent depends on how far HiGHS got).

Driver tip: when fewer GPUs are free than the smallest pending task needs, no plan can
start anything now, so the call can be skipped (an arrival into a full cluster).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from alto.policy.planner_exact import TIE_WEIGHT, enumerate_best_order, solve_makespan_milp
from alto.policy.planner_sgs import parallel_sgs_starts, serial_sgs_starts, strict_order_starts

START_TOL_S = 1e-9  # a planned start within this of now means "start now"


@dataclass(frozen=True)
class PlanTask:
    """A pending task. duration_s: worst-case predicted run time (no early exit), seconds."""

    task_id: str
    gpus: int
    duration_s: float
    arrival_s: float


@dataclass(frozen=True)
class RunningTask:
    """A started task; holds `gpus` GPUs until expected_end_s (seconds). Never moved."""

    task_id: str
    gpus: int
    expected_end_s: float


@dataclass(frozen=True)
class PlannedStart:
    task_id: str
    start_s: float


class Planner(Protocol):
    name: str

    def plan(
        self,
        now_s: float,
        total_gpus: int,
        running: Sequence[RunningTask],
        pending: Sequence[PlanTask],
        free_gpus: int | None = None,
    ) -> list[PlannedStart]: ...


# ---------------------------------------------------------------- helpers


def _validate(
    now_s: float, total_gpus: int, running: Sequence[RunningTask], pending: Sequence[PlanTask]
) -> None:
    if total_gpus < 1:
        raise ValueError(f"total_gpus must be >= 1, got {total_gpus}")
    if sum(r.gpus for r in running) > total_gpus:
        raise ValueError("running tasks hold more GPUs than total_gpus")
    seen = set()
    for t in pending:
        if not 1 <= t.gpus <= total_gpus:
            raise ValueError(f"task {t.task_id}: gpus={t.gpus} outside [1, {total_gpus}]")
        if not (t.duration_s >= 0.0 and math.isfinite(t.duration_s)):
            raise ValueError(f"task {t.task_id}: duration_s={t.duration_s} must be finite and >= 0")
        if t.task_id in seen:
            raise ValueError(f"duplicate pending task_id {t.task_id}")
        seen.add(t.task_id)


def _busy(now_s: float, running: Sequence[RunningTask]) -> list[tuple[float, int]]:
    return [(max(r.expected_end_s, now_s), r.gpus) for r in running]


def plan_makespan(
    now_s: float,
    running: Sequence[RunningTask],
    pending: Sequence[PlanTask],
    plan: Sequence[PlannedStart],
) -> float:
    """Makespan of `plan`: max(now, running ends, planned pending ends), seconds."""
    dur = {t.task_id: t.duration_s for t in pending}
    ms = max([now_s] + [r.expected_end_s for r in running])
    for p in plan:
        ms = max(ms, p.start_s + dur[p.task_id])
    return ms


def makespan_lower_bound(
    now_s: float, total_gpus: int, running: Sequence[RunningTask], pending: Sequence[PlanTask]
) -> float:
    """LB = max(now, max_j end_j, max_i(release_i + d_i), now + W / total_gpus), seconds.

    end_j: running ends; release_i = max(now, arrival_i); W = remaining GPU-seconds of the
    running tasks, sum_j g_j * max(end_j - now, 0), plus sum_i g_i * d_i. The last term holds
    because all of W must be done on total_gpus GPUs after now.
    """
    lb = now_s
    work = 0.0
    for r in running:
        rem = max(r.expected_end_s - now_s, 0.0)
        lb = max(lb, now_s + rem)
        work += r.gpus * rem
    for t in pending:
        lb = max(lb, max(now_s, t.arrival_s) + t.duration_s)
        work += t.gpus * t.duration_s
    return max(lb, now_s + work / total_gpus)


def _result(
    pending: Sequence[PlanTask], order: Sequence[int], starts: Sequence[float]
) -> list[PlannedStart]:
    """order: pending indices in priority order; starts[k] for pending[order[k]]."""
    rank = sorted(range(len(order)), key=lambda k: (starts[k], k))
    return [PlannedStart(pending[order[k]].task_id, starts[k]) for k in rank]


def _tasks(
    now_s: float, pending: Sequence[PlanTask], order: Sequence[int]
) -> list[tuple[int, float, float]]:
    return [
        (pending[i].gpus, pending[i].duration_s, max(now_s, pending[i].arrival_s)) for i in order
    ]


def _order(pending: Sequence[PlanTask], key: Callable[[PlanTask], tuple]) -> list[int]:
    return sorted(range(len(pending)), key=lambda i: key(pending[i]))


def _start_all_now(
    now_s: float, free_gpus: int | None, pending: Sequence[PlanTask], key: Callable[[PlanTask], tuple]
) -> list[PlannedStart] | None:
    """O(P log P) fast path, without looking at running tasks: when the driver says
    `free_gpus` are free now and every pending task is released and fits into them at
    once, every planner here starts them all now (capacity only grows after now), in its
    priority order. None when the hint is absent or they do not all fit."""
    if free_gpus is None or sum(t.gpus for t in pending) > free_gpus:
        return None
    if any(t.arrival_s > now_s for t in pending):
        return None
    return [PlannedStart(pending[i].task_id, now_s) for i in _order(pending, key)]


def _fifo_key(t: PlanTask) -> tuple:
    return (t.arrival_s, t.task_id)


def _sjf_key(t: PlanTask) -> tuple:
    return (t.duration_s, t.arrival_s, t.task_id)


def _lpt_key(t: PlanTask) -> tuple:
    return (-t.duration_s, -t.gpus, t.arrival_s, t.task_id)


# ---------------------------------------------------------------- planners


Generator = Callable[
    [float, int, Sequence[tuple[float, int]], Sequence[tuple[int, float, float]]], list[float]
]


class ListPlanner:
    """A fixed priority order fed to a schedule generator.

    "fifo" and "sjf" use `strict_order_starts` (no overtaking), "lpt" `serial_sgs_starts`.
    """

    def __init__(self, name: str, key: Callable[[PlanTask], tuple], generator: Generator):
        self.name = name
        self._key = key
        self._generator = generator

    def plan(
        self,
        now_s: float,
        total_gpus: int,
        running: Sequence[RunningTask],
        pending: Sequence[PlanTask],
        free_gpus: int | None = None,
    ) -> list[PlannedStart]:
        """free_gpus: the driver's count of GPUs free now (optional; enables the fast path)."""
        fast = _start_all_now(now_s, free_gpus, pending, self._key)
        if fast is not None:
            return fast
        _validate(now_s, total_gpus, running, pending)
        order = _order(pending, self._key)
        tasks = _tasks(now_s, pending, order)
        starts = self._generator(now_s, total_gpus, _busy(now_s, running), tasks)
        return _result(pending, order, starts)


class AltoPlanner:
    """Exact MILP on small instances, LPT serial SGS otherwise (see module docstring).

    exact_max: largest number of pending tasks solved exactly.
    exact_max_gpus: largest total_gpus solved exactly.
    time_limit_s: HiGHS time limit per MILP solve (seconds, solver-internal timer).
    mip_rel_gap: HiGHS relative optimality gap.
    tie_weight: MILP objective weight of the sum of normalised starts (see planner_exact).
    exact: "milp" (the paper's formulation, HiGHS) or "enum" (search over serial-SGS
      orders; same optimum, no time limit, much faster for <= 6 tasks).
    last_method: "trivial", "lpt", "lpt=lb" (heuristic proven optimal), "milp",
      "milp-limit" (time limit hit) or "enum": what the last plan() call did (benchmarks).
    """

    name = "alto"

    def __init__(
        self,
        exact_max: int = 6,
        exact_max_gpus: int = 64,
        time_limit_s: float = 2.0,
        mip_rel_gap: float = 1e-7,
        tie_weight: float = TIE_WEIGHT,
        exact: str = "milp",
    ):
        if exact not in ("milp", "enum"):
            raise ValueError(f"exact must be 'milp' or 'enum', got {exact!r}")
        self.exact_max = exact_max
        self.exact_max_gpus = exact_max_gpus
        self.time_limit_s = time_limit_s
        self.mip_rel_gap = mip_rel_gap
        self.tie_weight = tie_weight
        self.exact = exact
        self.last_method = ""

    def plan(
        self,
        now_s: float,
        total_gpus: int,
        running: Sequence[RunningTask],
        pending: Sequence[PlanTask],
        free_gpus: int | None = None,
    ) -> list[PlannedStart]:
        """free_gpus: the driver's count of GPUs free now (optional; enables the fast path)."""
        fast = _start_all_now(now_s, free_gpus, pending, _lpt_key)
        if fast is not None:
            self.last_method = "trivial"
            return fast
        _validate(now_s, total_gpus, running, pending)
        busy = _busy(now_s, running)
        order = _order(pending, _lpt_key)
        tasks = _tasks(now_s, pending, order)
        starts = serial_sgs_starts(now_s, total_gpus, busy, tasks)
        self.last_method = "lpt"
        if len(pending) <= 1:
            self.last_method = "trivial"  # one task at its earliest fit is optimal
        elif len(pending) <= self.exact_max and total_gpus <= self.exact_max_gpus:
            base = max([now_s] + [e for e, _ in busy])
            ms = max([base] + [s + t[1] for s, t in zip(starts, tasks, strict=True)])
            lb = makespan_lower_bound(now_s, total_gpus, running, pending)
            if ms <= lb + 1e-9 * max(1.0, abs(ms)):
                self.last_method = "lpt=lb"
            else:
                order, starts = self._exact(now_s, total_gpus, busy, order, tasks, starts, ms, lb)
        return _result(pending, order, starts)

    def _exact(self, now_s, total_gpus, busy, order, tasks, starts, ms, lb):
        """Exact plan if it beats the heuristic (makespan, then sum of starts)."""
        if self.exact == "enum":
            self.last_method = "enum"
            found = enumerate_best_order(now_s, total_gpus, busy, tasks, ms)
            if found is None:
                return order, starts
            e_order, e_starts = found
        else:
            res = solve_makespan_milp(
                now_s,
                total_gpus,
                busy,
                tasks,
                ms,
                lb,
                self.time_limit_s,
                self.mip_rel_gap,
                self.tie_weight,
            )
            self.last_method = "milp" if res.optimal else "milp-limit"
            if res.order is None:
                return order, starts
            e_order = res.order
            e_starts = serial_sgs_starts(now_s, total_gpus, busy, [tasks[k] for k in e_order])
        base = max([now_s] + [e for e, _ in busy])
        e_ms = max([base] + [s + tasks[k][1] for s, k in zip(e_starts, e_order, strict=True)])
        tol = 1e-9 * max(1.0, abs(ms))
        if e_ms < ms - tol or (e_ms <= ms + tol and sum(e_starts) < sum(starts) - tol):
            return [order[k] for k in e_order], e_starts
        return order, starts


PLANNERS: dict[str, Callable[..., Planner]] = {
    "alto": AltoPlanner,
    "fifo": lambda: ListPlanner("fifo", _fifo_key, strict_order_starts),
    "sjf": lambda: ListPlanner("sjf", _sjf_key, strict_order_starts),
    "lpt": lambda: ListPlanner("lpt", _lpt_key, serial_sgs_starts),
    "lpt-greedy": lambda: ListPlanner("lpt-greedy", _lpt_key, parallel_sgs_starts),
}


def make_planner(name: str, **kw) -> Planner:
    """Build a registered planner; kw go to its constructor (only "alto" takes any)."""
    try:
        factory = PLANNERS[name]
    except KeyError:
        raise ValueError(f"unknown planner {name!r}; known: {sorted(PLANNERS)}") from None
    return factory(**kw)
