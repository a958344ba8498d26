"""`alto run` / `alto profile` through the real CLI entry point (alto.cli.main)."""

from __future__ import annotations

import csv

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
