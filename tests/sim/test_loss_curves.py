"""Loss-curve sources: determinism, divergence, overfitting, recorded interpolation, and the
warmup-vs-final ranking property the paper's early exit relies on."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from alto.policy.types import JobConfig, TaskSpec
from sim.loss_curves import ParametricCurves, make_curve_source, stable_hash
from sim.recorded_curves import RECORDED_COLUMNS, RecordedCurves, write_recorded_csv
from traces.synth import SPACE_LARGE_MODEL, SPACE_SMALL_MODEL

CURVES_DIR = Path(__file__).resolve().parents[2] / "traces" / "curves"


def task(tid="t00", model="llama-3.1-8b", size=10_000, seq=2048, space=SPACE_SMALL_MODEL):
    return TaskSpec(tid, 0.0, "ten", model, 1, size, seq, 3.0, *space)


def job_at(t: TaskSpec, lr: float, rank=16, batch=4) -> JobConfig:
    return JobConfig(f"{t.task_id}/x-lr{lr:g}", t.task_id, lr, rank, batch, 2.0 * rank,
                     round(t.dataset_size * t.epochs))


# ---------------------------------------------------------------- parametric


def test_stable_hash_is_pinned_not_python_hash():
    assert stable_hash("a", 1) == 13924241962069754241  # blake2b-64 of "a\x1f1": same in every process


def test_deterministic_and_seeded():
    t = task()
    jobs = t.jobs()[:6]
    a, b = ParametricCurves(seed=3), ParametricCurves(seed=3)
    got_a = [a.losses(t, j, 777) for j in jobs] + [a.final_best_val(t, j) for j in jobs]
    got_b = [b.final_best_val(t, j) for j in reversed(jobs)][::-1]  # other query order
    got_b = [b.losses(t, j, 777) for j in jobs] + got_b
    assert got_a == got_b
    other = ParametricCurves(seed=4)
    assert [other.losses(t, j, 777) for j in jobs] != got_a[:6]
    assert a.losses(t, jobs[0], 777) != a.losses(t, jobs[0], 778)  # noise per eval point


def test_divergent_lr_turns_up_then_inf_and_safe_lr_stays_finite():
    c = ParametricCurves(seed=0, noise=0.0, train_noise=0.0)
    t = task()
    law = c.task_law(t)
    lr_div_b4 = law.lr_div * math.sqrt(4 / law.b_ref)  # threshold at batch 4
    bad, ok = job_at(t, 2.0 * lr_div_b4), job_at(t, 0.5 * lr_div_b4)
    s = np.linspace(0, bad.total_samples, 200).astype(int)
    val = np.array([c.losses(t, bad, int(x))[1] for x in s])
    first_min = int(np.argmin(val))
    assert 0 < first_min < len(s) - 1  # some progress first ...
    assert val[first_min] < val[0]
    assert np.all(np.diff(val[first_min:][np.isfinite(val[first_min:])]) > 0)  # ... then rising
    assert math.isinf(val[-1]) and math.isinf(c.losses(t, bad, bad.total_samples)[0])
    assert math.isfinite(c.final_best_val(t, bad))  # the best checkpoint is before divergence
    assert all(math.isfinite(v) for x in s for v in c.losses(t, ok, int(x)))


def test_small_dataset_overfits_large_one_does_not():
    c = ParametricCurves(seed=0, noise=0.0, train_noise=0.0)
    small = task(size=500, seq=1024)
    j = job_at(small, c.task_law(small).lr_opt * math.sqrt(4 / c.task_law(small).b_ref))
    s = np.linspace(0, j.total_samples, 61).astype(int)
    tr, va = np.array([c.losses(small, j, int(x)) for x in s]).T
    assert np.all(np.diff(tr) < 0)  # train keeps falling
    k = int(np.argmin(va))
    assert s[k] < j.total_samples and va[-1] > 1.1 * va[k]  # val turned up
    assert small.dataset_size * 0.5 < s[k] < small.dataset_size * 2.5  # around epoch 1-2
    assert va[-1] / tr[-1] - 1 > 0.1  # the policy's overfitting gap rule would fire
    big = task(size=20_000, seq=2048)
    jb = job_at(big, c.task_law(big).lr_opt * math.sqrt(4 / c.task_law(big).b_ref))
    trb, vab = c.losses(big, jb, jb.total_samples)
    assert vab / trb - 1 < 0.02 and vab == pytest.approx(c.final_best_val(big, jb), rel=1e-3)


def test_best_config_depends_on_task():
    c = ParametricCurves(seed=0)
    best = set()
    for i in range(8):
        t = task(tid=f"t{i:02d}")
        jobs = t.jobs()
        best.add(min(jobs, key=lambda j: c.final_best_val(t, j)).job_id.split("/")[1])
    assert len(best) >= 3


def _warmup_stats(c: ParametricCurves, t: TaskSpec, frac: float) -> tuple[float, bool]:
    jobs = t.jobs()
    warm = [c.losses(t, j, round(frac * j.total_samples))[1] for j in jobs]
    final = [c.final_best_val(t, j) for j in jobs]
    keep = set(np.argsort(warm)[: math.ceil(0.25 * len(jobs))].tolist())  # warmup top 25%
    return spearmanr(warm, final).statistic, int(np.argmin(final)) in keep


def test_warmup_ranking_predicts_final_ranking_imperfectly():
    # paper: Spearman(5%-warmup rank, final rank) > 0.7; best config always in the kept 25%
    c = ParametricCurves(seed=0)
    sets = [("gsm8k", 7473, 1024), ("tulu3-10k", 10_000, 2048), ("tulu3-20k", 20_000, 2048)]
    tasks = []
    for i in range(9):
        name, size, seq = sets[i % 3]
        model, space = (("llama-3.1-70b", SPACE_LARGE_MODEL) if i % 3 == 2 else
                        ("qwen2.5-7b" if i % 2 else "llama-3.1-8b", SPACE_SMALL_MODEL))
        tasks.append(task(f"t{i:02d}-{name}", model, size, seq, space))
    assert len(tasks[0].jobs()) == 60 and len(tasks[2].jobs()) == 64
    rho5, hit5 = zip(*(_warmup_stats(c, t, 0.05) for t in tasks), strict=True)
    rho2, _ = zip(*(_warmup_stats(c, t, 0.02) for t in tasks), strict=True)
    assert 0.6 <= np.mean(rho5) <= 0.95, rho5
    assert min(rho5) > 0.3
    assert sum(hit5) >= 0.75 * len(tasks), hit5
    assert np.mean(rho2) < np.mean(rho5)  # a shorter warmup ranks worse


# ---------------------------------------------------------------- recorded


def rec(task_name, jid, lr, rank, batch, samples, total, train, val, source="synthetic: test"):
    return dict(zip(RECORDED_COLUMNS, (task_name, jid, lr, rank, batch, samples, total, train, val, source),
                    strict=True))


def write(path: Path, rows) -> Path:
    write_recorded_csv(path, rows)
    return path


@pytest.fixture
def recorded(tmp_path: Path) -> RecordedCurves:
    rows = [rec("gsm", "a", 1e-4, 16, 4, s, 200, tr, va)
            for s, tr, va in ((0, 2.0, 2.2), (100, 1.0, 1.2), (200, 0.5, 1.0))]
    rows += [rec("gsm", "b", 1e-3, 16, 4, s, 50, tr, va)
             for s, tr, va in ((0, 3.0, 3.0), (25, 2.0, 2.5), (50, "inf", "inf"))]
    rows += [rec("other", "c", 1e-4, 16, 4, s, 10, 9.0, 9.0) for s in (0, 10)]
    return RecordedCurves(write(tmp_path / "r.csv", rows))


def test_recorded_interpolates_in_samples_fraction(recorded):
    t = task("gsm", size=1000, seq=512)  # 3 epochs: total_samples 3000 stretches the 200 recorded
    j = job_at(t, 1e-4)
    assert recorded.losses(t, j, 750) == pytest.approx((1.5, 1.7))  # fraction 0.25
    assert recorded.losses(t, j, 2250) == pytest.approx((0.75, 1.1))  # fraction 0.75
    assert recorded.losses(t, j, 3000) == (0.5, 1.0)
    assert recorded.losses(t, j, 9999) == (0.5, 1.0)  # flat beyond the end
    assert recorded.final_best_val(t, j) == 1.0
    near = job_at(t, 2e-4, rank=64, batch=8)  # nearest neighbour: lr 1e-4 (0.3 decades) not 1e-3 (0.7)
    assert recorded.losses(t, near, 750) == pytest.approx((1.5, 1.7))
    div = job_at(t, 1e-3)
    assert recorded.losses(t, div, 750) == pytest.approx((2.5, 2.75))  # fraction 0.25: 0 .. 25/50
    assert recorded.losses(t, div, 1500) == (2.0, 2.5)  # fraction 0.5 = the recorded 25/50 point
    assert recorded.losses(t, div, 2250) == (math.inf, math.inf)  # towards a diverged point
    assert recorded.final_best_val(t, div) == 2.5


def test_recorded_divergence_onset_is_the_first_non_finite_step(recorded, tmp_path):
    """The samples fraction of the first non-finite training loss, scaled to the job and
    rounded up to a whole step; capped at the job's end; None for a curve that stays finite."""
    t = task("gsm", size=1000, seq=512)  # total_samples 3000
    assert recorded.divergence_onset(t, job_at(t, 1e-3)) == 3000  # inf at fraction 1.0
    assert recorded.divergence_onset(t, job_at(t, 1e-4)) is None
    rows = [rec("gsm", "d", 1e-3, 16, 4, s, 50, tr, tr) for s, tr in ((0, 3.0), (20, 2.0), (25, "inf"), (50, "inf"))]
    mid = RecordedCurves(write(tmp_path / "mid.csv", rows))
    j = JobConfig("gsm/d", "gsm", 1e-3, 16, 4, 32.0, 30)  # fraction 0.5 of 30 = 15: step 4 ends at 16
    assert mid.divergence_onset(t, j) == 16
    j = JobConfig("gsm/d", "gsm", 1e-3, 16, 4, 32.0, 6)  # 3 samples -> 4, but the job ends at 6
    assert mid.divergence_onset(t, j) == 4


