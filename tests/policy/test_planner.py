"""Inter-task planner: exactness against brute force, hand-computed plans, feasibility, bounds.

The brute force here is independent of the package: a naive serial SGS over every priority
order (active schedules contain a makespan optimum), with capacity checked by counting
intervals at candidate points.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alto.policy.planner import (
    PLANNERS,
    PlannedStart,
    PlanTask,
    RunningTask,
    make_planner,
    makespan_lower_bound,
    plan_makespan,
)
from alto.policy.planner_sgs import Profile, serial_sgs_starts

# ---------------------------------------------------------------- independent reference


def _usage(intervals, p):
    return sum(g for s, e, g in intervals if s <= p < e)


def naive_sgs(now, total, running, tasks):
    """tasks: (gpus, duration, release) in priority order -> (makespan, starts), serial SGS."""
    placed = [(now, max(r.expected_end_s, now), r.gpus) for r in running]
    ms = max([now] + [e for _, e, _ in placed])
    starts = []
    for g, d, rel in tasks:
        for t in sorted({rel} | {e for _, e, _ in placed if e >= rel}):
            points = [t] + [s for s, _, _ in placed if t < s < t + d]
            if all(_usage(placed, p) + g <= total for p in points):
                placed.append((t, t + d, g))
                starts.append(t)
                ms = max(ms, t + d)
                break
    return ms, starts


def naive_sgs_makespan(now, total, running, tasks):
    return naive_sgs(now, total, running, tasks)[0]


def brute_force_optimum(now, total, running, pending):
    tasks = [(t.gpus, t.duration_s, max(now, t.arrival_s)) for t in pending]
    return min(naive_sgs_makespan(now, total, running, p) for p in itertools.permutations(tasks))


def assert_feasible(now, total, running, pending, plan):
    """Every pending task planned once, start >= max(now, arrival), capacity never exceeded."""
    assert sorted(p.task_id for p in plan) == sorted(t.task_id for t in pending)
    by_id = {t.task_id: t for t in pending}
    events = []
    for r in running:
        events += [(now, 1, r.gpus), (max(r.expected_end_s, now), 0, -r.gpus)]
    for p in plan:
        t = by_id[p.task_id]
        assert p.start_s >= max(now, t.arrival_s) - 1e-12
        if t.duration_s > 0:
            events += [(p.start_s, 1, t.gpus), (p.start_s + t.duration_s, 0, -t.gpus)]
    in_use = 0
    for _, _, dg in sorted(events):  # ends (0) before starts (1) at equal times
        in_use += dg
        assert in_use <= total
    assert [p.start_s for p in plan] == sorted(p.start_s for p in plan)


def random_instance(rng, max_tasks=6, max_gpus=8, running=True, quarter=True):
    total = rng.randint(1, max_gpus)
    now = rng.choice([0.0, 7.5])
    run, used = [], 0
    if running:
        for j in range(rng.randint(0, 3)):
            g = rng.randint(1, total)
            if used + g <= total:
                run.append(RunningTask(f"r{j}", g, now + rng.randint(-2, 24) / 4))
                used += g
    pending = []
    for i in range(rng.randint(1, max_tasks)):
        # Multiples of 1/4 keep distinct makespans >= 1/4 apart (tie-weight tolerance).
        d = rng.randint(0, 40) / 4 if quarter else rng.lognormvariate(0.0, 1.0)
        # Mostly arrived already; some arrive later (a release date, possibly mid-step).
        arrival = now + rng.randint(1, 12) / 4 if rng.random() < 0.2 else rng.uniform(0, now)
        pending.append(PlanTask(f"t{i}", rng.randint(1, total), d, arrival))
    return now, total, run, pending


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("exact", ["milp", "enum"])
def test_alto_matches_brute_force(exact):
    rng = random.Random(20261128)
    planner = make_planner("alto", exact=exact, time_limit_s=60.0)
    n_cases = 40 if exact == "milp" else 150
    methods = set()
    for case in range(n_cases):
        now, total, running, pending = random_instance(rng, running=case % 3 != 0)
        plan = planner.plan(now, total, running, pending)
        assert_feasible(now, total, running, pending, plan)
        assert planner.last_method != "milp-limit"
        methods.add(planner.last_method)
        opt = brute_force_optimum(now, total, running, pending)
        assert plan_makespan(now, running, pending, plan) == pytest.approx(opt, abs=1e-6), case
    assert exact in methods  # the exact solver really ran


def test_alto_lognormal_durations_match_brute_force():
    rng = random.Random(7)
    planner = make_planner("alto", exact="enum")
    for _ in range(40):
        now, total, running, pending = random_instance(rng, quarter=False)
        plan = planner.plan(now, total, running, pending)
        opt = brute_force_optimum(now, total, running, pending)
        assert plan_makespan(now, running, pending, plan) == pytest.approx(opt, abs=1e-6)


def test_alto_beats_lpt_where_lpt_is_suboptimal():
    # 4 GPUs. LPT order (d desc, gpus desc): t1(2 GPUs, 4 s), t0(1, 4), t3(3, 3), t2(2, 1).
    # LPT: t1, t0 at 0 (3 busy until 4); t3 needs 3 -> [4, 7); t2 needs 2 -> [7, 8): 8 s.
    # Optimum 7 s, e.g. t3 + t0 at 0, t1 at 3, t2 at 4 (sum of starts 7). The tie-break
    # prefers t1 + t2 at 0, t0 at 1 (1 + 2 + 2 GPUs once t2 ends), t3 at 4: 7 s, sum 5.
    pending = [
        PlanTask("t0", 1, 4.0, 0.0),
        PlanTask("t1", 2, 4.0, 0.0),
        PlanTask("t2", 2, 1.0, 0.0),
        PlanTask("t3", 3, 3.0, 0.0),
    ]
    lpt = make_planner("lpt").plan(0.0, 4, [], pending)
    assert lpt == [
        PlannedStart("t1", 0.0),
        PlannedStart("t0", 0.0),
        PlannedStart("t3", 4.0),
        PlannedStart("t2", 7.0),
    ]
    for exact in ("milp", "enum"):
        alto = make_planner("alto", exact=exact)
        plan = alto.plan(0.0, 4, [], pending)
        assert alto.last_method == exact
        assert plan_makespan(0.0, [], pending, plan) == pytest.approx(7.0)
        assert {p.task_id: p.start_s for p in plan} == pytest.approx(
            {"t1": 0.0, "t2": 0.0, "t0": 1.0, "t3": 4.0}
        )


# ---------------------------------------------------------------- hand-computed plans

# 2 GPUs, now = 5, no running task. Arrival order X, Y, Z, W.
HAND = [
    PlanTask("X", 1, 3.0, 0.0),
    PlanTask("Y", 1, 1.0, 1.0),
    PlanTask("Z", 2, 1.0, 2.0),
    PlanTask("W", 1, 2.0, 3.0),
]


def _starts(plan):
    return [(p.task_id, p.start_s) for p in plan]


def test_fifo_hand():
    # X [5,8), Y [5,6); Z needs both GPUs and may not start before Y: free 2 only at 8 ->
    # [8,9); W may not overtake Z -> [9,11). Makespan 11.
    plan = make_planner("fifo").plan(5.0, 2, [], HAND)
    assert _starts(plan) == [("X", 5.0), ("Y", 5.0), ("Z", 8.0), ("W", 9.0)]


def test_sjf_hand():
    # Order Y(1 s, arr 1), Z(1 s, arr 2), W(2 s), X(3 s). Y [5,6); Z [6,7); W [7,9);
    # X >= 7, one GPU free at 7 -> [7,10).
    plan = make_planner("sjf").plan(5.0, 2, [], HAND)
    assert _starts(plan) == [("Y", 5.0), ("Z", 6.0), ("W", 7.0), ("X", 7.0)]


def test_lpt_hand_backfills():
    # Order X(3), W(2), Z(1 s, 2 GPUs before Y's 1 GPU), Y. X [5,8), W [5,7); Z needs 2:
    # earliest at 8 -> [8,9); Y backfills the hole at 7 -> [7,8). Makespan 9 = LB.
    plan = make_planner("lpt").plan(5.0, 2, [], HAND)
    assert _starts(plan) == [("X", 5.0), ("W", 5.0), ("Y", 7.0), ("Z", 8.0)]
    assert makespan_lower_bound(5.0, 2, [], HAND) == 9.0


def test_head_of_line_blocking_with_running_task():
    # 4 GPUs, 2 held by R until 10. A (4 GPUs) must wait until 10; B (1 GPU, 0.5 s) fits now.
    running = [RunningTask("R", 2, 10.0)]
    pending = [PlanTask("A", 4, 1.0, 0.0), PlanTask("B", 1, 0.5, 0.0)]  # tie: A first by id
    fifo = make_planner("fifo").plan(0.0, 4, running, pending)
    assert _starts(fifo) == [("A", 10.0), ("B", 11.0)]  # B may not overtake A
    sjf = make_planner("sjf").plan(0.0, 4, running, pending)
    assert _starts(sjf) == [("B", 0.0), ("A", 10.0)]
    lpt = make_planner("lpt").plan(0.0, 4, running, pending)
    assert _starts(lpt) == [("B", 0.0), ("A", 10.0)]  # backfilled in front of A
    alto = make_planner("alto").plan(0.0, 4, running, pending)
    assert _starts(alto) == [("B", 0.0), ("A", 10.0)]


def test_release_after_now_and_overdue_running_task():
    # Arrival in the future is a release date; an overdue running task counts as ending now.
    running = [RunningTask("R", 1, 3.0)]
    pending = [PlanTask("late", 1, 1.0, 6.0), PlanTask("now", 2, 2.0, 0.0)]
    # sjf queues "late" (1 s) first and may not be overtaken: late [6,7), now [7,9).
    expect = {"now": 5.0, "late": 7.0}
    for name in PLANNERS:
        plan = make_planner(name).plan(5.0, 2, running, pending)
        assert_feasible(5.0, 2, running, pending, plan)
        want = {"late": 6.0, "now": 7.0} if name == "sjf" else expect
        assert dict(_starts(plan)) == want, name


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_every_planner_feasible_and_above_lower_bound(name):
    rng = random.Random(99)
    # A short MILP limit keeps this fast; the plan must be feasible whatever HiGHS reached.
    planner = make_planner(name, time_limit_s=0.2) if name == "alto" else make_planner(name)
    for _ in range(60):
        now, total, running, pending = random_instance(rng, max_tasks=12, max_gpus=16)
        plan = planner.plan(now, total, running, pending)
        assert_feasible(now, total, running, pending, plan)
        lb = makespan_lower_bound(now, total, running, pending)
        assert plan_makespan(now, running, pending, plan) >= lb - 1e-9


def test_large_instance_feasible_and_tight():
    rng = random.Random(5)
    total = 1024
    running = [RunningTask(f"r{j}", rng.choice([1, 2, 4]), rng.uniform(0, 5e4)) for j in range(300)]
    pending = [
        PlanTask(f"t{i}", rng.choice([1, 2, 4]), rng.lognormvariate(8.0, 1.0), 0.0)
        for i in range(400)
    ]
    for name in ("alto", "fifo"):
        plan = make_planner(name).plan(0.0, total, running, pending)
        assert_feasible(0.0, total, running, pending, plan)
    lb = makespan_lower_bound(0.0, total, running, pending)
    assert plan_makespan(0.0, running, pending, plan) <= 2.0 * lb
    alto = make_planner("alto").plan(0.0, total, running, pending)
    assert plan_makespan(0.0, running, pending, alto) <= 1.05 * lb


task_st = st.tuples(st.integers(1, 4), st.integers(0, 12).map(lambda q: q / 2))


@settings(max_examples=150, deadline=None)
@given(
    total=st.integers(1, 6),
    tasks=st.lists(task_st, min_size=1, max_size=5),
    ends=st.lists(
        st.tuples(st.integers(1, 3), st.integers(-4, 20).map(lambda q: q / 2)), max_size=3
    ),
)
def test_lower_bound_below_optimum(total, tasks, ends):
    running, used = [], 0
    for j, (g, e) in enumerate(ends):
        if used + g <= total:
            running.append(RunningTask(f"r{j}", g, e))
            used += g
    pending = [PlanTask(f"t{i}", min(g, total), d, 0.0) for i, (g, d) in enumerate(tasks)]
    lb = makespan_lower_bound(0.0, total, running, pending)
    assert lb <= brute_force_optimum(0.0, total, running, pending) + 1e-9


def test_lower_bound_hand():
    # now 10; R holds 2 GPUs until 14 (8 GPU-s); tasks 1 GPU x 6 s and 3 GPUs x 2 s (12 GPU-s).
    running = [RunningTask("R", 2, 14.0)]
    pending = [PlanTask("a", 1, 6.0, 0.0), PlanTask("b", 3, 2.0, 12.0)]
    # max(14, 10 + 6, 12 + 2, 10 + (8 + 6 + 6) / 4 = 15) = 16
    assert makespan_lower_bound(10.0, 4, running, pending) == 16.0
    assert makespan_lower_bound(10.0, 2, running, pending[:1]) == 17.0  # 10 + 14/2


# ---------------------------------------------------------------- edges and errors


def test_time_limit_never_worse_than_heuristic():
    rng = random.Random(3)
    for _ in range(10):
        now, total, running, pending = random_instance(rng, max_tasks=6, max_gpus=8)
        fast = make_planner("alto", time_limit_s=1e-3).plan(now, total, running, pending)
        lpt = make_planner("lpt").plan(now, total, running, pending)
        assert_feasible(now, total, running, pending, fast)
        ms = plan_makespan(now, running, pending, fast)
        assert ms <= plan_makespan(now, running, pending, lpt) + 1e-9


def test_deterministic_under_input_permutation():
    rng = random.Random(11)
    now, total, running, pending = random_instance(rng, max_tasks=30, max_gpus=16)
    for name in PLANNERS:
        a = make_planner(name).plan(now, total, running, pending)
        b = make_planner(name).plan(now, total, running, list(reversed(pending)))
        assert a == b, name


def test_empty_and_all_fit_now():
    assert make_planner("alto").plan(0.0, 8, [], []) == []
    pending = [PlanTask(f"t{i}", 2, 10.0 - i, 0.0) for i in range(3)]
    for name in PLANNERS:
        plan = make_planner(name).plan(1.0, 8, [RunningTask("r", 2, 5.0)], pending)
        assert all(p.start_s == 1.0 for p in plan)


def test_errors():
    with pytest.raises(ValueError):
        make_planner("nope")
    with pytest.raises(ValueError):
        make_planner("alto").plan(0.0, 4, [], [PlanTask("a", 5, 1.0, 0.0)])
    with pytest.raises(ValueError):
        make_planner("lpt").plan(0.0, 4, [], [PlanTask("a", 1, -1.0, 0.0)])
    with pytest.raises(ValueError):
        make_planner("fifo").plan(0.0, 4, [RunningTask("r", 5, 1.0)], [])
    with pytest.raises(ValueError):
        make_planner("fifo").plan(0.0, 4, [], [PlanTask("a", 1, 1.0, 0.0)] * 2)
    with pytest.raises(ValueError):
        make_planner("alto", exact="cp-sat")
    assert math.isfinite(makespan_lower_bound(0.0, 1, [], []))


# ---------------------------------------------------------------- generators


def test_serial_sgs_batches_identical_tasks_like_one_by_one():
    # Few task types, as in traces: runs of identical tasks are placed in batches.
    rng = random.Random(17)
    for _ in range(60):
        now, total, running, _ = random_instance(rng, max_gpus=12)
        types = [(rng.randint(1, total), rng.randint(1, 12) / 2) for _ in range(3)]
        tasks = []
        for _ in range(rng.randint(1, 25)):
            g, d = rng.choice(types)
            tasks.append((g, d, now + rng.choice([0.0, 0.0, 0.0, 1.25])))
        tasks.sort(key=lambda t: (-t[1], -t[0], t[2]))
        busy = [(max(r.expected_end_s, now), r.gpus) for r in running]
        assert (
            serial_sgs_starts(now, total, busy, tasks) == naive_sgs(now, total, running, tasks)[1]
        )


def test_profile_grows_and_matches_naive():
    rng = random.Random(4)
    tasks = [(rng.randint(1, 3), rng.randint(1, 20) / 4, 0.0) for _ in range(40)]
    prof = Profile(0.0, 3, [(2.5, 1)], capacity=1)  # forces the arrays to grow
    starts = []
    for g, d, rel in tasks:
        t, k, m = prof.earliest_fit(g, d, rel)
        assert m >= g
        prof.reserve(t, k, g, d)
        starts.append(t)
    assert starts == naive_sgs(0.0, 3, [RunningTask("r", 1, 2.5)], tasks)[1]


def test_lpt_greedy_hand():
    # 4 GPUs, R holds 2 until 10. LPT order: A (4 GPUs, 20 s), C (2 GPUs, 15 s).
    # lpt (serial): A reserved at 10 -> [10, 30); C would overlap A -> [30, 45).
    # lpt-greedy: at 0 A does not fit but C does -> [0, 15); A waits for 4 free GPUs: 15.
    running = [RunningTask("R", 2, 10.0)]
    pending = [PlanTask("A", 4, 20.0, 0.0), PlanTask("C", 2, 15.0, 0.0)]
    lpt = make_planner("lpt").plan(0.0, 4, running, pending)
    assert _starts(lpt) == [("A", 10.0), ("C", 30.0)]
    greedy = make_planner("lpt-greedy").plan(0.0, 4, running, pending)
    assert _starts(greedy) == [("C", 0.0), ("A", 15.0)]
    alto = make_planner("alto").plan(0.0, 4, running, pending)
    assert _starts(alto) == [("C", 0.0), ("A", 15.0)]  # exact: 35 s beats lpt's 45 s


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([1, 2, 4]), min_size=1, max_size=6),
    busy=st.lists(st.tuples(st.sampled_from([1, 2, 4]), st.floats(0.0, 50.0)), max_size=4),
    name=st.sampled_from(["alto", "fifo", "sjf", "lpt"]),
)
def test_free_gpus_hint_gives_the_same_plan(sizes, busy, name):
    """The driver's free-GPU hint is only a fast path: same plan as without it."""
    total = 16
    running = [RunningTask(f"r{i}", g, 10.0 + e) for i, (g, e) in enumerate(busy)]
    pending = [PlanTask(f"p{i}", g, 5.0 + 3 * i, 0.0) for i, g in enumerate(sizes)]
    free = total - sum(r.gpus for r in running)
    if free < 0:
        return
    planner = make_planner(name)
    want = planner.plan(10.0, total, running, pending)
    assert planner.plan(10.0, total, running, pending, free_gpus=free) == want
