"""`alto simulate` against the folders and inputs a new user hands it: --out never replaces a
run's or an input's files, killed runs replay only their finished jobs, unused cost tables
and empty --policies are said, and the README shows commands that work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alto.cli import build_parser, main
from sim.recorded_curves import RECORDED_COLUMNS, write_recorded_csv

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
HEADER = "task_id,arrival_s,tenant,model,gpus,dataset_size,seq_len,epochs,lrs,ranks,batch_sizes\n"
ROW = "a,0,t1,smollm2-135m,1,64,16,2,0.001;0.01,4,2\n"  # 2 configs: lr 0.001 and 0.01, rank 4, batch 2
QUICK = ["--gpus", "1", "--policies", "alto", "--quiet"]


def curve_rows(task: str, lr: float, last: int, job_id: str | None = None) -> list[dict]:
    """Recorded rows of one config (rank 4, batch 2, 128 samples), up to ``last`` samples."""
    jid = job_id or f"{task}/lr{lr:g}"
    return [dict(zip(RECORDED_COLUMNS, (task, jid, lr, 4, 2, s, 128, 3.0 - s / 100, 3.1 - s / 100,
                                        "measured: test"), strict=True)) for s in range(0, last + 1, 32)]


def fake_run(folder: Path, finished: dict[str, str] | None) -> Path:
    """An `alto run` output folder of ROW's task "a": run.json, curves.csv of both configs
    (lr 0.01 cut at 32 of 128 samples), losses.csv; jobs.csv with ``finished`` {job_id:
    exit_reason} (None: no jobs.csv, a run killed before any job finished)."""
    folder.mkdir()
    task = {"name": "a", "max_seq_len": 16, "epochs": 2, "lrs": [0.001, 0.01], "ranks": [4],
            "batch_sizes": [2], "train_samples": 64}
    (folder / "run.json").write_text(json.dumps({"model": {"path": "random:smollm2-135m"},
                                                 "early_exit": {}, "memory": {}, "tasks": [task]}))
    write_recorded_csv(folder / "curves.csv", curve_rows("a", 0.001, 128) + curve_rows("a", 0.01, 32))
    (folder / "losses.csv").write_text("time_s,task,job_id,step,samples,train_loss,val_loss\n")
    if finished is not None:
        rows = "".join(f"a,{j},{r}\n" for j, r in finished.items())
        (folder / "jobs.csv").write_text("task,job_id,exit_reason\n" + rows)
    return folder


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    p = tmp_path / "trace.csv"
    p.write_text(HEADER + ROW)
    return p


@pytest.mark.parametrize("marker", ["run.json", "losses.csv", "adapters"])
def test_out_holding_a_run_is_refused_and_left_alone(tmp_path, trace, capsys, marker):
    """`--out` on an `alto run` folder used to overwrite the run's jobs.csv and curves.csv."""
    run = tmp_path / "run"
    (run / "adapters").mkdir(parents=True) if marker == "adapters" else run.mkdir()
    if marker != "adapters":
        (run / marker).write_text("{}\n")
    (run / "jobs.csv").write_text("the run's\n")
    assert main(["simulate", "--trace", str(trace), *QUICK, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"alto simulate: error: --out {run}: holds an `alto run` output ({marker}); the results " \
           "would overwrite its jobs.csv and curves.csv; choose another folder" in err, err
    assert sorted(p.name for p in run.iterdir()) == sorted({marker, "jobs.csv"})
    assert (run / "jobs.csv").read_text() == "the run's\n"


def test_out_that_is_an_input_folder_is_refused(tmp_path, trace, capsys):
    """--out equal to the folder --curves recorded: reads (a file's folder too) or --replay reads."""
    curves = tmp_path / "curves"
    curves.mkdir()
    write_recorded_csv(curves / "c.csv", curve_rows("a", 0.001, 128))
    for spec in (curves, curves / "c.csv"):
        argv = ["simulate", "--trace", str(trace), *QUICK, "--curves", f"recorded:{spec}", "--out", str(curves)]
        assert main(argv) == 2
        assert f"--out {curves}: is the folder of --curves recorded:{spec}; the results would " \
               "overwrite the files read from there" in capsys.readouterr().err
    assert [p.name for p in curves.iterdir()] == ["c.csv"]
    run = fake_run(tmp_path / "run", {"a/lr0.001": "completed", "a/lr0.01": "completed"})
    assert main(["simulate", "--replay", str(run), *QUICK, "--out", str(run)]) == 2
    assert f"--out {run}: is the folder of --replay {run}" in capsys.readouterr().err
    assert not (run / "summary.json").exists()


def test_out_with_earlier_results_is_replaced_and_said(tmp_path, trace, capsys):
    out = tmp_path / "out"
    argv = ["simulate", "--trace", str(trace), *QUICK, "--out", str(out)]
    assert main(argv) == 0
    assert "replaced" not in capsys.readouterr().err
    assert main(argv) == 0
    assert f"note: --out {out}: replaced the earlier results there: summary.json, tasks.csv, jobs.csv, " \
           f"curves.csv, meta.json (trace {trace})" in capsys.readouterr().err


def test_replay_of_a_killed_run_leaves_out_unfinished_jobs(tmp_path, capsys):
    """A job gets its jobs.csv row only when it finishes: a killed run's other curves stop where
    it was cut, and were held flat to the end as if complete."""
    run = fake_run(tmp_path / "run", {"a/lr0.001": "completed"})  # a/lr0.01 never finished
    assert main(["simulate", "--replay", str(run), *QUICK, "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "note: 1 recorded job(s) did not finish in their run (interrupted, or no row in its " \
           "jobs.csv) and are left out of the curves (a/lr0.01)" in err, err
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert meta["curves_from_neighbours"] == 1  # lr 0.01 replays lr 0.001's whole curve


@pytest.mark.parametrize("finished", [None, {"a/lr0.001": "interrupted"}])
def test_replay_of_a_run_that_finished_nothing_is_an_error(tmp_path, capsys, finished):
    run = fake_run(tmp_path / "run", finished)
    assert main(["simulate", "--replay", str(run), *QUICK, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"alto simulate: error: {run / 'curves.csv'}: " in err and "the run did not finish" in err, err
    assert not (tmp_path / "o").exists()


def test_cost_table_for_a_model_not_simulated_is_reported_unused(tmp_path, trace, capsys):
    """Its rows used to be listed in cost_tables_added with nothing saying none was used."""
    table = tmp_path / "m.csv"
    table.write_text("gpu,model,kernel,n_adapters,tokens_per_step,mean_rank,step_time_s,source,date\n"
                     "H200,mistral-7b,fused,1,256,16,0.1,measured: H200 test,2026-11-29\n")
    out = tmp_path / "o"
    argv = ["simulate", "--trace", str(trace), *QUICK, "--costs", "measured", "--cost-table", str(table)]
    assert main([*argv, "--out", str(out)]) == 0
    why = "not simulated: the tasks run smollm2-135m on --gpu-type H200"
    assert f"note: --cost-table rows for H200/mistral-7b are not used ({why})" in capsys.readouterr().err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["cost_tables_added"] == [str(table)]
    assert meta["cost_tables_unused"] == {"H200/mistral-7b": why}


@pytest.mark.parametrize("policies", ["", " , "])
def test_empty_policies_is_an_error(tmp_path, trace, capsys, policies):
    """--policies "" used to run the default policies."""
    argv = ["simulate", "--trace", str(trace), "--policies", policies, "--quiet", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "alto simulate: error: --policies: no policy given" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_readme_replays_tiny_with_a_model_that_has_costs_and_help_says_why():
    """llama-tiny (configs/tiny.yaml) has no cost rows: a bare `--replay DIR` stops with an error."""
    commands = [ln.strip() for ln in README.splitlines() if ln.strip().startswith("alto simulate --replay")]
    assert commands and all("--replay-model smollm2-135m" in c for c in commands), commands
    sub = next(a for a in build_parser()._subparsers._group_actions if a.dest == "cmd").choices["simulate"]
    text = next(a.help for a in sub._actions if a.dest == "replay_model")
    assert "only if the cost tables have rows for it" in text and "--replay-model smollm2-135m" in text


def test_readme_says_tenant_edge_spaces_are_stripped():
    """traces/schema.py strips every cell on read, so edge spaces cannot make a row invalid."""
    row = next(ln for ln in README.splitlines() if ln.startswith("| `tenant` |"))
    assert "edge spaces are stripped on read" in row and "no edge spaces" not in row


@pytest.mark.parametrize("name", ["tasks.csv", "jobs.csv"])
def test_out_holding_the_trace_or_a_cost_table_under_a_result_name_is_refused(tmp_path, capsys, name):
    """A trace (or a cost table) saved as tasks.csv / jobs.csv in --out used to be replaced by
    the results, and the note called it "the earlier results"."""
    out = tmp_path / "o"
    out.mkdir()
    trace = out / name
    trace.write_text(HEADER + ROW)
    assert main(["simulate", "--trace", str(trace), *QUICK, "--out", str(out)]) == 2
    assert f"holds the file of --trace {trace} ({name})" in capsys.readouterr().err
    assert trace.read_text() == HEADER + ROW and sorted(p.name for p in out.iterdir()) == [name]
    other = tmp_path / "trace.csv"
    other.write_text(HEADER + ROW)
    table = out / name  # now a cost table, under a result file's name
    assert main(["simulate", "--trace", str(other), *QUICK, "--costs", "measured", "--cost-table", str(table),
                 "--out", str(out)]) == 2
    assert f"holds the file of --cost-table {table} ({name})" in capsys.readouterr().err


def test_the_cost_header_names_every_policy_s_kernel(tmp_path, trace, capsys):
    """It used to print the first policy's kernel's source only, as if all policies shared it."""
    assert main(["simulate", "--trace", str(trace), "--gpus", "1", "--policies", "sequential,alto",
                 "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "step costs for smollm2-135m, fused kernel: estimate: fused_v1" in err
    assert "step costs for smollm2-135m, single kernel: estimate: single_v1" in err
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert sorted(meta["cost_sources"]["smollm2-135m"]) == ["fused", "single"]


def _two_task_run(tmp_path: Path, b_rows: str) -> Path:
    """fake_run's task "a" plus a task "b" with no curve rows and jobs.csv rows ``b_rows``."""
    run = fake_run(tmp_path / "run2", {"a/lr0.001": "completed", "a/lr0.01": "underperforming"})
    meta = json.loads((run / "run.json").read_text())
    meta["tasks"].append({**meta["tasks"][0], "name": "b"})
    (run / "run.json").write_text(json.dumps(meta))
    with open(run / "jobs.csv", "a") as f:
        f.write(b_rows)
    return run


def test_replay_names_a_task_whose_configs_all_ended_before_an_evaluation(tmp_path, capsys):
    """Every config of a finished task failed (nothing fit): the run did not stop before it."""
    run = _two_task_run(tmp_path, "b,b/lr0.001,failed\nb,b/lr0.01,failed\n")
    base = ["simulate", "--replay", str(run), "--replay-model", "smollm2-135m", *QUICK]
    assert main([*base, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "every config of task(s) b ended (failed) before an evaluation: no curve to replay; " \
           "--max-tasks 1 replays the task(s) before" in err
    (tmp_path / "x").mkdir()
    run_b = _two_task_run(tmp_path / "x", "")  # task b never reached
    assert main(["simulate", "--replay", str(run_b), "--replay-model", "smollm2-135m", *QUICK,
                 "--out", str(tmp_path / "o2")]) == 2
    assert "task(s) b recorded no evaluation: the run stopped before them" in capsys.readouterr().err


def test_replay_with_other_curves_may_borrow_them(tmp_path, capsys):
    """--curves given with --replay overrides the run's curves (documented): tasks missing
    from them replay another task's, as without --replay, and are not refused."""
    run = fake_run(tmp_path / "run", {"a/lr0.001": "completed", "a/lr0.01": "underperforming"})
    other = tmp_path / "other.csv"
    write_recorded_csv(other, curve_rows("z", 0.001, 128) + curve_rows("z", 0.01, 128))
    assert main(["simulate", "--replay", str(run), "--replay-model", "smollm2-135m", "--curves",
                 f"recorded:{other}", *QUICK, "--out", str(tmp_path / "o")]) == 0
    assert "1 of 1 tasks have no recorded curves of their own and replay another task's" in capsys.readouterr().err


def test_a_replay_charges_evaluations_of_the_run_s_val_samples(tmp_path):
    """Every evaluation used to be charged at the default 64 val samples, whatever the run used."""
    run = fake_run(tmp_path / "run", {"a/lr0.001": "completed", "a/lr0.01": "underperforming"})
    meta = json.loads((run / "run.json").read_text())
    meta["tasks"][0]["val_samples"] = 4
    (run / "run.json").write_text(json.dumps(meta))
    base = ["simulate", "--replay", str(run), "--replay-model", "smollm2-135m", *QUICK]
    assert main([*base, "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["eval_samples"] == 4
