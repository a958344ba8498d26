"""Inter-task planner benchmark: plan quality (gap to bounds) and cost per plan() call.

    python3 benchmarks/bench_planner.py            # full sweep, appends to results/planner_gap.csv
    python3 benchmarks/bench_planner.py --quick    # fewer instances, prints only

Instances (seeded): `gpus` GPUs, of which running tasks hold ~75% with remaining times
~ lognormal(ln 3600 s, 1); `n_pending` pending tasks with sizes uniform on {1, 2, 4} (capped
at gpus) and worst-case durations ~ lognormal(ln 3600 s, 1), all released at now = 0.
Two workloads: "lognormal" (every task distinct) and "typed" (12 task types -- size and
duration drawn once per instance -- as in traces built from a few model x dataset
combinations; the serial SGS places runs of identical tasks in batches).

Per (planner, n_pending, gpus):
- gap_to_lb: mean over instances of (makespan - LB) / LB, LB = `makespan_lower_bound`;
- gap_to_opt (n_pending <= 6 only): mean of (makespan - OPT) / OPT, OPT from the exact
  search over serial-SGS orders (`enumerate_best_order`, checked against brute force in
  tests/policy/test_planner.py);
- median, p20, p80 of the wall time of one plan() call, in ms (time.perf_counter).
"alto" runs the exact MILP when n_pending <= 6 and gpus <= 64, else LPT; "alto-enum" is
alto with exact="enum". The number of MILP solves that hit the 2 s limit is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import scipy  # noqa: E402

from alto.policy.planner import (  # noqa: E402
    PlanTask,
    RunningTask,
    make_planner,
    makespan_lower_bound,
    plan_makespan,
)
from alto.policy.planner_exact import enumerate_best_order  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "planner_gap.csv"
COLUMNS = [
    "date", "setup", "planner", "n_pending", "gpus", "median_ms", "p20_ms", "p80_ms",
    "gap_to_lb", "gap_to_opt", "machine", "python", "numpy", "scipy",
]  # fmt: skip
SETUP = "sizes{1,2,4} dur~LN(ln3600s,1) running~75%gpus rem~LN(ln3600s,1) now=0"
PLANNERS = ["fifo", "sjf", "lpt", "lpt-greedy", "alto", "alto-enum"]


def instance(rng: np.random.Generator, n: int, gpus: int, typed: bool = False) -> tuple[list, list]:
    sizes = [g for g in (1, 2, 4) if g <= gpus]
    running, used = [], 0
    while True:
        g = int(rng.choice(sizes))
        if used + g > 0.75 * gpus:
            break
        running.append(RunningTask(f"r{len(running)}", g, float(rng.lognormal(math.log(3600), 1))))
        used += g
    if typed:
        kinds = [
            (int(rng.choice(sizes)), float(rng.lognormal(math.log(3600), 1))) for _ in range(12)
        ]
        picks = rng.integers(0, len(kinds), n)
        pending = [PlanTask(f"t{i}", *kinds[k], 0.0) for i, k in enumerate(picks)]
    else:
        pending = [
            PlanTask(f"t{i}", int(rng.choice(sizes)), float(rng.lognormal(math.log(3600), 1)), 0.0)
            for i in range(n)
        ]
    return running, pending


def optimum(gpus: int, running: list, pending: list) -> float:
    busy = [(r.expected_end_s, r.gpus) for r in running]
    tasks = [(t.gpus, t.duration_s, 0.0) for t in pending]
    order, starts = enumerate_best_order(0.0, gpus, busy, tasks)
    return max(
        [0.0] + [e for e, _ in busy] + [s + tasks[k][1] for s, k in zip(starts, order, strict=True)]
    )


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} x{os.cpu_count()}"


def run(sizes: list[tuple[int, int]], n_inst: int, reps: int, seed: int, typed: bool) -> list[dict]:
    rows = []
    for n, gpus in sizes:
        rng = np.random.default_rng([seed, n, gpus, int(typed)])
        cases = [instance(rng, n, gpus, typed) for _ in range(n_inst)]
        lbs = [makespan_lower_bound(0.0, gpus, r, p) for r, p in cases]
        opts = [optimum(gpus, r, p) for r, p in cases] if n <= 6 else None
        for name in PLANNERS:
            if name == "alto-enum" and n > 6:
                continue
            planner = (
                make_planner("alto", exact="enum") if name == "alto-enum" else make_planner(name)
            )
            times, gaps, ogaps, methods = [], [], [], Counter()
            for k, (running, pending) in enumerate(cases):
                for _ in range(reps):
                    t0 = time.perf_counter()
                    plan = planner.plan(0.0, gpus, running, pending)
                    times.append((time.perf_counter() - t0) * 1e3)
                methods[getattr(planner, "last_method", name)] += 1
                ms = plan_makespan(0.0, running, pending, plan)
                gaps.append((ms - lbs[k]) / lbs[k])
                if opts is not None:
                    ogaps.append((ms - opts[k]) / opts[k])
            row = {
                "setup": f"{'typed12' if typed else 'lognormal'} {SETUP} inst={n_inst} seed={seed}",
                "planner": name,
                "n_pending": n,
                "gpus": gpus,
                "median_ms": round(statistics.median(times), 4),
                "p20_ms": round(pct(times, 20), 4),
                "p80_ms": round(pct(times, 80), 4),
                "gap_to_lb": round(statistics.fmean(gaps), 5),
                "gap_to_opt": round(statistics.fmean(ogaps), 5) if ogaps else "",
            }
            rows.append(row)
            print(
                f"{'T' if typed else 'L'} {name:>10} P={n:<5} gpus={gpus:<5} median {row['median_ms']:>9.3f} ms "
                f"[p20 {row['p20_ms']:.3f}, p80 {row['p80_ms']:.3f}]  gap_lb {row['gap_to_lb']:.4f}"
                f"  gap_opt {row['gap_to_opt']}  {dict(methods) if name.startswith('alto') else ''}",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 instances per setup, no CSV")
    ap.add_argument("--instances", type=int, default=20, help="instances per (P, gpus)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    sizes = [(p, g) for p in (5, 10, 50, 200, 1000) for g in (8, 64, 1024)]
    n_inst = 3 if args.quick else args.instances
    reps = 1 if args.quick else 3
    rows = [r for typed in (False, True) for r in run(sizes, n_inst, reps, args.seed, typed)]
    if args.quick:
        return
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "machine": machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    append_results(args.out, COLUMNS, [{**row, **meta} for row in rows])
    print(f"appended {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
