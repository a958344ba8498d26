"""A/B of `alto run`'s evaluation budget on one config, on a GPU machine.

    python3 benchmarks/ab_eval_budget.py configs/smollm2_random_gsm.yaml --out DIR [--rounds 1]

Runs the config with ``run.eval_tokens: 65536`` (the default) and with as many tokens as
the task's memory model admits for a training step of the same rows (``auto``: what session
19 tried as the default and measured; not shipped), alternating, ``rounds`` times each. From each run's last progress line it takes the task's wall time and the time
spent in evaluations, and appends one row per run to
benchmarks/results/eval_budget_h200.csv. The exits must not change between the two (an
evaluation's chunking does not change what it computes beyond float rounding): the script
says when they differ.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alto.executor.runner import TaskRunner  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402

SHIPPED_BUDGET = TaskRunner.eval_budget_tokens

COLUMNS = ["date", "gpu", "torch", "config", "variant", "eval_tokens", "wall_s", "eval_s", "steps",
           "exits", "note"]
LAST_LINE = re.compile(r"step (\d+) \|.*\| ([\d.]+)s \(evaluations ([\d.]+)s\)")


def run_once(cfg_path: str, out: str, eval_tokens: int | None) -> dict:
    import torch

    from alto.executor.config import load_config
    from alto.executor.session import run_config

    cfg = load_config(cfg_path)
    cfg.run.eval_tokens = eval_tokens
    log = io.StringIO()
    budgets = []
    if eval_tokens is None:  # size each evaluation by the memory model, as session 19 tried
        def by_memory_model(self) -> int:
            L = max(len(i) - 1 for i, _ in self.val)
            states = sum(self.mlm.adapter_state_bytes(self.states[j].job.rank) for j in self.active)
            rows = 1
            while self.mem_fits is not None and self.mem_fits(rows * 2, L, states):
                rows *= 2
            budgets.append(max(65536, rows * L))
            return min(budgets[-1], self.eval_tokens_cap)

        TaskRunner.eval_budget_tokens = by_memory_model
    try:
        run_config(cfg, out, log=log)
    finally:
        TaskRunner.eval_budget_tokens = SHIPPED_BUDGET
    text = log.getvalue()
    sys.stderr.write(text[-2000:])
    step, wall, ev = LAST_LINE.findall(text)[-1]
    with open(os.path.join(out, "jobs.csv")) as f:
        exits = {r["job_id"]: r["exit_reason"] for r in csv.DictReader(f)}
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "config": os.path.basename(cfg_path),
            "variant": "fixed 65536" if eval_tokens else "memory model (not shipped)",
            "eval_tokens": eval_tokens or f"{min(budgets)}-{max(budgets)} (memory model)",
            "wall_s": float(wall), "eval_s": float(ev), "steps": int(step), "_exits": exits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--variants", default="fixed,auto", help="fixed (65,536 tokens), auto (memory model)")
    ap.add_argument("--csv", default=os.path.join(os.path.dirname(__file__), "results", "eval_budget_h200.csv"))
    args = ap.parse_args()
    rows = []
    for i in range(args.rounds):
        for tokens in [{"fixed": 65536, "auto": None}[v] for v in args.variants.split(",")]:
            rows.append(run_once(args.config, os.path.join(args.out, f"r{i}_{tokens or 'auto'}"), tokens))
            print({k: v for k, v in rows[-1].items() if k != "_exits"}, flush=True)
    same = all(r["_exits"] == rows[0]["_exits"] for r in rows)
    for r in rows:
        r["exits"] = sum(v != "completed" for v in r.pop("_exits").values())
        r["note"] = "measured; exits identical across runs" if same else "measured; EXITS DIFFER across runs"
    append_results(args.csv, COLUMNS, rows)
    print("exits identical across runs" if same else "EXITS DIFFER across runs")


if __name__ == "__main__":
    main()
