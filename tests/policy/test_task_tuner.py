"""TaskTuner: exact decisions on tiny hand-computed tasks, then hypothesis invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alto.policy.early_exit import EarlyExitConfig, make_early_exit
from alto.policy.task_tuner import TaskTuner
from alto.policy.types import Admit, Exit, ExitReason, JobConfig, LossReported, Pause

DIV, UNDER = ExitReason.DIVERGENCE, ExitReason.UNDERPERFORMING


def mk_jobs(batches, total: int = 100) -> list[JobConfig]:
    return [JobConfig(f"j{i}", "t", 1e-4, 16, b, 32.0, total) for i, b in enumerate(batches)]


def mk_tuner(jobs, policy="alto", fits=None, **kw) -> TaskTuner:
    ee = make_early_exit(EarlyExitConfig(policy=policy), jobs)
    return TaskTuner(jobs, ee, fits or (lambda js: True), **kw)


def cap(limit: int):
    """fits(): total batch <= limit samples."""
    return lambda js: sum(j.batch_size for j in js) <= limit


def report(t: TaskTuner, jid: str, val: float, train: float | None = None):
    """One eval of jid at its next eval point (step = samples / batch)."""
    s = t.next_eval(jid)
    step = math.ceil(s / t.jobs[jid].batch_size)
    return t.on_loss(LossReported(0.0, jid, step, s, val if train is None else train, val))


def to_warmup(t: TaskTuner, jid: str, base: float):
    """Decreasing losses (no rule fires) up to the warmup eval; returns its decisions."""
    w = t.early_exit.warmup_samples(t.jobs[jid])
    i = 0
    while t.next_eval(jid) < w:
        assert report(t, jid, base + 0.1 - 0.01 * i) == []
        i += 1
    return report(t, jid, base)


# ---------------------------------------------------------------- exact decisions


def test_warmup_rotation_and_cutoff_keeps_one():
    t = mk_tuner(mk_jobs([1, 1, 1, 1]), fits=lambda js: len(js) <= 2)
    assert t.start() == [Admit("j0"), Admit("j1")]
    assert to_warmup(t, "j0", 0.5) == [Pause("j0"), Admit("j2")]
    assert (t.active, t.queued, t.paused) == (("j1", "j2"), ("j3",), ("j0",))
    assert to_warmup(t, "j1", 0.9) == [Pause("j1"), Admit("j3")]
    assert to_warmup(t, "j2", 0.7) == []  # nothing left to rotate in: keeps training
    assert t.next_eval("j2") == 10
    # last warmup score -> cutoff: keep ceil(0.25 * 4) = 1 (j0), evict in rank order
    assert to_warmup(t, "j3", 0.8) == [
        Exit("j2", UNDER),
        Exit("j3", UNDER),
        Exit("j1", UNDER),
        Admit("j0", resume=True),
    ]
    assert t.warm_scores == {"j0": 0.5, "j1": 0.9, "j2": 0.7, "j3": 0.8}
    assert t.next_eval("j0") == 10
    while t.next_eval("j0") < 100:
        assert report(t, "j0", 0.3) == []
    assert report(t, "j0", 0.3) == [] and t.records["j0"].samples_trained == 100
    assert t.on_complete(1.0, "j0") == [] and t.done
    assert {j: r.exit_reason for j, r in t.records.items()} == {
        "j0": ExitReason.COMPLETED,
        "j1": UNDER,
        "j2": UNDER,
        "j3": UNDER,
    }
    assert len(t.records["j0"].history) == 24  # survivors keep their history


def test_cutoff_when_everything_fits_evicts_active_losers():
    t = mk_tuner(mk_jobs([1] * 8))
    assert t.start() == [Admit(f"j{i}") for i in range(8)]
    scores = [0.8, 0.2, 0.5, 0.1, 0.9, 0.3, 0.7, 0.6]
    for i, s in enumerate(scores[:-1]):
        assert to_warmup(t, f"j{i}", s) == []
    got = to_warmup(t, "j7", scores[-1])
    assert got == [Exit(f"j{i}", UNDER) for i in (5, 2, 7, 6, 0, 4)]
    assert t.active == ("j1", "j3") and not t.paused


def test_no_backfill_trains_in_waves():
    t = mk_tuner(mk_jobs([1, 1, 1, 1]), fits=lambda js: len(js) <= 2, backfill=False)
    assert t.start() == [Admit("j0"), Admit("j1")]
    assert to_warmup(t, "j0", 0.5) == [Pause("j0")]  # slot stays empty
    assert to_warmup(t, "j1", 0.6) == [Pause("j1"), Admit("j2"), Admit("j3")]
    n = mk_tuner(mk_jobs([1, 1, 1]), policy="none", fits=lambda js: len(js) <= 2, backfill=False)
    assert n.start() == [Admit("j0"), Admit("j1")]
    assert report(n, "j0", math.nan) == [Exit("j0", DIV)]
    assert report(n, "j1", math.inf) == [Exit("j1", DIV), Admit("j2")]


def test_mixed_batch_admission_largest_first():
    t = mk_tuner(mk_jobs([1, 2, 4, 8]), policy="none", fits=cap(10))
    assert t.start() == [Admit("j3"), Admit("j1")]  # 8, then 8+4 > 10, 8+2, then 11 > 10
    assert t.queued == ("j2", "j0")
    assert report(t, "j1", math.nan) == [Exit("j1", DIV), Admit("j0")]  # no b2 left: 8+1
    while t.next_eval("j3") < 100:
        assert report(t, "j3", 1.0) == []
    assert report(t, "j3", 1.0) == []
    assert t.on_complete(2.0, "j3") == [Admit("j2")]  # 1 + 4


def test_backfill_prefers_same_batch_and_shrink_requeues_front():
    t = mk_tuner(mk_jobs([4, 4, 4, 2, 2, 2]), policy="none", fits=cap(10))
    assert t.start() == [Admit("j0"), Admit("j1"), Admit("j3")]
    assert report(t, "j3", math.nan) == [Exit("j3", DIV), Admit("j4")]
    assert report(t, "j0", math.nan) == [Exit("j0", DIV), Admit("j2")]  # 4+2+4 = 10
    assert t.active == ("j1", "j4", "j2") and t.queued == ("j5",)
    assert t.shrink() == [Pause("j2")]  # most recently admitted
    assert t.queued == ("j2", "j5") and t.max_active == 2
    # j4 (b2) frees: same-batch j5 beats the queue front j2 (which would also fit)
    assert report(t, "j4", math.nan) == [Exit("j4", DIV), Admit("j5")]
    assert report(t, "j1", math.nan) == [Exit("j1", DIV), Admit("j2", resume=True)]


def test_failed_jobs_are_never_dropped():
    t = mk_tuner(mk_jobs([16, 8, 4]), fits=cap(8))
    assert t.start() == [Exit("j0", ExitReason.FAILED), Admit("j1")]
    assert t.shrink() == []  # one active job: nothing to shrink
    assert t.on_failed(0.0, "j1") == [Exit("j1", ExitReason.FAILED), Admit("j2")]
    assert t.records["j0"].exit_reason == ExitReason.FAILED


def test_job_that_stops_fitting_alone_fails_at_admission():
    limit = [8]  # a driver may tighten the memory model after a re-profile
    t = mk_tuner(
        mk_jobs([8, 8]), policy="none", fits=lambda js: sum(j.batch_size for j in js) <= limit[0]
    )
    assert t.start() == [Admit("j0")]
    limit[0] = 4
    assert report(t, "j0", math.nan) == [Exit("j0", DIV), Exit("j1", ExitReason.FAILED)]
    assert t.done


def test_protocol_errors_and_noops():
    t = mk_tuner(mk_jobs([1, 1]), policy="none", fits=lambda js: len(js) <= 1)
    t.start()
    with pytest.raises(ValueError, match="not active"):
        report(t, "j1", 1.0)
    with pytest.raises(ValueError, match="samples_seen"):
        t.on_loss(LossReported(0.0, "j0", 1, 101, 1.0, 1.0))
    assert report(t, "j0", math.nan) == [Exit("j0", DIV), Admit("j1")]
    assert t.on_complete(0.0, "j0") == []  # final eval already exited it
    with pytest.raises(RuntimeError):
        t.start()
    with pytest.raises(ValueError, match="duplicate"):
        mk_tuner(mk_jobs([1]) * 2)


def test_empty_task_is_done():
    t = mk_tuner([])
    assert t.start() == [] and t.done


# ---------------------------------------------------------------- property tests


def run_driver(jobs, policy, limit, max_active, backfill, seed):
    """Random asynchronous driver; checks invariants after every call. Returns the log."""
    rng = np.random.default_rng(seed)
    fits = cap(limit)
    t = mk_tuner(jobs, policy=policy, fits=fits, backfill=backfill, max_active=max_active)
    ids = {j.job_id for j in jobs}
    kind = {j.job_id: rng.integers(5) for j in jobs}  # loss curve shape per job
    mirror: set[str] = set()
    ever: set[str] = set()
    ended: dict[str, ExitReason] = {}
    log = []

    def apply(ds):
        log.append(tuple(ds))
        for d in ds:
            if isinstance(d, Admit):
                assert d.job_id not in mirror and d.job_id not in ended
                assert d.resume == (d.job_id in ever)
                mirror.add(d.job_id)
                ever.add(d.job_id)
            elif isinstance(d, Pause):
                mirror.remove(d.job_id)
            else:
                assert isinstance(d, Exit) and d.job_id not in ended
                assert d.reason != ExitReason.COMPLETED
                mirror.discard(d.job_id)
                ended[d.job_id] = d.reason
        act = set(t.active)
        assert act == mirror
        assert fits([t.jobs[a] for a in t.active]) and len(act) <= t.max_active
        places = [set(t.active), set(t.queued), set(t.paused), set(t.finished)]
        assert sum(map(len, places)) == len(ids) and set().union(*places) == ids
        assert set(t.finished) == set(ended)
        assert t.done or t.active, "live task with no active job (deadlock)"

    apply(t.start())
    for _ in range(10_000):
        if t.done:
            break
        jid = t.active[rng.integers(len(t.active))]
        if rng.random() < 0.03 and len(t.active) > 1:
            apply(t.shrink())
            continue
        if rng.random() < 0.01:
            apply(t.on_failed(0.0, jid))
            continue
        job, s = t.jobs[jid], t.next_eval(jid)
        x, k = s / job.total_samples, kind[jid]
        noise = rng.normal(0, 0.05)
        train = [2 - x, 1 + x, 2 - x, 1.5, 2 - x][k] + noise
        val = [2 - x, 1 + 2 * x, 2 + x, 1.5 + rng.normal(0, 0.3), 2.1 - x][k] + noise
        if rng.random() < 0.01:
            val = math.nan
        apply(t.on_loss(LossReported(0.0, jid, s, s, train, val)))
        if jid in t.active and s == job.total_samples:
            ds = t.on_complete(0.0, jid)
            mirror.remove(jid)
            ended[jid] = ExitReason.COMPLETED
            apply(ds)
    assert t.done and not t.active and not t.queued and not t.paused
    assert {j: r.exit_reason for j, r in t.records.items()} == ended
    return log


grid = st.fixed_dictionaries(
    {
        "batches": st.lists(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=10),
        "total": st.integers(8, 300),
        "policy": st.sampled_from(["alto", "asha", "none"]),
        "limit": st.integers(1, 24),
        "max_active": st.none() | st.integers(1, 4),
        "backfill": st.booleans(),
        "seed": st.integers(0, 2**31),
    }
)


@settings(max_examples=300, deadline=None)
@given(grid)
def test_random_tasks_keep_invariants_and_finish(g):
    jobs = mk_jobs(g["batches"], g["total"])
    args = (g["policy"], g["limit"], g["max_active"], g["backfill"], g["seed"])
    log = run_driver(jobs, *args)
    assert run_driver(jobs, *args) == log  # deterministic decisions


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**31))
def test_alto_cutoff_keeps_quarter_of_warmed_up(n, slots, seed):
    """Decreasing losses (no rule fires), random interleaving: exactly ceil(n / 4) of the
    jobs survive the cutoff, the best by warmup val loss (ties by id)."""
    jobs = mk_jobs([1] * n, 200)
    t = mk_tuner(jobs, fits=lambda js: len(js) <= slots)
    rng = np.random.default_rng(seed)
    base = {j.job_id: float(rng.choice([0.5, 0.6, 0.7])) for j in jobs}  # ties likely
    t.start()
    while not t.cutoff_done:
        jid = t.active[rng.integers(len(t.active))]
        ds = report(t, jid, base[jid] - 1e-3 * t.next_eval(jid))
        assert t.cutoff_done or all(isinstance(d, Admit | Pause) for d in ds)
    keep = math.ceil(n / 4)
    ranked = sorted(t.jobs, key=lambda j: (t.warm_scores[j], j))
    assert all(t.records[j].exit_reason == UNDER for j in ranked[keep:])
    assert all(t.records[j].exit_reason is None for j in ranked[:keep])
    assert set(t.active) | set(t.queued) == set(ranked[:keep]) and not t.paused
    assert len(t.active) == min(keep, slots)


def test_keep_history_false_records_nothing_and_decides_the_same():
    def drive(keep):
        t = mk_tuner(mk_jobs([2, 2, 1, 1]), fits=cap(3), keep_history=keep)
        out = list(t.start())
        for base, jid in ((1.0, "j0"), (2.0, "j2")):
            out += to_warmup(t, jid, base)
        return t, out

    with_h, a = drive(True)
    without, b = drive(False)
    assert a == b
    assert all(r.history == [] for r in without.records.values())
    assert len(with_h.records["j0"].history) >= 2
    assert without.records["j0"].best_val_loss == with_h.records["j0"].best_val_loss