def test_recorded_task_mapping(recorded, tmp_path):
    assert recorded.curve_set_for("gsm") == "gsm"
    assert recorded.curve_set_for("syn-0003-llama-3.1-8b-gsm8k") == "other"  # 3 % 2 -> sorted[1]
    assert recorded.curve_set_for("syn-0004-x") == "gsm"
    t = task("syn-0003-x", size=10, seq=8)
    assert recorded.losses(t, job_at(t, 1e-4), 5)[0] == 9.0
    mapped = RecordedCurves(tmp_path / "r.csv", curve_task={"syn-0003-x": "gsm"})
    assert mapped.losses(t, job_at(t, 1e-4), 0) == (2.0, 2.2)
    with pytest.raises(ValueError, match="'nope'.*gsm, other"):
        RecordedCurves(tmp_path / "r.csv", curve_task={"x": "nope"})


@pytest.mark.parametrize("field,value,match", [
    ("lr", "abc", r"row 2: field 'lr': cannot parse 'abc'"),
    ("samples", -5, r"row 2: field 'samples': invalid value -5"),
    ("val_loss", "nan", r"row 2: field 'val_loss': invalid value nan"),
    ("val_loss", -0.5, r"row 2: field 'val_loss': invalid value -0.5"),  # cross-entropy is >= 0
    ("train_loss", "-inf", r"row 2: field 'train_loss': invalid value -inf"),
    ("total_samples", 999, r"row 2: field 'total_samples'"),
])
def test_bad_recorded_csv_names_file_row_and_field(tmp_path, field, value, match):
    rows = [rec("gsm", "a", 1e-4, 16, 4, 0, 200, 2.0, 2.0), rec("gsm", "a", 1e-4, 16, 4, 100, 200, 1.0, 1.0)]
    rows[1][field] = value
    path = write(tmp_path / "bad.csv", rows)
    with pytest.raises(ValueError, match=r"bad\.csv: " + match):
        RecordedCurves(path)


