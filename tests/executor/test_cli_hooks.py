"""`alto run` / `alto profile` through the real CLI entry point (alto.cli.main)."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from alto.cli import main


def test_alto_run_and_errors(tmp_path, capsys, base_raw):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("# alto run c.yaml --out out\n" + yaml.safe_dump(base_raw))
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "jobs.csv")))
    assert [r["exit_reason"] for r in rows] == ["completed"]
    bad = dict(base_raw, early_exit={"policy": "alto", "tau_gapp": 0.1})
    cfg.write_text(yaml.safe_dump(bad))
    assert main(["run", str(cfg), "--out", str(tmp_path / "out2")]) == 2
    assert "unknown key early_exit.tau_gapp" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()  # rejected before anything was written


def test_alto_profile_writes_cost_rows(tmp_path):
    out = tmp_path / "measured.csv"
    assert main(["profile", "--model", "random:llama-tiny", "--dtype", "float32", "--kernels", "fused,single",
                 "--adapters", "2", "--batch", "1", "--seq-len", "8", "--ranks", "4,8", "--iters", "1",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [(r["kernel"], r["n_adapters"], r["tokens_per_step"], r["mean_rank"]) for r in rows] == [
        ("fused", "2", "16", "6.0"), ("single", "1", "8", "4.0")]
    assert all(r["source"].startswith("measured: cpu ") and float(r["step_time_s"]) > 0 for r in rows)


def test_cuda_device_without_cuda_names_model_device(tmp_path, capsys, base_raw):
    """model.device: cuda on a torch without CUDA used to end in an AssertionError traceback
    from inside transformers; now exit 2 naming the key, before anything is written."""
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(dict(base_raw, model=dict(base_raw["model"], device="cuda"))))
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model.device: 'cuda' asks for CUDA" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    argv = ["profile", "--model", "random:llama-tiny", "--device", "cuda", "--out", str(tmp_path / "p.csv")]
    assert main(argv) == 2
    assert "--device: 'cuda' asks for CUDA" in capsys.readouterr().err


def test_cpu_run_without_caps_gets_a_default_batch_cap(capsys):
    """60 SmolLM2 configs on CPU with no cap filled 24 GB of RAM in one step: a CPU run with
    neither memory.max_total_batch nor max_active now admits at most 16 samples per step
    (or the grid's largest batch), and says so; a config that sets a cap keeps it."""
    import io

    from alto.executor.config import parse_config
    from alto.executor.session import CPU_DEFAULT_MAX_TOTAL_BATCH, cap_cpu_admission

    here = Path(__file__).resolve().parents[2]
    raw = {"model": "random:llama-tiny", "tasks": [{"name": "t", "data": {"jsonl": {
        "train": str(here / "configs" / "data" / "add_train.jsonl"),
        "val": str(here / "configs" / "data" / "add_val.jsonl")}},
        "search_space": {"batch_size": [2, 32]}}]}  # fmt: skip
    cfg = parse_config(raw)
    log = io.StringIO()
    cap_cpu_admission(cfg, log)
    assert cfg.memory.max_total_batch == max(CPU_DEFAULT_MAX_TOTAL_BATCH, 32) == 32
    assert "at most 32 samples train per step" in log.getvalue()
    raw["memory"] = {"max_active": 3}
    cfg = parse_config(raw)
    cap_cpu_admission(cfg, io.StringIO())
    assert cfg.memory.max_total_batch is None and cfg.memory.max_active == 3


def test_a_bad_device_string_is_a_config_error_naming_where_it_came_from(tmp_path, capsys, base_raw):
    """torch.device("gpu") used to end `alto run` / `alto profile` in a RuntimeError traceback."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base_raw))
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--device", "gpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "alto run: error: --device: 'gpu' is not a torch device" in err and "Traceback" not in err
    cfg.write_text(yaml.safe_dump(dict(base_raw, model=dict(base_raw["model"], device="cuda:x"))))
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert f"alto run: error: {cfg}: model.device: 'cuda:x' is not a torch device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["profile", "--device", "gpu", "--out", str(tmp_path / "p.csv")]) == 2
    assert "alto profile: error: --device: 'gpu' is not a torch device" in capsys.readouterr().err


def test_run_config_errors_start_with_the_file(tmp_path, capsys, base_raw):
    """Errors named the key but not the file; an empty file said ": expected a mapping, got NoneType"."""
    cfg = tmp_path / "c.yaml"
    for text, want in (("", f"{cfg}: empty file"),
                       (yaml.safe_dump(dict(base_raw, tasks=base_raw["tasks"] * 2)),
                        f"{cfg}: tasks[1].name: duplicate task name 'add'"),
                       (yaml.safe_dump(dict(base_raw, run={"log_evry": 1})), f"{cfg}: unknown key run.log_evry")):
        cfg.write_text(text)
        assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 2
        assert f"alto run: error: {want}" in capsys.readouterr().err
    cfg.unlink()  # errors that name the file already do not name it twice
    assert main(["run", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.count(str(cfg)) == 1


def test_profile_refuses_bmm_before_timing(tmp_path, capsys):
    """bmm rows were measured, then dropped ("appended 10 rows"): the simulator's cost tables
    have no bmm kernel, so it is refused before the model loads."""
    out = tmp_path / "m.csv"
    assert main(["profile", "--model", "random:llama-tiny", "--kernels", "fused,bmm", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--kernels: bmm is not profiled" in err and "no bmm kernel" in err
    assert not out.exists()


def test_profile_says_how_to_simulate_with_its_table(tmp_path, capsys):
    """--out is read by `alto simulate` only through --cost-table (it globs measured_*.csv in
    traces/profiles/, and --costs auto leaves out a table without lorafusion rows)."""
    from alto.executor.cli_hooks import simulate_hint

    out = tmp_path / "measured.csv"
    assert main(["profile", "--model", "random:llama-tiny", "--dtype", "float32", "--kernels", "single",
                 "--batch", "1", "--seq-len", "8", "--iters", "1", "--out", str(out)]) == 0
    # on CPU: llama-tiny is in no cost table and the memory fit is CUDA-only, so it says why not
    assert f"cannot use {out} yet: no memory row for cpu/llama-tiny" in capsys.readouterr().out
    h200 = tmp_path / "measured_h200.csv"
    h200.write_text("gpu,model,kernel,n_adapters,tokens_per_step,mean_rank,step_time_s,source,date\n"
                    "H200,llama-3.2-1b,single,1,1024,16,0.1,measured: H200 x,2026-01-01\n")
    assert simulate_hint(h200, "H200", "llama-3.2-1b") == (
        f"to simulate with these costs: alto simulate --cost-table {h200} --costs measured")
    h100 = tmp_path / "h100.csv"
    h100.write_text(h200.read_text().replace("H200", "H100"))
    assert simulate_hint(h100, "H100", "llama-3.2-1b").endswith("--costs measured --gpu-type H100")
    cpu = tmp_path / "cpu.csv"  # a memory row written elsewhere (--memory-out) is not read
    cpu.write_text(h200.read_text().replace("H200", "cpu"))
    assert simulate_hint(cpu, "cpu", "llama-3.2-1b", tmp_path / "elsewhere.csv") == (
        f"note: `alto simulate --cost-table {cpu}` reads memory rows from {tmp_path / 'memory_cpu.csv'} "
        f"only: append the row written to {tmp_path / 'elsewhere.csv'} there")
    hf = tmp_path / "hf.csv"
    hf.write_text(h200.read_text().replace("llama-3.2-1b", "SmolLM2-135M-Instruct"))
    assert "cannot use" in simulate_hint(hf, "H200", "SmolLM2-135M-Instruct")


def test_quiet_run_prints_no_progress_bar_of_transformers(tmp_path, capsys, monkeypatch):
    """`alto run --quiet` still showed transformers' "Writing model shards" bar (base_model/)."""
    from transformers.utils import logging as hf_logging

    import alto.executor.session as session

    seen = []
    monkeypatch.setattr(session, "run_config", lambda *a, **k: seen.append(hf_logging.is_progress_bar_enabled())
                        or type("R", (), {"interrupted": False})())
    (tmp_path / "a.jsonl").write_text('{"prompt": "1+1=", "completion": "2"}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {path: 'random:llama-tiny'}\ntasks:\n  - name: t\n    data: {jsonl: {train: a.jsonl, "
                   "val: a.jsonl}}\n    search_space: {lr: [0.001], rank: [2], batch_size: [1]}\n")
    before = hf_logging.is_progress_bar_enabled()
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert main(["run", str(cfg), "--out", str(tmp_path / "o2")]) == 0
    assert seen == [False, before] and hf_logging.is_progress_bar_enabled() == before
