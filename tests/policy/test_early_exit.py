"""Early-exit rules on hand-built loss sequences: each rule fires exactly where it should."""

from __future__ import annotations

import math

import pytest

from alto.policy.early_exit import (
    AltoPolicy,
    AshaPolicy,
    EarlyExitConfig,
    NoExitPolicy,
    make_early_exit,
    slope,
)
from alto.policy.types import Exit, ExitReason, JobConfig, LossReported

NAN, INF = math.nan, math.inf


def job(jid: str, b: int = 1, total: int = 100) -> JobConfig:
    return JobConfig(jid, "t", 1e-4, 16, b, 32.0, total)


def feed(pol, jid: str, trains, vals) -> list[Exit | None]:
    """Report evals i = 0.. at the job's eval points, step = 10 * (i + 1); all results."""
    pts = pol.eval_points(pol.jobs[jid])
    return [
        pol.observe(LossReported(float(i), jid, 10 * (i + 1), pts[i], t, v))
        for i, (t, v) in enumerate(zip(trains, vals, strict=True))
    ]


def first_exit(results) -> int | None:
    return next((i for i, r in enumerate(results) if r is not None), None)


def alto(**kw) -> AltoPolicy:
    return make_early_exit(EarlyExitConfig(policy="alto", **kw), [job("a")])


# ---------------------------------------------------------------- config and schedule


@pytest.mark.parametrize(
    "field,value",
    [
        ("policy", "bogus"),
        ("ema_alpha", 0.0),
        ("ema_alpha", 1.5),
        ("window", 1),
        ("patience", 0),
        ("tau_slope", math.nan),
        ("tau_gap", -0.1),
        ("warmup_frac", 1.0),
        ("keep_ratio", 0.0),
        ("eval_every_frac", 0.0),
        ("eval_every_frac_after", 2.0),
        ("asha_reduction", 1),
        ("asha_grace_frac", 0.0),
    ],
)
def test_config_rejects_bad_field_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        EarlyExitConfig(**{field: value})


def test_config_help_covers_every_field():
    h = EarlyExitConfig.help()
    assert set(h) >= {"policy", "ema_alpha", "eval_every_frac_after", "asha_grace_frac"}
    assert "does not give" in h["ema_alpha"]


def test_slope_least_squares():
    assert slope([1.0, 2.0, 4.0]) == pytest.approx(1.5)
    assert slope([3.0, 1.0]) == pytest.approx(-2.0)


def test_alto_eval_points_batch1_include_warmup_exactly():
    pol = alto()
    j = pol.jobs["a"]
    assert pol.warmup_samples(j) == 5  # 0.05 * 100 must not round up to 6
    assert pol.eval_points(j) == [1, 2, 3, 4, 5] + list(range(10, 101, 5))


def test_alto_eval_points_aligned_to_batch():
    j = job("b8", b=8, total=100)
    pol = make_early_exit(EarlyExitConfig(), [j])
    assert pol.warmup_samples(j) == 8  # ceil(5 / 8) * 8
    assert pol.eval_points(j) == [8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 100]


def test_asha_and_none_schedules():
    j = job("a", total=6400)
    asha = make_early_exit(EarlyExitConfig(policy="asha"), [j])
    none = make_early_exit(EarlyExitConfig(policy="none"), [j])
    assert asha.rungs(j) == [100, 400, 1600]  # 1/64, 1/16, 1/4 of training
    assert asha.eval_points(j) == sorted({100, 400, 1600} | set(range(320, 6401, 320)))
    assert none.eval_points(j) == list(range(320, 6401, 320))
    assert asha.warmup_samples(j) is None and none.warmup_samples(j) is None


def test_none_record_warmup_adds_altos_warmup_points_only():
    """A full-grid run with record_warmup evaluates wherever ALTO would (so its curves replay
    ALTO's cutoff), and still never exits a finite job."""
    j = job("a", total=6400)
    alto = make_early_exit(EarlyExitConfig(), [j])
    none = make_early_exit(EarlyExitConfig(policy="none", record_warmup=True), [j])
    warm = alto.warmup_samples(j)  # 320
    assert [p for p in none.eval_points(j) if p <= warm] == [p for p in alto.eval_points(j) if p <= warm]
    assert [p for p in none.eval_points(j) if p <= warm] == list(range(64, 321, 64))
    assert [p for p in none.eval_points(j) if p > warm] == list(range(640, 6401, 320))
    assert none.warmup_samples(j) is None and none.cutoff({"a": 9.0}) == []