def test_missing_column_is_an_error(tmp_path):
    (tmp_path / "m.csv").write_text("task,job_id,lr\ngsm,a,1e-4\n")
    with pytest.raises(ValueError, match=r"m\.csv: missing column"):
        RecordedCurves(tmp_path / "m.csv")


def test_example_csv_is_labelled_synthetic_and_loads():
    r = RecordedCurves(CURVES_DIR / "example_synthetic.csv")
    assert r.recorded_tasks() == ["example-large-7b", "example-small-8b"]
    assert "smollm2-gsm_symbolic" in RecordedCurves(CURVES_DIR).recorded_tasks()  # the real SmolLM2 run
    text = (CURVES_DIR / "example_synthetic.csv").read_text().splitlines()[1:]
    assert text and all('"synthetic: ' in line for line in text)
    t = task("example-small-8b", size=1000, seq=1024)
    j = replace(t.jobs()[0], lr=2e-4, rank=16, batch_size=2)
    assert math.isfinite(r.final_best_val(t, j))


def test_make_curve_source(tmp_path, recorded):
    assert make_curve_source("parametric").seed == 0
    assert make_curve_source("parametric:7").seed == 7
    src = make_curve_source(f"recorded:{CURVES_DIR / 'example_synthetic.csv'}")
    assert isinstance(src, RecordedCurves)
    for bad in ("parametric:x", "recorded:", "gaussian"):
        with pytest.raises(ValueError, match="curve spec"):
            make_curve_source(bad)


