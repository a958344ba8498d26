"""Simulator vs a real run: decisions and wall time of the H200 SmolLM2 search.

    python3 benchmarks/sim_vs_real.py

Replays traces/curves/smollm2_random_gsm_symbolic_h200.csv (recorded by `alto run
configs/smollm2_random_gsm.yaml` on an H200, session 18; the session-19 rerun trained every
config the same samples) through the simulator's ALTO policy and compares with the real
run's record in benchmarks/results/executor_search_h200.csv (the session-19 ALTO row, REAL_DATE):
- decisions: configs whose simulated samples-trained equal the real ones (of 60);
- time: the simulated task duration against the measured wall time, once with the
  estimated step costs and once with step costs measured from the *other* run (the full
  grid, policy none, same device call: traces/profiles/measured_h200_smollm2_runlog.csv), so
  the ALTO prediction is out of sample.
Appends rows to benchmarks/results/sim_vs_real.csv. (Until session 19 it compared the
GGUF SmolLM2 run of 2026-11-28, traces/curves/smollm2_gsm_symbolic_h200.csv, on the
executor of that day; its measured rows were replaced by the session-19 ones.)
"""

from __future__ import annotations

import csv
import datetime as dt
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from alto.policy.types import TaskSpec  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402
from sim.cluster import ClusterSim, SimConfig  # noqa: E402
from sim.cost_model import CostModel  # noqa: E402
from sim.policies import POLICIES  # noqa: E402
from sim.recorded_curves import RecordedCurves  # noqa: E402

CURVES = ROOT / "traces" / "curves" / "smollm2_random_gsm_symbolic_h200.csv"
REAL_DATE = "2026-11-30"  # the session-19 runs (ALTO and full grid in one device call)
REAL = ROOT / "benchmarks" / "results" / "executor_search_h200.csv"
OUT = ROOT / "benchmarks" / "results" / "sim_vs_real.csv"
COLUMNS = ["date", "run", "configs", "decisions_matching", "real_wall_s", "sim_s", "sim_over_real", "cost_source", "eval_samples"]


def main() -> None:
    real_samples: dict[str, int] = {}
    with open(CURVES) as f:
        for r in csv.DictReader(f):
            real_samples[r["job_id"]] = max(real_samples.get(r["job_id"], 0), int(r["samples"]))
    with open(REAL) as f:
        real = next(r for r in csv.DictReader(f) if r["mode"] == "executor policy=alto" and r["date"] == REAL_DATE)
    grid = ((1e-5, 5e-5, 2e-4, 3e-4, 5e-4), (16, 32, 64), (1, 2, 4, 8))
    task = TaskSpec("gsm_symbolic", 0.0, "t", "smollm2-135m", 1, 256, 192, 1.0, *grid)
    curves = RecordedCurves(CURVES, curve_task={"gsm_symbolic": "smollm2-random-gsm_symbolic"})
    rows = []
    # auto: the estimates (smollm2 has no complete measured table); measured: the training
    # step times read from the full-grid (policy none) run's log, its evaluation time left out,
    # traces/profiles/measured_h200_smollm2_runlog.csv; eval_samples 64 adds the simulator's
    # charge for evaluations, which the real run spent 20.0 s in
    models = {c: CostModel.from_dir(costs=c) for c in ("auto", "measured")}
    for costs, eval_samples in (("auto", 0), ("auto", 64), ("measured", 0), ("measured", 64)):
        cost = models[costs]
        (o,) = ClusterSim([task], POLICIES["alto"], SimConfig(gpus=1, eval_samples=eval_samples), cost, curves).run()
        match = sum(real_samples[j.job.job_id] == j.samples_trained for j in o.jobs)
        sim_s = o.finish_s - o.start_s
        rows.append({
            "date": dt.date.today().isoformat(), "run": "random-init smollm2-135m gsm_symbolic 60 configs alto H200 (session 19)",
            "configs": len(o.jobs), "decisions_matching": match, "real_wall_s": float(real["wall_s"]),
            "sim_s": round(sim_s, 2), "sim_over_real": round(sim_s / float(real["wall_s"]), 3),
            "cost_source": cost.source("H200", "smollm2-135m", "fused").split("(")[0].strip(), "eval_samples": eval_samples,
        })
        print(rows[-1])
    append_results(OUT, COLUMNS, rows)


if __name__ == "__main__":
    main()