def test_none_record_warmup_equals_alto_schedule_with_coarse_points_inside_warmup():
    """eval_every_frac_after points that fall inside warmup (504 here) are not ALTO points:
    record_warmup must not add them (they would also change the averaged train losses)."""
    j = job("a", b=8, total=10_000)
    kw = dict(eval_every_frac=0.02, warmup_frac=0.1, eval_every_frac_after=0.05)
    alto = make_early_exit(EarlyExitConfig(**kw), [j])
    none = make_early_exit(EarlyExitConfig(policy="none", record_warmup=True, **kw), [j])
    assert none.eval_points(j) == alto.eval_points(j)
    assert 504 not in none.eval_points(j) and 1000 in none.eval_points(j)


def test_integer_knobs_become_ints():
    cfg = EarlyExitConfig(window=3.0, patience=2.0, asha_reduction=4.0)
    assert (type(cfg.window), type(cfg.patience), type(cfg.asha_reduction)) == (int, int, int)


# ---------------------------------------------------------------- divergence


def test_divergence_fires_at_patience_not_before():
    up = [1.0, 1.1, 1.2, 1.3]
    res = feed(alto(ema_alpha=1.0), "a", up, up)
    assert res[:2] == [None, None]  # eval 1 has slope data, counter = 1
    assert res[2] == Exit("a", ExitReason.DIVERGENCE)


def test_divergence_with_default_ema():
    # ema = 1.0, 1.3, 1.81: slopes 0.3, 0.51; val slopes 0.5, 0.5
    res = feed(alto(), "a", [1.0, 2.0, 3.0], [1.0, 1.5, 2.0])
    assert res == [None, None, Exit("a", ExitReason.DIVERGENCE)]


def test_divergence_counter_resets_when_val_slope_drops():
    trains = [1.0, 1.1, 1.2, 1.3, 1.4]
    vals = [1.0, 1.1, 1.0, 1.1, 1.2]  # val slope -0.1 at eval 2 resets the counter
    res = feed(alto(ema_alpha=1.0, tau_gap=10.0), "a", trains, vals)
    assert first_exit(res) == 4 and res[4].reason == ExitReason.DIVERGENCE


def test_divergence_counter_resets_when_train_slope_drops():
    trains = [1.0, 1.1, 1.05, 1.1, 1.2]
    vals = [1.0, 1.1, 1.2, 1.3, 1.4]
    res = feed(alto(ema_alpha=1.0, tau_gap=10.0), "a", trains, vals)
    assert first_exit(res) == 4 and res[4].reason == ExitReason.DIVERGENCE


def test_divergence_threshold_is_inclusive():
    ys = [1.0, 1.25, 1.5]  # slopes exactly 0.25 (binary-exact)
    assert first_exit(feed(alto(ema_alpha=1.0, tau_slope=0.25), "a", ys, ys)) == 2
    ys = [1.0, 1.25, 1.375]  # second slope 0.125 < 0.25: counter resets
    assert first_exit(feed(alto(ema_alpha=1.0, tau_slope=0.25), "a", ys, ys)) is None


# ---------------------------------------------------------------- overfitting


def test_overfitting_keeps_best_val_step():
    res = feed(alto(ema_alpha=1.0), "a", [1.0] * 4, [1.05, 1.0, 1.25, 1.25])
    assert res[:3] == [None, None, None]
    assert res[3] == Exit("a", ExitReason.OVERFITTING, keep_step=20)


def test_overfitting_counter_resets_and_ties_keep_earliest():
    res = feed(alto(ema_alpha=1.0), "a", [1.0] * 6, [1.25, 1.0, 1.25, 1.0, 1.25, 1.25])
    assert first_exit(res) == 5
    assert res[5] == Exit("a", ExitReason.OVERFITTING, keep_step=20)


def test_overfitting_gap_is_strict():
    res = feed(alto(ema_alpha=1.0, tau_gap=0.25), "a", [1.0] * 4, [1.25] * 4)
    assert res == [None] * 4