def test_final_best_vals_vectorised_equals_per_job():
    c = ParametricCurves(seed=3)
    for i in range(6):
        t = task(tid=f"v{i}", size=300 + 4000 * i)
        jobs = t.jobs()
        one = [c.final_best_val(t, j) for j in jobs]
        many = c.final_best_vals(t, jobs)
        assert len(many) == len(jobs)
        for a, b in zip(one, many, strict=True):
            assert (math.isinf(a) and math.isinf(b)) or a == pytest.approx(b, rel=1e-12)


def test_losses_at_equals_losses_point_by_point():
    c = ParametricCurves(seed=5)
    for i in range(4):
        t = task(tid=f"w{i}", size=300 + 5000 * i)
        jobs = t.jobs()
        points = [[1, 3, j.total_samples // 7, j.total_samples // 2, j.total_samples] for j in jobs]
        for j, pts, got in zip(jobs, points, c.losses_at(t, jobs, points), strict=True):
            for p in pts:
                for want, have in zip(c.losses(t, j, p), got[p], strict=True):
                    assert (math.isinf(want) and want == have) or have == pytest.approx(want, rel=1e-12)


def test_recorded_folder_reads_only_curve_files(recorded, tmp_path):
    """`--curves recorded:OUT` on an `alto run` folder: its jobs.csv and losses.csv (other
    formats) are skipped, its curves.csv read (it used to fail on jobs.csv); a folder with no
    curve file is an error."""
    (tmp_path / "jobs.csv").write_text("task,job_id,lr\nadd,a,0.1\n")
    (tmp_path / "losses.csv").write_text("time_s,task,job_id\n")
    folder = RecordedCurves(tmp_path)
    assert folder.recorded_tasks() == recorded.recorded_tasks() == ["gsm", "other"]
    empty = tmp_path / "none"
    empty.mkdir()
    (empty / "jobs.csv").write_text("task,job_id\n")
    with pytest.raises(ValueError, match="no recorded-curve CSV files"):
        RecordedCurves(empty)


def test_recorded_curves_leave_out_jobs_their_run_lists_as_interrupted(tmp_path):
    """After Ctrl-C, `alto run` marks unfinished jobs `interrupted` in jobs.csv; their partial
    curves in curves.csv used to look final to a replay (held flat from the cut)."""
    rows = [rec("gsm", "gsm/a", 1e-4, 16, 4, s, 200, 2.0 - s / 200, 2.2 - s / 200) for s in (0, 100, 200)]
    rows += [rec("gsm", "gsm/b", 1e-3, 16, 4, s, 200, 3.0, 3.0) for s in (0, 20)]
    run = tmp_path / "run"
    run.mkdir()
    write(run / "curves.csv", rows)
    (run / "jobs.csv").write_text("task,job_id,exit_reason\ngsm,gsm/a,completed\ngsm,gsm/b,interrupted\n")
    curves = RecordedCurves(run)
    assert curves.skipped_unfinished == ["gsm/b"]
    assert list(curves._sets["gsm"]) == [(1e-4, 16, 4)]
    assert RecordedCurves(run / "curves.csv").skipped_unfinished == ["gsm/b"]  # the file alone too


def _killed_run(tmp_path: Path, jobs_csv: str | None) -> Path:
    """An `alto run` folder killed mid-run: curves of gsm/a (finished), gsm/b and other/c (cut
    at 20 of 200 samples); ``jobs_csv``: its jobs.csv text (None: none written yet)."""
    rows = [rec("gsm", "gsm/a", 1e-4, 16, 4, s, 200, 2.0 - s / 200, 2.2 - s / 200) for s in (0, 100, 200)]
    rows += [rec("gsm", "gsm/b", 1e-3, 16, 4, s, 200, 3.0, 3.0) for s in (0, 20)]
    rows += [rec("other", "other/c", 1e-3, 16, 4, s, 200, 3.0, 3.0) for s in (0, 20)]
    run = tmp_path / "run"
    run.mkdir()
    write(run / "curves.csv", rows)
    (run / "run.json").write_text("{}\n")
    if jobs_csv is not None:
        (run / "jobs.csv").write_text(jobs_csv)
    return run


def test_recorded_curves_leave_out_jobs_a_killed_run_never_finished(tmp_path):
    """A killed run writes no `interrupted` rows: a job gets its jobs.csv row only when it
    finishes. Jobs with curve rows but no finished row are left out like interrupted ones
    (gsm/b was held flat at 3.0 as if complete); a task none of whose jobs finished, or a run
    folder with no jobs.csv at all, is an error: the run did not finish."""
    run = _killed_run(tmp_path, "task,job_id,exit_reason\ngsm,gsm/a,completed\nother,other/c,\n")
    with pytest.raises(ValueError, match=r"curves\.csv: task 'other': the run did not finish: none of its 1"):
        RecordedCurves(run)
    (run / "jobs.csv").write_text("task,job_id,exit_reason\ngsm,gsm/a,completed\nother,other/c,divergence\n")
    curves = RecordedCurves(run)
    assert curves.skipped_unfinished == ["gsm/b"]
    assert list(curves._sets["gsm"]) == [(1e-4, 16, 4)]
    (run / "jobs.csv").unlink()
    with pytest.raises(ValueError, match=r"curves\.csv: the run did not finish: its folder has run\.json but no jobs\.csv"):
        RecordedCurves(run)
    (run / "run.json").unlink()  # a curve file outside a run folder: every curve is whole
    assert RecordedCurves(run).skipped_unfinished == []
