"""The real-search report (benchmarks/bench_executor.py search_summary): which adapter a run
returns and its regret against the full grid, on hand-made job tables."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COLS = ["job_id", "batch_size", "total_samples", "samples_trained", "exit_reason", "best_val_loss",
        "final_val_loss"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_executor", ROOT / "benchmarks" / "bench_executor.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(d: Path, jobs: list[tuple], wall: float) -> str:
    d.mkdir()
    with open(d / "jobs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLS)
        w.writerows(jobs)
    meta = dict(wall_s=wall, impl="fused", gpu="H200", torch="t", triton="tr", transformers="tf", date="d")
    (d / "wall.json").write_text(json.dumps(meta))
    return str(d)


def test_regret_uses_final_or_kept_loss_and_ignores_early_exits(tmp_path, bench):
    grid = _run(tmp_path / "none", [
        ("a", 1, 100, 100, "completed", 1.90, 2.00),  # answer = final 2.00
        ("b", 2, 100, 100, "completed", 1.95, 1.95),  # the grid's best
        ("c", 1, 100, 100, "divergence", 1.00, float("nan")),  # never an answer
    ], wall=50.0)
    alto = _run(tmp_path / "alto", [
        ("a", 1, 100, 100, "overfitting", 1.99, 2.30),  # kept best-val weights: answer 1.99
        ("b", 2, 100, 10, "underperforming", 1.50, 1.50),  # stopped early: not an answer
        ("c", 1, 100, 4, "divergence", 1.00, float("nan")),
    ], wall=20.0)
    peft = tmp_path / "peft.json"
    peft.write_text(json.dumps(dict(seconds_per_job={"1": 10.0, "2": 4.0}, gpu="H200", torch="t",
                                    triton="tr", transformers="tf", date="d")))
    rows = bench.search_summary({"alto": alto, "none": grid}, str(peft), str(tmp_path / "out.csv"))
    by = {r["mode"]: r for r in rows}
    assert by["executor policy=none"]["best_job"] == "b" and by["executor policy=none"]["regret_vs_grid"] == "0.0000%"
    a = by["executor policy=alto"]
    assert a["best_job"] == "a" and a["best_val_loss"] == "1.99000"
    assert a["regret_vs_grid"] == f"{(1.99 - 1.95) / 1.95:.4%}"  # 2.0513%
    assert a["samples_trained"] == 114 and a["samples_full_grid"] == 300
    # sequential PEFT: per-batch-size job time x configs of that batch size (2 x b1, 1 x b2)
    assert by["sequential HF PEFT"]["wall_s"] == "24.0"
    assert "EXTRAPOLATED" in by["sequential HF PEFT"]["note"]