def test_overfitting_uses_ema():
    # ema = 2.0, 1.7, 1.49 -> g = 0, 0.176, 0.342; val flat so no divergence
    pol = alto()
    res = feed(pol, "a", [2.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    assert pol.state["a"].ema == pytest.approx([2.0, 1.7, 1.49])
    assert res == [None, None, Exit("a", ExitReason.OVERFITTING, keep_step=10)]
    assert pol.best("a") == (2.0, 10)


# ---------------------------------------------------------------- NaN / inf


@pytest.mark.parametrize("policy", ["alto", "asha", "none"])
@pytest.mark.parametrize("train,val", [(1.0, NAN), (NAN, 1.0), (INF, 1.0), (1.0, -INF)])
def test_non_finite_loss_exits_immediately(policy, train, val):
    pol = make_early_exit(EarlyExitConfig(policy=policy), [job("a")])
    assert feed(pol, "a", [train], [val]) == [Exit("a", ExitReason.DIVERGENCE)]


def test_none_policy_only_stops_on_nan():
    pol = make_early_exit(EarlyExitConfig(policy="none"), [job("a")])
    assert isinstance(pol, NoExitPolicy)
    res = feed(pol, "a", [1.0, 2.0, 3.0, 4.0, 1.0], [1.0, 5.0, 9.0, 20.0, NAN])
    assert first_exit(res) == 4


# ---------------------------------------------------------------- ASHA


def test_asha_rung_decisions_hand_computed():
    ids = "ABCDEF"
    pol = make_early_exit(EarlyExitConfig(policy="asha"), [job(i, total=6400) for i in ids])
    assert isinstance(pol, AshaPolicy)

    def at(jid, samples, val):
        return pol.observe(LossReported(0.0, jid, samples, samples, val, val))

    # rung 0 (100 samples): keep top ceil(n / 4) of all recorded so far, self included
    got = [at(j, 100, v) for j, v in zip(ids, [1.0, 2.0, 0.5, 0.7, 0.8, 0.6], strict=True)]
    # A n=1 k=1 keep | B n=2 k=1 stop | C best keep | D n=4 k=1 stop | E n=5 k=2 3rd stop
    # F n=6 k=2 2nd keep
    assert [g is None for g in got] == [True, False, True, False, False, True]
    assert all(g.reason == ExitReason.ASHA for g in got if g is not None)
    assert at("A", 320, 9.0) is None  # not a rung
    # rung 1 (400): A keep (n=1), C best keep (n=2), F 2nd of 3 -> stop (k=1)
    assert [at("A", 400, 0.9), at("C", 400, 0.4)] == [None, None]
    assert at("F", 400, 0.5) == Exit("F", ExitReason.ASHA)


def test_asha_ties_continue():
    pol = make_early_exit(
        EarlyExitConfig(policy="asha"), [job("a", total=6400), job("b", total=6400)]
    )
    assert feed(pol, "a", [1.0], [1.0]) == [None]
    assert feed(pol, "b", [1.0], [1.0]) == [None]


# ---------------------------------------------------------------- cutoff


def test_cutoff_keeps_ceil_quarter_with_id_tiebreak():
    pol = alto()
    vals = {"h": 0.5, "g": 0.5, "f": 0.1, "e": 0.9, "d": 0.5, "c": 0.7, "b": 0.3, "a": 0.5}
    # ranking: f .1, b .3, a .5, d .5, g .5, h .5, c .7, e .9 -> keep 2 of 8
    assert pol.cutoff(vals) == ["a", "d", "g", "h", "c", "e"]
    # 5 jobs -> keep ceil(1.25) = 2; the tie at 0.5 breaks by id
    assert pol.cutoff({"y": 0.5, "x": 0.5, "z": 0.5, "w": 0.9, "v": 1.0}) == ["z", "w", "v"]
    assert pol.cutoff({"only": 3.0}) == []
    assert pol.cutoff({}) == []
    assert pol.cutoff({"a": NAN, "b": 2.0, "c": 1.0, "d": 1.5}) == ["d", "b", "a"]


def test_cutoff_float_noise_does_not_keep_extra():
    pol = alto(keep_ratio=0.1)  # 0.1 * 30 = 3.0000000000000004 must keep 3
    vals = {f"j{i:02d}": float(i) for i in range(30)}
    assert len(pol.cutoff(vals)) == 27


@pytest.mark.parametrize("policy", ["asha", "none"])
def test_cutoff_empty_without_warmup(policy):
    pol = make_early_exit(EarlyExitConfig(policy=policy), [job("a"), job("b")])
    assert pol.cutoff({"a": 1.0, "b": 2.0}) == []
