"""End-to-end `alto` CLI: simulate writes the contract files; bad input fails cleanly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from alto.cli import main

HEADER = "task_id,arrival_s,tenant,model,gpus,dataset_size,seq_len,epochs,lrs,ranks,batch_sizes\n"
ROW_A = "a,0,t1,llama-3.1-8b,1,400,512,1,1e-05;0.0002;0.0005,16;64,2;8\n"
ROW_B = "b,600,t2,qwen2.5-32b,2,300,512,1,5e-05;0.0003,16,4;8\n"
SUMMARY_KEYS = {"makespan_s", "mean_jct_s", "p99_jct_s", "gpu_util", "gpu_hours", "samples_saved_frac", "best_regret"}


def write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_simulate_writes_summary_and_tasks(tmp_path, capsys):
    trace = write(tmp_path, HEADER + ROW_A + ROW_B)
    out = tmp_path / "out"
    rc = main(["simulate", "--trace", str(trace), "--gpus", "4", "--policies", "sequential,alto", "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"sequential", "alto"}
    for s in summary.values():
        assert SUMMARY_KEYS <= set(s)
    assert summary["sequential"]["speedup_vs_sequential"] == 1.0
    # ALTO co-locates and exits early, so it must beat one-config-at-a-time.
    assert summary["alto"]["makespan_s"] < summary["sequential"]["makespan_s"]
    assert summary["alto"]["samples_saved_frac"] > 0.5
    with open(out / "tasks.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["policy"], r["task_id"]) for r in rows) == [("alto", "a"), ("alto", "b"), ("sequential", "a"), ("sequential", "b")]
    table = capsys.readouterr().out
    assert "speedup" in table and "alto" in table


def _readme_default_table() -> dict[str, list[str]]:
    """policy -> cells of the README's table of `alto simulate` on the default trace."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text[text.index("**`alto simulate` on the default trace**"):]
    rows = [ln for ln in block.split("\n\n")[1].splitlines() if ln.startswith("| ")][1:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in ln.strip("|").split("|")] for ln in rows)}


