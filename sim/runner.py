"""Run one trace under several cluster policies and collect the result tables.

`simulate_policies` is what `alto simulate` calls; tests and benchmarks call it too.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from alto.policy.types import TaskSpec
from sim.cluster import ClusterSim, SimConfig
from sim.cost_model import CostModel
from sim.loss_curves import CurveSource
from sim.metrics import TaskOutcome, summarize
from sim.policies import ClusterPolicy
from sim.results import curve_rows, job_rows, task_rows


@dataclass
class PolicyRun:
    policy: ClusterPolicy
    outcomes: list[TaskOutcome]
    summary: dict
    events: list[tuple[float, str]]
    wall_s: float  # wall-clock seconds the simulation took (a measurement of the simulator)
    planner_calls: int


def simulate_policies(
    tasks: Sequence[TaskSpec],
    policies: Sequence[ClusterPolicy],
    cfg: SimConfig,
    cost: CostModel,
    curves: CurveSource,
    progress: Callable[[str, int, int, float], None] | None = None,
) -> list[PolicyRun]:
    """Simulate `tasks` once per policy; summaries gain speedup_vs_sequential when it ran."""
    runs = []
    for pol in policies:
        cb = (lambda done, total, now, _n=pol.name: progress(_n, done, total, now)) if progress else None
        sim = ClusterSim(tasks, pol, cfg, cost, curves, progress=cb)
        t0 = time.perf_counter()  # measures the simulator itself, never fed to a policy
        outcomes = sim.run()
        wall = time.perf_counter() - t0
        runs.append(PolicyRun(pol, outcomes, summarize(outcomes, cfg.gpus), sim.events, wall, sim.planner_calls))
    seq = next((r for r in runs if r.policy.name == "sequential"), None)
    for r in runs:
        r.summary["speedup_vs_sequential"] = (
            1.0 if r is seq  # (also when its makespan is 0: every config failed to fit)
            else seq.summary["makespan_s"] / r.summary["makespan_s"] if seq and r.summary["makespan_s"] > 0
            else None
        )
    return runs


def result_tables(runs: Sequence[PolicyRun], meta: dict) -> tuple[dict, list, list, list, dict]:
    """(summary, task rows, job rows, curve rows, meta) ready for sim.results.write_results."""
    summary = {r.policy.name: {**r.summary, "policy": asdict(r.policy)} for r in runs}
    tasks = [row for r in runs for row in task_rows(r.policy.name, r.outcomes)]
    jobs = [row for r in runs for row in job_rows(r.policy.name, r.outcomes)]
    curves = [row for r in runs for row in curve_rows(r.policy.name, r.outcomes)]
    meta = {
        **meta,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sim_wall_s": {r.policy.name: round(r.wall_s, 3) for r in runs},
    }
    return summary, tasks, jobs, curves, meta


def format_table(runs: Sequence[PolicyRun]) -> str:
    """Policy x metrics table, with the speedup over Sequential, as printed by the CLI."""
    head = f"{'policy':<17}{'makespan h':>11}{'speedup':>9}{'mean JCT h':>11}{'p99 JCT h':>10}{'queue h':>9}{'GPU util':>9}{'GPU-h':>9}{'saved':>7}{'regret':>8}"
    lines = [head, "-" * len(head)]
    for r in runs:
        s = r.summary
        sp = s.get("speedup_vs_sequential")
        regret = f"{s['best_regret']:.2%}" if math.isfinite(s["best_regret"]) else "n/a"
        lines.append(
            f"{r.policy.name:<17}{s['makespan_s'] / 3600:>11.2f}{(f'{sp:.2f}x' if sp else '-'):>9}"
            f"{s['mean_jct_s'] / 3600:>11.2f}{s['p99_jct_s'] / 3600:>10.2f}{s['mean_queue_s'] / 3600:>9.2f}"
            f"{s['gpu_util']:>9.1%}{s['gpu_hours']:>9.1f}{s['samples_saved_frac']:>7.0%}"
            f"{regret:>8}"
        )
    return "\n".join(lines)


def stderr_progress(name: str, done: int, total: int, now_s: float) -> None:
    """Progress line per policy: a carriage-return line on a terminal, ~10 lines otherwise.

    now_s is NaN during the first phase (each task's training simulated up front)."""
    step = max(1, total // 10)
    what = "tasks' training simulated" if math.isnan(now_s) else f"tasks done, simulated {now_s / 3600:8.2f} h"
    line = f"  {name:<17} {done:>6}/{total} {what}"
    if sys.stderr.isatty():
        print("\r" + line, end="\n" if done == total else "", file=sys.stderr, flush=True)
    elif done == total or done % step == 0:
        print(line, file=sys.stderr, flush=True)
