"""The SimPy cluster on tiny hand-computed scenarios, plus invariants on random traces.

Test doubles replace the cost model and the loss curves so that every time in the
expected logs can be computed by hand:
- FlatCost: one co-located step of n adapters takes 0.5 + 0.5 n seconds; memory is
  1 byte per token against a budget set per test.
- FallingCurves: loss = 1 / (1 + samples) + lr (so a smaller lr is better).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alto.policy.types import ExitReason, TaskSpec
from sim.cluster import ClusterSim, SimConfig
from sim.policies import POLICIES


class FlatCost:
    def __init__(self, hbm_bytes: float = 1e12):
        self.hbm = hbm_bytes

    def predict(self, gpu, model, kernel, n_adapters, tokens_per_step, ranks):
        return 0.5 + 0.5 * n_adapters

    def memory(self, gpu, model):
        return 0.0, 1.0, self.hbm

    def adapter_bytes(self, gpu, model, rank):
        return 0.0

    def source(self, gpu, model, kernel):
        return "test double"


class FallingCurves:
    def losses(self, task, job, samples):
        v = 1.0 / (1 + samples) + job.lr
        return v, v

    def final_best_val(self, task, job):
        return 1.0 / (1 + job.total_samples) + job.lr

    def final_best_vals(self, task, jobs):
        return [self.final_best_val(task, j) for j in jobs]

    def losses_at(self, task, jobs, points):
        return [{p: self.losses(task, j, p) for p in pts} for j, pts in zip(jobs, points, strict=True)]


def task(tid, arrival, gpus, dataset, batches=(1,), lrs=(0.1,), seq_len=1):
    return TaskSpec(tid, arrival, "tenant", "llama-3.1-8b", gpus, dataset, seq_len, 1.0, lrs, (8,), batches)


def run(tasks, policy="mlora", gpus=2, hbm=1e12, eval_samples=0, **kw):
    cfg = SimConfig(gpus=gpus, gpus_per_node=gpus, log_events=True, eval_samples=eval_samples, **kw)
    sim = ClusterSim(tasks, POLICIES[policy], cfg, FlatCost(hbm), FallingCurves())
    return sim.run(), sim.events


def test_fifo_queueing_and_colocation_exact_log():
    # t1 holds both GPUs for 4 single-adapter steps (1 s each): 0 -> 4.
    # t2 (1 GPU) and t3 (1 GPU) arrive while t1 runs and both start at t=4.
    # t2: one config, 2 samples of batch 1 -> 2 steps x 1 s -> finishes at 6.
    # t3: configs b2 (1 step to its 2 samples) and b1 (2 steps); together a step is 1.5 s:
    #     at 5.5 b2 completes and b1 is at 1 sample; b1 alone then takes 1 s -> 6.5.
    tasks = [task("t1", 0, 2, 4), task("t2", 1, 1, 2), task("t3", 2, 1, 2, batches=(1, 2))]
    outcomes, events = run(tasks)
    j1, j2 = "t1/lr0.1-r8-b1", "t2/lr0.1-r8-b1"
    t3b1, t3b2 = "t3/lr0.1-r8-b1", "t3/lr0.1-r8-b2"
    assert events == [
        (0, "arrive t1"), (0, "start t1 gpus=0,1"), (0, f"admit {j1}"),
        (1, "arrive t2"), (2, "arrive t3"),
        (4, f"complete {j1}"), (4, "finish t1"),
        (4, "start t2 gpus=0"), (4, f"admit {j2}"),
        (4, "start t3 gpus=1"), (4, f"admit {t3b2}"), (4, f"admit {t3b1}"),
        (5.5, f"complete {t3b2}"),
        (6, f"complete {j2}"), (6, "finish t2"),
        (6.5, f"complete {t3b1}"), (6.5, "finish t3"),
    ]
    by_id = {o.task_id: o for o in outcomes}
    assert (by_id["t3"].queue_s, by_id["t3"].jct_s) == (2, 4.5)


def test_sequential_runs_one_config_at_a_time():
    # Sequential: max one adapter; 2 configs x 2 steps x 1 s = 4 s.
    outcomes, events = run([task("t", 0, 1, 2, lrs=(0.1, 0.2))], policy="sequential", gpus=1)
    assert events == [
        (0, "arrive t"), (0, "start t gpus=0"), (0, "admit t/lr0.1-r8-b1"),
        (2, "complete t/lr0.1-r8-b1"), (2, "admit t/lr0.2-r8-b1"),
        (4, "complete t/lr0.2-r8-b1"), (4, "finish t"),
    ]
    assert outcomes[0].regret() == 0.0  # lr 0.1 is best and was returned


def test_evaluations_pause_training_for_half_a_single_step():
    # One config, 2 samples of batch 1, evaluated at 1 and 2 samples (the 5% grid, batch-aligned).
    # Steps take 1 s; each evaluation 0.5 x single-adapter step = 0.5 s, training paused:
    # step -> 1.0, eval -> 1.5, step -> 2.5 (complete), eval -> 3.0 (finish).
    _, events = run([task("t", 0, 1, 2)], gpus=1, eval_samples=8)
    assert events == [
        (0, "arrive t"), (0, "start t gpus=0"), (0, "admit t/lr0.1-r8-b1"),
        (2.5, "complete t/lr0.1-r8-b1"), (3.0, "finish t"),
    ]


def test_memory_budget_limits_colocation():
    # Budget: ~3.05 tokens usable after the 10% margin; seq_len 1, so 3 samples per step.
    # Largest batch first: lr0.1-b2 (2), lr0.2-b2 would make 4 > 3 (skipped), lr0.1-b1 -> 3.
    hbm = 3.05 / 0.9
    outcomes, events = run([task("t", 0, 1, 2, batches=(1, 2), lrs=(0.1, 0.2))], gpus=1, hbm=hbm)
    admits = [e for _, e in events if e.startswith("admit")]
    assert admits[:2] == ["admit t/lr0.1-r8-b2", "admit t/lr0.1-r8-b1"]
    assert len(admits) == 4


def test_alto_early_exit_warmup_cutoff_keeps_best():
    # 8 configs with lrs 0.01..0.08: the warmup cutoff keeps ceil(0.25 * 8) = 2 (lowest lr).
    lrs = tuple(0.01 * i for i in range(1, 9))
    outcomes, events = run([task("t", 0, 1, 400, lrs=lrs)], policy="alto", gpus=1)
    reasons = {j.job.lr: j.exit_reason for j in outcomes[0].jobs}
    assert [lr for lr, r in sorted(reasons.items()) if r == ExitReason.COMPLETED] == [0.01, 0.02]
    assert sum(r == ExitReason.UNDERPERFORMING for r in reasons.values()) == 6
    assert outcomes[0].regret() == 0.0
    under = [j for j in outcomes[0].jobs if j.exit_reason == ExitReason.UNDERPERFORMING]
    assert all(j.samples_trained == 20 for j in under)  # 5% of 400 samples, then evicted


def test_same_seed_same_outputs():
    tasks = [task(f"t{i}", 3 * i, 1 + (i % 2), 50, batches=(1, 2), lrs=(0.1, 0.3)) for i in range(6)]
    a = run(tasks, policy="alto", gpus=4)
    b = run(tasks, policy="alto", gpus=4)
    assert a[1] == b[1]
    assert [o.finish_s for o in a[0]] == [o.finish_s for o in b[0]]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(
        st.tuples(st.integers(0, 20), st.sampled_from([1, 2, 4]), st.integers(4, 60), st.sampled_from([(1,), (1, 2), (2, 4)])),
        min_size=1, max_size=8,
    ),
    policy=st.sampled_from(sorted(POLICIES)),
    hbm=st.sampled_from([1e12, 4.05 / 0.9, 6.05 / 0.9]),
)
def test_invariants_on_random_traces(specs, policy, hbm):
    tasks = [task(f"t{i}", a, g, d, batches=b, lrs=(0.1, 0.5)) for i, (a, g, d, b) in enumerate(specs)]
    outcomes, events = run(tasks, policy=policy, gpus=4, hbm=hbm)
    # every task finishes, after it arrived
    assert sorted(o.task_id for o in outcomes) == sorted(t.task_id for t in tasks)
    assert all(o.arrival_s <= o.start_s <= o.finish_s for o in outcomes)
    # no config lost or run twice: each ends exactly once with a reason
    for o in outcomes:
        assert all(j.exit_reason is not None for j in o.jobs)
        ends = [e for _, e in events if e.split()[0] in ("complete", "exit") and e.split()[1].startswith(o.task_id + "/")]
        assert len(ends) == len(o.jobs) == len({e.split()[1] for e in ends})
    # a GPU is never held by two tasks at once, and never more GPUs than the cluster
    for i, a in enumerate(outcomes):
        for b in outcomes[i + 1 :]:
            if a.start_s < b.finish_s and b.start_s < a.finish_s and a.finish_s > a.start_s and b.finish_s > b.start_s:
                assert not set(a.gpu_ids) & set(b.gpu_ids)
    # memory: at every moment the co-located batch of a task fits the budget
    for o in outcomes:
        budget_tokens = hbm * o.gpus * 0.9
        active: dict[str, int] = {}
        for _, e in events:
            kind, *rest = e.split()
            if not rest or not rest[0].startswith(o.task_id + "/"):
                continue
            b = int(rest[0].rsplit("-b", 1)[1])
            if kind in ("admit", "resume"):
                active[rest[0]] = b
            elif kind in ("pause", "exit", "complete"):
                active.pop(rest[0], None)
            assert sum(active.values()) <= budget_tokens


def test_parallel_task_training_gives_identical_results():
    tasks = [task(f"t{i}", 2 * i, 1 + (i % 2), 40 + 7 * i, batches=(1, 2), lrs=(0.1, 0.3, 0.5)) for i in range(12)]
    one, ev1 = run(tasks, policy="alto", gpus=4, workers=1)
    two, ev2 = run(tasks, policy="alto", gpus=4, workers=2)
    assert ev1 == ev2
    key = lambda outs: [(o.task_id, o.start_s, o.finish_s, [(j.job.job_id, j.samples_trained, j.exit_reason, j.exit_time_s) for j in o.jobs]) for o in outs]
    assert key(one) == key(two)


def test_gpu_count_not_a_multiple_of_the_node_size_exact_log():
    # 3 GPUs in nodes of 2: node 0 = GPUs 0-1, node 1 = GPU 2 alone (before: two full nodes,
    # 4 GPUs, and the planner's check failed). FIFO: t1 (2 GPUs) takes node 0, t2 (1 GPU) the
    # 1-GPU node; both run 2 steps of 1 s. t1 finishes first at t=2 and t3 (1 GPU) takes GPU 0
    # at once; t4 needs all 3 GPUs and starts when t3 ends (2 steps: t=4), for one step.
    tasks = [task("t1", 0, 2, 2), task("t2", 0, 1, 2), task("t3", 0, 1, 2), task("t4", 0, 3, 1)]
    cfg = SimConfig(gpus=3, gpus_per_node=2, log_events=True, eval_samples=0)
    sim = ClusterSim(tasks, POLICIES["mlora"], cfg, FlatCost(), FallingCurves())
    sim.run()
    j = "lr0.1-r8-b1"
    assert sim.events == [
        (0, "arrive t1"), (0, "arrive t2"), (0, "arrive t3"), (0, "arrive t4"),
        (0, "start t1 gpus=0,1"), (0, f"admit t1/{j}"), (0, "start t2 gpus=2"), (0, f"admit t2/{j}"),
        (2, f"complete t1/{j}"), (2, f"complete t2/{j}"), (2, "finish t1"),
        (2, "start t3 gpus=0"), (2, f"admit t3/{j}"), (2, "finish t2"),
        (4, f"complete t3/{j}"), (4, "finish t3"), (4, "start t4 gpus=0,1,2"), (4, f"admit t4/{j}"),
        (5, f"complete t4/{j}"), (5, "finish t4"),
    ]