def test_simulate_default_trace_matches_readme(tmp_path):
    """The quickstart's `alto simulate` (bundled paper-11 trace, every default policy) prints
    what the README's results table says: makespan, speed-up, mean JCT, GPU-hours, saved
    samples and regret, to the README's rounding (the table once drifted from the output)."""
    out = tmp_path / "out"
    assert main(["simulate", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    table = _readme_default_table()
    assert set(table) == set(summary) == {"sequential", "mlora", "lorafusion", "alto"}
    for policy, s in summary.items():
        assert s["tasks"] == 11 and s["tasks_without_result"] == 0
        got = [f"{s['makespan_s'] / 3600:.1f}", f"{s['speedup_vs_sequential']:.2f}×",
               f"{s['mean_jct_s'] / 3600:.1f}", f"{s['gpu_hours']:.0f}",
               f"{s['samples_saved_frac']:.0%}", f"{s['best_regret']:.2%}"]  # fmt: skip
        assert table[policy] == got, policy


@pytest.mark.parametrize(
    "body, row, field",
    [
        (HEADER + ROW_A + "b,600,t2,qwen2.5-32b,2,-300,512,1,5e-05,16,4\n", 2, "dataset_size"),
        (HEADER + ROW_A + "b,600,t2,gpt-5,2,300,512,1,5e-05,16,4\n", 2, "model"),
        (HEADER + ROW_A + "b,abc,t2,qwen2.5-32b,2,300,512,1,5e-05,16,4\n", 2, "arrival_s"),
        (HEADER + ROW_A + "b,600,t2,qwen2.5-32b,2,300\n", 2, None),  # truncated row
        (HEADER + ROW_A + "b,1.7e18,t2,qwen2.5-32b,2,300,512,1,5e-05,16,4\n", 2, "arrival_s"),  # ns
    ],
)
def test_bad_trace_names_file_row_field_and_writes_nothing(tmp_path, capsys, body, row, field):
    trace = write(tmp_path, body)
    out = tmp_path / "out"
    assert main(["simulate", "--trace", str(trace), "--gpus", "4", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(trace) in err and f"row {row}" in err
    if field:
        assert f"'{field}'" in err
    assert not (out / "summary.json").exists() and not (out / "tasks.csv").exists()


def test_trace_that_is_a_folder_or_not_utf8_is_named(tmp_path, capsys):
    assert main(["simulate", "--trace", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert f"{tmp_path}: a folder, not a trace file" in capsys.readouterr().err
    bad = tmp_path / "latin1.csv"
    bad.write_bytes((HEADER + ROW_A).encode() + b"b,600,t\xe9,qwen2.5-32b,2,300,512,1,5e-05,16,4\n")
    assert main(["simulate", "--trace", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: not UTF-8 text" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_task_larger_than_cluster_and_empty_trace(tmp_path, capsys):
    trace = write(tmp_path, HEADER + ROW_A + ROW_B)
    assert main(["simulate", "--trace", str(trace), "--gpus", "1", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'gpus'" in err and "row 2" in err
    empty = write(tmp_path, HEADER, "empty.csv")
    assert main(["simulate", "--trace", str(empty), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "empty" in capsys.readouterr().err.lower()
    assert not (tmp_path / "o" / "summary.json").exists()


def test_unknown_policy_is_rejected(capsys):
    assert main(["simulate", "--policies", "alto,magic", "--quiet"]) == 2
    assert "magic" in capsys.readouterr().err


def test_trace_synth_is_deterministic(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["trace", "synth", "--tasks", "7", "--seed", "3", "--out", str(a)]) == 0
    assert main(["trace", "synth", "--tasks", "7", "--seed", "3", "--out", str(b)]) == 0
    assert a.read_text() == b.read_text()
    assert len(a.read_text().strip().splitlines()) == 8


def test_figures_from_results(tmp_path):
    trace = write(tmp_path, HEADER + ROW_A + ROW_B)
    out = tmp_path / "out"
    assert main(["simulate", "--trace", str(trace), "--gpus", "4", "--policies", "mlora,alto", "--out", str(out), "--quiet"]) == 0
    assert main(["figures", str(out)]) == 0
    names = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert names == ["gantt_alto.png", "gantt_mlora.png", "makespan.png", "savings.png", "trajectories.png"]
    assert all((out / "figures" / n).stat().st_size > 5000 for n in names)
    # a later run of other policies into the same folder: the old Gantt charts go
    assert main(["simulate", "--trace", str(trace), "--gpus", "4", "--policies", "alto", "--out", str(out), "--quiet"]) == 0
    assert main(["figures", str(out)]) == 0
    assert sorted(p.name for p in (out / "figures").glob("gantt_*.png")) == ["gantt_alto.png"]


def _results(tmp_path) -> Path:
    out = tmp_path / "res"
    trace = write(tmp_path, HEADER + ROW_A)
    assert main(["simulate", "--trace", str(trace), "--gpus", "2", "--policies", "alto", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.mark.parametrize(("name", "text", "needle"), [
    ("summary.json", "[1, 2]", "summary.json: expected an object with one entry per policy"),
    ("summary.json", "{", "summary.json: not valid JSON"),
    ("summary.json", '{"alto": {"samples_total": 5, "samples_saved_by_reason": {}}}', "summary.json: alto.makespan_s: missing"),
    ("tasks.csv", "", "tasks.csv: not a readable CSV"),
    ("tasks.csv", "policy,gpus,gpu_ids,start,finish_s\nalto,1,0,0,5\n", "tasks.csv: missing column(s) start_s"),
    ("curves.csv", "x,y\n1,2\n", "curves.csv: missing column(s) policy, task_id"),
])  # fmt: skip
def test_figures_reject_bad_result_files_naming_file_and_field(tmp_path, capsys, name, text, needle):
    """Every input is checked before the first figure is drawn: exit 2, one line naming the
    file and the field, no figure written (these used to raise tracebacks after drawing some)."""
    out = _results(tmp_path)
    (out / name).write_text(text)
    assert main(["figures", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (out / "figures").exists()


@pytest.mark.parametrize("cmd", ["simulate", "figures", "run"])
def test_out_that_is_a_file_is_a_clear_error_before_any_work(tmp_path, capsys, cmd):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    args = {"simulate": ["simulate", "--quiet", "--out", str(afile)],
            "figures": ["figures", str(_results(tmp_path)), "--out", str(afile)],
            "run": ["run", "configs/tiny.yaml", "--out", str(afile), "--quiet"]}[cmd]  # fmt: skip
    assert main(args) == 2
    assert f"--out {afile}: exists and is not a folder" in capsys.readouterr().err
    assert afile.read_text() == "keep"


OPENB = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
    # rows as in alibaba/clusterdata cluster-trace-gpu-v2023 csv/openb_pod_list_default.csv
    "openb-pod-0017,88000,327680,8,1000,,Burstable,Succeeded,9437497,10769854,9437497\n"
    "openb-pod-0022,4000,15258,1,220,,BE,Running,9679175,9973826,9679175\n"
    "openb-pod-0056,12000,49152,1,1000,,LS,Succeeded,9999740,9999855,9999740\n"
)


def test_public_trace_converts_and_simulates(tmp_path):
    pods = write(tmp_path, OPENB, "openb_pod_list_default.csv")
    native = tmp_path / "converted.csv"
    assert main(["trace", "convert", str(pods), "--trace-format", "openb", "--out", str(native)]) == 0
    text = native.read_text().splitlines()
    # 8 GPUs are capped to 4 (a 70B task); the 0.22-GPU pod becomes 1 GPU; arrivals from 0
    assert [line.split(",")[:5] for line in text[1:]] == [
        ["openb-pod-0017", "0", "Burstable", "llama-3.1-70b", "4"],
        ["openb-pod-0022", "241678", "BE", "llama-3.1-8b", "1"],
        ["openb-pod-0056", "562243", "LS", "llama-3.1-8b", "1"],
    ]
    out = tmp_path / "out"
    rc = main(["simulate", "--trace", str(pods), "--trace-format", "openb", "--gpus", "8",
               "--policies", "alto", "--out", str(out), "--quiet"])
    assert rc == 0
    assert json.loads((out / "summary.json").read_text())["alto"]["tasks"] == 3


def test_convert_refuses_to_replace_its_input_and_output_mode_is_the_umask_default(tmp_path, capsys):
    """`trace convert X --out X` used to replace the public trace with native rows. Written
    traces get the mode a plain file would (mkstemp's 0600 used to stay)."""
    import os
    import stat

    pods = write(tmp_path, OPENB, "openb_pod_list_default.csv")
    assert main(["trace", "convert", str(pods), "--trace-format", "openb", "--out", str(pods)]) == 2
    assert "is the input trace" in capsys.readouterr().err
    assert pods.read_text() == OPENB
    native = tmp_path / "converted.csv"
    umask = os.umask(0o022)
    try:
        assert main(["trace", "convert", str(pods), "--trace-format", "openb", "--out", str(native)]) == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE(native.stat().st_mode) == 0o644
    native.chmod(0o640)  # rewriting an existing file keeps its mode
    before = native.read_text()
    native.write_text("precious\n")  # an existing --out is replaced only with --overwrite
    assert main(["trace", "convert", str(pods), "--trace-format", "openb", "--out", str(native)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and native.read_text() == "precious\n"
    assert main(["trace", "convert", str(pods), "--trace-format", "openb", "--out", str(native),
                 "--overwrite"]) == 0
    assert stat.S_IMODE(native.stat().st_mode) == 0o640 and native.read_text() == before


def test_a_policy_listed_twice_is_rejected(tmp_path, capsys):
    assert main(["simulate", "--policies", "alto,alto", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "--policies: 'alto' is listed twice" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "needle"), [
    (["--adapters", "0"], "--adapters: expected integers >= 1"),
    (["--ranks", "0"], "--ranks: expected integers >= 1"),
    (["--batch", "x"], "--batch: expected comma-separated integers"),
    (["--seq-len", "0"], "--seq-len: expected an integer >= 1"),
    (["--iters", "0"], "--iters: expected an integer >= 1"),
    (["--kernels", "loop,bogus"], "--kernels: unknown bogus"),
])  # fmt: skip
def test_profile_options_are_checked_before_anything_loads(tmp_path, capsys, args, needle):
    """These used to raise tracebacks, or write rows the simulator rejects, after the model
    had loaded and the timing had run."""
    out = tmp_path / "p.csv"
    argv = ["profile", "--model", "random:llama-tiny", "--device", "cpu", "--out", str(out), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not out.exists()


def test_profile_out_with_another_header_is_refused_before_timing(tmp_path, capsys):
    out = write(tmp_path, "a,b\n1,2\n", "p.csv")
    assert main(["profile", "--model", "random:llama-tiny", "--device", "cpu", "--out", str(out)]) == 2
    assert f"{out}: header ['a', 'b'] is not" in capsys.readouterr().err
    assert out.read_text() == "a,b\n1,2\n"


def test_recorded_curves_say_which_tasks_borrow_and_seed_needs_parametric(tmp_path, capsys):
    """Trace tasks with no recorded curves of their own replay another task's, and configs
    with none of their own a neighbour's: both said on stderr (even with --quiet) and kept
    in meta.json. --seed with --curves used to be ignored silently."""
    from sim.recorded_curves import RECORDED_COLUMNS, write_recorded_csv

    rows = [dict(zip(RECORDED_COLUMNS, ("a", "j", 1e-5, 16, 2, s, 200, 2.0 - s / 200, 2.1 - s / 200,
                                        "synthetic: test"), strict=True)) for s in (0, 100, 200)]  # fmt: skip
    curves = tmp_path / "curves.csv"
    write_recorded_csv(curves, rows)
    trace = write(tmp_path, HEADER + ROW_A + ROW_B)
    out = tmp_path / "out"
    argv = ["simulate", "--trace", str(trace), "--gpus", "4", "--policies", "alto", "--curves",
            f"recorded:{curves}", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "note: 1 of 2 tasks have no recorded curves of their own and replay another task's (b -> a)" in err
    # only (1e-5, 16, 2) is recorded: the other 11 + 4 configs of a and b replay it
    assert "note: 15 config(s) have no recorded curve of their own (lr, rank, batch)" in err
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["curves_borrowed"], meta["curves_from_neighbours"]) == ({"b": "a"}, 15)
    assert main([*argv, "--seed", "3"]) == 2
    assert "--seed: seeds the default parametric curves only" in capsys.readouterr().err


def test_unknown_names_are_user_errors_and_other_key_errors_are_bugs(tmp_path, capsys, monkeypatch):
    """An unknown GPU type (UnknownNameError) is one line and exit 2; a KeyError from a bug
    is no longer dressed up as a user error (it used to print just "error: 'makespan_s'")."""
    assert main(["simulate", "--gpu-type", "A100", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "unknown gpu 'A100'" in capsys.readouterr().err
    import sim.cli_simulate

    def buggy(a):
        return {}["makespan_s"]

    monkeypatch.setattr(sim.cli_simulate, "simulate_main", buggy)
    with pytest.raises(KeyError, match="makespan_s"):
        main(["simulate", "--out", str(tmp_path / "o"), "--quiet"])


def test_early_exit_settings_from_a_run_config(tmp_path, capsys):
    """--early-exit takes an `alto run` config's early_exit section (checked as alto run
    checks it), records it in meta.json and changes the decisions; bad files are named."""
    trace = write(tmp_path, HEADER + ROW_A)
    run_cfg = tmp_path / "run.yaml"
    run_cfg.write_text("early_exit: {policy: alto, warmup_frac: 0.5, keep_ratio: 0.5}\n")
    base = ["simulate", "--trace", str(trace), "--gpus", "2", "--policies", "alto", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "paper")]) == 0
    assert main([*base, "--early-exit", str(run_cfg), "--out", str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["early_exit"]["warmup_frac"] == 0.5 and meta["early_exit"]["keep_ratio"] == 0.5
    assert meta["early_exit_from"] == str(run_cfg)
    paper = json.loads((tmp_path / "paper" / "summary.json").read_text())["alto"]
    late = json.loads((tmp_path / "run" / "summary.json").read_text())["alto"]
    assert late["samples_saved_frac"] < paper["samples_saved_frac"]  # a later, looser cutoff
    run_cfg.write_text("early_exit: {policy: asha}\n")  # a policy none of the simulated ones uses
    assert main([*base, "--early-exit", str(run_cfg), "--out", str(tmp_path / "asha")]) == 0
    assert "the run's early-exit policy is 'asha', which none of the simulated policies uses" \
        in capsys.readouterr().err
    run_cfg.write_text("early_exit: {keep_ratio: 2.0}\n")
    assert main([*base, "--early-exit", str(run_cfg), "--out", str(tmp_path / "x")]) == 2
    assert f"--early-exit {run_cfg}: early_exit:" in capsys.readouterr().err
    run_cfg.write_text("model: x\n")
    assert main([*base, "--early-exit", str(run_cfg), "--out", str(tmp_path / "x")]) == 2
    assert "no early_exit section" in capsys.readouterr().err


def test_admission_caps_from_a_run_config(tmp_path, capsys):
    """--admission-from caps every task's co-located configs as the run's memory section
    does: with max_active 1 each task trains one config at a time (a longer
    makespan), and it is recorded in meta.json; a cap below a task's batch sizes is said (those configs
    fail), and a bad memory section names the file and key."""
    trace = write(tmp_path, HEADER + ROW_A)
    run_cfg = tmp_path / "run.yaml"
    base = ["simulate", "--trace", str(trace), "--gpus", "2", "--policies", "alto", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "free")]) == 0
    run_cfg.write_text("memory: {max_active: 1}\n")
    assert main([*base, "--admission-from", str(run_cfg), "--out", str(tmp_path / "one")]) == 0
    meta = json.loads((tmp_path / "one" / "meta.json").read_text())
    assert meta["admission"] == {"max_total_batch": None, "max_active": 1, "from": str(run_cfg)}
    free = json.loads((tmp_path / "free" / "summary.json").read_text())["alto"]
    one = json.loads((tmp_path / "one" / "summary.json").read_text())["alto"]
    assert one["makespan_s"] > free["makespan_s"]
    run_cfg.write_text("memory: {max_total_batch: 4}\n")  # ROW_A has batch sizes 2 and 8
    assert main([*base, "--admission-from", str(run_cfg), "--out", str(tmp_path / "cap")]) == 0
    assert "max_total_batch 4 is below the largest batch size of 1 task(s) (a)" in capsys.readouterr().err
    cap = json.loads((tmp_path / "cap" / "summary.json").read_text())["alto"]
    assert cap["configs_failed"] == 6  # 3 lrs x 2 ranks at batch 8
    run_cfg.write_text("memory: {max_active: 0}\n")
    assert main([*base, "--admission-from", str(run_cfg), "--out", str(tmp_path / "x")]) == 2
    assert f"--admission-from {run_cfg}: memory.max_active" in capsys.readouterr().err


def test_measured_cost_table_from_alto_profile_is_used(tmp_path, capsys):
    """--cost-table adds an `alto profile --out` table (and its memory_ table beside it) to
    the bundled ones: with --costs measured its rows price the task (twice the step time,
    twice the makespan here: every step is priced at its rows), and meta.json names them.
    Estimate rows in such a table, a missing file and --costs estimate are refused."""
    trace = write(tmp_path, HEADER + "s,0,t,mistral-7b,1,64,256,1,0.0002,16,1;2\n")
    cols = "gpu,model,kernel,n_adapters,tokens_per_step,mean_rank,step_time_s,source,date\n"
    def table(scale, source="measured: H200 test"):
        rows = [f"H200,mistral-7b,{k},{n},{t},16,{scale * (0.1 + 0.001 * n)},{source},2026-11-29\n"
                for k in ("fused", "single") for n in ((1,) if k == "single" else (1, 2, 4))
                for t in (256, 1024, 4096)]
        return write(tmp_path, cols + "".join(rows), f"m{scale}.csv")
    base = ["simulate", "--trace", str(trace), "--gpus", "1", "--policies", "alto", "--costs", "measured",
            "--quiet"]
    for scale in (1, 2):
        assert main([*base, "--cost-table", str(table(scale)), "--out", str(tmp_path / f"o{scale}")]) == 0
    meta = json.loads((tmp_path / "o1" / "meta.json").read_text())
    assert meta["cost_tables_added"] == [str(tmp_path / "m1.csv")]
    assert meta["cost_sources"]["mistral-7b"]["fused"] == "measured: H200 test"
    one, two = (json.loads((tmp_path / f"o{s}" / "summary.json").read_text())["alto"] for s in (1, 2))
    assert two["makespan_s"] > 1.5 * one["makespan_s"]
    # under the default --costs auto the table lacks the loop and lorafusion kernels (alto
    # profile cannot measure lorafusion), so auto keeps the estimates and says why
    assert main([*base[:-3], "--quiet", "--cost-table", str(table(2)), "--out", str(tmp_path / "auto")]) == 0
    assert "rows for H200/mistral-7b are not used under --costs auto: they lack kernel(s) loop, lorafusion" \
        in capsys.readouterr().err
    meta = json.loads((tmp_path / "auto" / "meta.json").read_text())
    assert meta["cost_tables_unused"] == {"H200/mistral-7b": "lacks loop, lorafusion (--costs auto)"}
    assert meta["cost_sources"]["mistral-7b"]["fused"].startswith("estimate")
    neg = write(tmp_path, cols + "H200,mistral-7b,fused,1,256,16,-1,measured: x,2026-11-29\n", "neg.csv")
    assert main([*base, "--cost-table", str(neg), "--out", str(tmp_path / "x")]) == 2
    assert f"{neg}: row 1: step row" in capsys.readouterr().err
    bad = table(3, source="estimate: mine")
    assert main([*base, "--cost-table", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "extra cost tables hold measured rows" in capsys.readouterr().err
    assert main([*base, "--cost-table", str(tmp_path / "none.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "none.csv" in capsys.readouterr().err
    assert main([*base[:-3], "--costs", "estimate", "--quiet", "--cost-table", str(table(1)),
                 "--out", str(tmp_path / "x")]) == 2


def test_configs_that_never_fit_are_not_counted_as_saved(tmp_path, capsys):
    """A config that fits no GPU's memory ends `failed` without training. Its samples used to
    count as "saved by early exit" (80 % here); now they are reported apart."""
    big = "big,0,t,llama-3.1-8b,1,400,131072,1,1e-4,64,64\n"  # 131k-token rows of batch 64: no fit
    small = "ok,10,t,llama-3.1-8b,1,100,512,1,1e-4,16,2\n"
    trace = write(tmp_path, HEADER + big + small)
    out = tmp_path / "o"
    assert main(["simulate", "--trace", str(trace), "--gpus", "2", "--policies", "alto", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())["alto"]
    assert (s["samples_saved_frac"], s["samples_saved_by_reason"]) == (0.0, {})
    assert (s["samples_failed"], s["configs_failed"], s["tasks_without_result"]) == (400, 1, 1)
    assert "note: alto: 1 config(s) fit no GPU's memory and never ran (400 samples" in capsys.readouterr().out


def test_learning_rates_that_print_alike_are_rejected_with_file_row_field(tmp_path, capsys):
    """0.0001 and 0.00010000001 both become `lr0.0001` in job ids: the trace check used to pass
    and the simulation to die with "duplicate job_id in jobs", naming nothing."""
    trace = write(tmp_path, HEADER + "t1,0,a,llama-3.1-8b,1,100,1024,1,0.0001;0.00010000001,16,2\n")
    assert main(["simulate", "--trace", str(trace), "--gpus", "1", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(trace) in err and "row 1" in err and "'lrs'" in err and "print alike (0.0001" in err


def test_trace_out_in_a_missing_folder_or_a_folder_is_named(tmp_path, capsys):
    """These used to name mkstemp's temporary file ("Is a directory: /tmp/.x.k8u0b5j9.tmp")."""
    for out, problem in ((tmp_path / "nodir" / "x.csv", f"folder {tmp_path / 'nodir'} does not exist"),
                         (tmp_path, "is a folder; expected a file to write")):  # fmt: skip
        assert main(["trace", "synth", "--tasks", "3", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out}: {problem}" in err and ".tmp" not in err


def test_sequential_speedup_is_one_even_when_nothing_could_run(tmp_path):
    trace = write(tmp_path, HEADER + "big,0,t,llama-3.1-8b,1,400,131072,1,1e-4,64,64\n")
    out = tmp_path / "o"
    assert main(["simulate", "--trace", str(trace), "--gpus", "1", "--policies", "sequential,alto",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    s = json.loads((out / "summary.json").read_text())
    assert s["sequential"]["makespan_s"] == 0.0 and s["sequential"]["speedup_vs_sequential"] == 1.0
    assert s["alto"]["speedup_vs_sequential"] is None  # 0 / 0


def test_convert_and_simulate_say_what_the_converter_dropped_or_capped(tmp_path, capsys):
    """A converter's dropped rows and 8-GPU jobs mapped to 4 GPUs used to go unsaid."""
    pods = write(tmp_path, OPENB + "openb-pod-0099,0,0,0,0,,BE,Succeeded,9999800,9999900,9999800\n",
                 "openb_pod_list_default.csv")
    native = tmp_path / "converted.csv"
    assert main(["trace", "convert", str(pods), "--trace-format", "openb", "--out", str(native)]) == 0
    out = capsys.readouterr().out
    assert "converted 3 tasks" in out and "dropped 1 row(s) (cpu_only: 1)" in out
    assert "1 job(s) of more than 4 GPUs mapped to 4-GPU tasks" in out
    sim = tmp_path / "sim"
    assert main(["simulate", "--trace", str(pods), "--trace-format", "openb", "--gpus", "8",
                 "--policies", "alto", "--out", str(sim), "--quiet"]) == 0
    assert "dropped 1 row(s) (cpu_only: 1)" in capsys.readouterr().err
    meta = json.loads((sim / "meta.json").read_text())
    assert meta["trace_conversion"] == {"cpu_only": 1, "kept": 3, "capped_to_4_gpus": 1}


def test_figures_on_a_run_folder_says_how_to_get_results(tmp_path, capsys):
    """It used to suggest `alto simulate --out RUN_DIR`, which simulate refuses for run folders."""
    (tmp_path / "run.json").write_text("{}")
    assert main(["figures", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"an `alto run` folder, not simulation results; run `alto simulate --replay {tmp_path} --out DIR`" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["figures", str(empty)]) == 2
    assert f"no summary.json here; run `alto simulate --out {empty}` first" in capsys.readouterr().err
