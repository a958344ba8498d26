"""Result files of `alto simulate --out DIR` (the contract analysis/ and users rely on).

- DIR/summary.json: {policy_name: {makespan_s, mean_jct_s, p99_jct_s, gpu_util, gpu_hours,
  samples_saved_frac, best_regret, ..., speedup_vs_sequential}} (keys: sim/metrics.py).
- DIR/tasks.csv: one row per task per policy (columns: TASK_COLUMNS).
- DIR/jobs.csv: one row per config per task per policy (columns: JOB_COLUMNS).
- DIR/curves.csv: loss histories (policy, task_id, job_id, step, samples, train_loss,
  val_loss, exit_reason) of the first few finished tasks, for the trajectory figure.
- DIR/meta.json: what was simulated (trace, cluster, cost-table provenance, versions).

Files are written to a hidden staging folder first and moved in at the end, so a
failed run leaves no partial output. check_out_dir, called before the simulation, refuses a
DIR whose files are not an earlier simulation's to replace (an `alto run` output, an input).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from alto.policy.types import ExitReason
from sim.metrics import TaskOutcome
from sim.recorded_curves import run_marks

RESULT_FILES = ("summary.json", "tasks.csv", "jobs.csv", "curves.csv", "meta.json")  # write_results's

TASK_COLUMNS = [
    "policy", "task_id", "tenant", "model", "gpus", "gpu_ids", "arrival_s", "start_s", "finish_s",
    "jct_s", "queue_s", "predicted_duration_s", "configs", "samples_total", "samples_trained",
    "best_job", "best_val_loss", "regret",
] + [f"exits_{r.value}" for r in ExitReason]
JOB_COLUMNS = [
    "policy", "task_id", "job_id", "lr", "rank", "batch_size", "total_samples", "samples_trained",
    "exit_reason", "exit_time_s", "best_val_loss", "final_best_val",
]


def task_rows(policy: str, outcomes: list[TaskOutcome]) -> list[dict]:
    rows = []
    for o in outcomes:
        ret = o.returned_job()
        row = {
            "policy": policy, "task_id": o.task_id, "tenant": o.tenant, "model": o.model,
            "gpus": o.gpus, "gpu_ids": " ".join(map(str, o.gpu_ids)), "arrival_s": o.arrival_s,
            "start_s": o.start_s, "finish_s": o.finish_s, "jct_s": o.jct_s, "queue_s": o.queue_s,
            "predicted_duration_s": o.predicted_duration_s, "configs": len(o.jobs),
            "samples_total": o.samples_total, "samples_trained": o.samples_trained,
            "best_job": ret.job.job_id if ret else "", "best_val_loss": ret.best_val_loss if ret else "",
            "regret": o.regret(),
        }
        for r in ExitReason:
            row[f"exits_{r.value}"] = sum(1 for j in o.jobs if j.exit_reason == r)
        rows.append(row)
    return rows


def job_rows(policy: str, outcomes: list[TaskOutcome]) -> list[dict]:
    return [
        {
            "policy": policy, "task_id": o.task_id, "job_id": j.job.job_id, "lr": j.job.lr,
            "rank": j.job.rank, "batch_size": j.job.batch_size, "total_samples": j.job.total_samples,
            "samples_trained": j.samples_trained,
            "exit_reason": j.exit_reason.value if j.exit_reason else "", "exit_time_s": j.exit_time_s,
            "best_val_loss": j.best_val_loss, "final_best_val": j.final_best_val,
        }
        for o in outcomes
        for j in o.jobs
    ]


def curve_rows(policy: str, outcomes: list[TaskOutcome]) -> list[dict]:
    return [
        {
            "policy": policy, "task_id": o.task_id, "job_id": j.job.job_id, "step": step,
            "samples": samples, "train_loss": train, "val_loss": val,
            "exit_reason": j.exit_reason.value if j.exit_reason else "",
        }
        for o in outcomes
        for j in o.jobs
        for (step, samples, train, val) in j.history
    ]


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def check_out_dir(out_dir: str | os.PathLike, inputs: Sequence[tuple[str, str | os.PathLike]] = ()) -> str:
    """Which earlier `alto simulate` results in out_dir write_results would replace, as
    "<files> (trace <label>)" ("" if none; the caller says so). Raises ValueError, before
    anything is written, if out_dir is a file, is one of the ``inputs`` folders or holds one
    of the ``inputs`` files under a result file's name ((flag, path) pairs: the results would
    overwrite what was read from there), or holds an `alto run` output
    (recorded_curves.RUN_MARKERS: its jobs.csv and curves.csv would be overwritten)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    for flag, path in inputs:
        p = Path(path)
        if p.is_file() and p.name in RESULT_FILES and p.resolve().parent == out.resolve():
            raise ValueError(f"--out {out}: holds the file of {flag} ({p.name}), which the results "
                             "would overwrite; choose another folder")
        if not p.is_file() and out.resolve() == p.resolve():
            raise ValueError(f"--out {out}: is the folder of {flag}; the results would overwrite "
                             "the files read from there; choose another folder")
    marks = run_marks(out)
    if marks:
        raise ValueError(f"--out {out}: holds an `alto run` output ({', '.join(marks)}); the results "
                         "would overwrite its jobs.csv and curves.csv; choose another folder")
    earlier = [n for n in RESULT_FILES if (out / n).is_file()]
    try:
        trace = json.loads((out / "meta.json").read_text())["trace"]
    except (OSError, ValueError, KeyError, TypeError):  # (no meta.json, or not simulate's)
        return ", ".join(earlier)
    return f"{', '.join(earlier)} (trace {trace})"


def write_results(out_dir: str | os.PathLike, summary: dict, tasks: list[dict], jobs: list[dict], curves: list[dict], meta: dict) -> Path:
    """Write all result files atomically into out_dir (created if missing); returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        (stage / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
        (stage / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _write_csv(stage / "tasks.csv", TASK_COLUMNS, tasks)
        _write_csv(stage / "jobs.csv", JOB_COLUMNS, jobs)
        curve_cols = ["policy", "task_id", "job_id", "step", "samples", "train_loss", "val_loss", "exit_reason"]
        _write_csv(stage / "curves.csv", curve_cols, curves)
        for f in stage.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out
