"""Simulator throughput benchmark (a benchmark, not a timed test).

    python3 benchmarks/bench_sim.py                 # 10,000 tasks on 1,024 GPUs + scaling sweep
    python3 benchmarks/bench_sim.py --quick         # smaller sweep

Measures, for the ALTO cluster policy on synthetic traces (`traces.synth.synth_trace`,
paper search spaces):
- wall seconds to simulate 10,000 tasks on 1,024 GPUs (target < 60 s on a 2-core machine);
- events per second at 128, 1,024 and 8,192 GPUs with the arrival rate scaled with the
  cluster (same offered load per GPU), so cost per event can be compared across sizes;
- the planner's share of wall time (plan() calls are timed by wrapping the planner).
Events = arrivals + task starts + loss reports (evaluations). Task training is simulated
up front in one process per core (identical results to one process).
Appends one CSV row per run to benchmarks/results/sim_perf.csv.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import simpy  # noqa: E402

from benchmarks.results_csv import append_results  # noqa: E402
from sim.cluster import ClusterSim, SimConfig  # noqa: E402
from sim.cost_model import CostModel  # noqa: E402
from sim.loss_curves import make_curve_source  # noqa: E402
from sim.policies import POLICIES  # noqa: E402
from traces.synth import synth_trace  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "sim_perf.csv"
COLUMNS = ["date", "setup", "policy", "tasks", "gpus", "rate_per_hour", "workers", "wall_s", "events", "events_per_s",
           "us_per_event", "planner_calls", "planner_s", "planner_share", "makespan_h", "machine", "python", "simpy", "numpy"]


def run_once(n_tasks: int, gpus: int, rate_per_hour: float, policy: str = "alto", seed: int = 0, workers: int = 0) -> dict:
    tasks = synth_trace(n_tasks, seed, rate_per_hour=rate_per_hour)
    cost, curves = CostModel.from_dir(), make_curve_source(f"parametric:{seed}")
    sim = ClusterSim(tasks, POLICIES[policy], SimConfig(gpus=gpus, keep_history_tasks=0, workers=workers), cost, curves)
    inner, spent = sim.planner.plan, [0.0]

    def timed_plan(*a, **k):
        t0 = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t0

    sim.planner.plan = timed_plan
    t0 = time.perf_counter()
    outcomes = sim.run()
    wall = time.perf_counter() - t0
    makespan = max(o.finish_s for o in outcomes) - min(o.arrival_s for o in outcomes)
    return {
        "date": dt.date.today().isoformat(), "setup": f"synth seed {seed}, paper grids", "policy": policy,
        "tasks": n_tasks, "gpus": gpus, "rate_per_hour": rate_per_hour, "workers": workers or os.cpu_count(), "wall_s": round(wall, 2),
        "events": sim.n_events, "events_per_s": round(sim.n_events / wall), "us_per_event": round(1e6 * wall / sim.n_events, 1),
        "planner_calls": sim.planner_calls, "planner_s": round(spent[0], 3), "planner_share": round(spent[0] / wall, 3),
        "makespan_h": round(makespan / 3600, 1), "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "python": platform.python_version(), "simpy": simpy.__version__, "numpy": np.__version__,
    }


def append(rows: list[dict]) -> None:
    append_results(OUT, COLUMNS, rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    # ALTO spends ~78 GPU-hours per synthetic task (measured: 300 tasks, no queueing), so
    # 0.0109 arrivals per GPU-hour offers ~85% load at every cluster size.
    ap.add_argument("--rate-per-gpu-hour", type=float, default=0.0109,
                    help="arrivals per hour per GPU (the offered load per GPU is kept constant)")
    a = ap.parse_args()
    plan = [(300, 128), (600, 1024)] if a.quick else [(10_000, 1024), (2_000, 128), (10_000, 8192)]
    rows = []
    for n, g in plan:
        row = run_once(n, g, a.rate_per_gpu_hour * g)
        print(", ".join(f"{k}={row[k]}" for k in ("tasks", "gpus", "wall_s", "events", "events_per_s", "us_per_event", "planner_share", "makespan_h")), flush=True)
        rows.append(row)
    append(rows)


if __name__ == "__main__":
    main()
