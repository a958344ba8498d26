"""Paper-style figures drawn only from `alto simulate` result files.

Reads DIR/summary.json, DIR/tasks.csv and DIR/curves.csv; writes PNGs:
- makespan.png: makespan per policy, annotated with the speedup over Sequential;
- gantt_<policy>.png: which GPU ran which task when, with cluster GPUs held over time;
- savings.png: samples saved by early exit, split by exit reason;
- trajectories.png: validation-loss trajectories of one task's configs with exit points.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REASON_COLORS = {
    "divergence": "tab:red", "overfitting": "tab:orange", "underperforming": "tab:blue",
    "asha": "tab:purple", "failed": "black", "completed": "tab:green",
}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _policy_bars_axes(names: list[str]):
    """A bar-chart figure wide enough for one bar per policy."""
    return plt.subplots(figsize=(max(6.0, 1.2 * len(names) + 2), 3.5))  # (6 in: the titles fit)


def plot_makespan(summary: dict, out: Path) -> Path:
    names = list(summary)
    hours = [summary[n]["makespan_s"] / 3600 for n in names]
    fig, ax = _policy_bars_axes(names)
    bars = ax.bar(names, hours, color=["tab:green" if n.startswith("alto") else "tab:gray" for n in names])
    for b, n in zip(bars, names, strict=True):
        sp = summary[n].get("speedup_vs_sequential")
        if sp:
            ax.annotate(f"{sp:.1f}x", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("makespan (h)")
    ax.set_title("Makespan by policy (label: speedup over sequential)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return _save(fig, out / "makespan.png")


def plot_gantt(tasks: pd.DataFrame, policy: str, gpus: int, out: Path) -> Path:
    t = tasks[tasks.policy == policy]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    cmap = plt.get_cmap("tab20")
    for i, row in enumerate(t.itertuples()):
        for g in str(row.gpu_ids).split():
            ax.broken_barh([(row.start_s / 3600, (row.finish_s - row.start_s) / 3600)], (int(g) - 0.4, 0.8), color=cmap(i % 20))
    ax.set_ylabel("GPU")
    ax.set_ylim(-0.5, gpus - 0.5)
    ax.set_title(f"GPU timeline: {policy}")
    ev = sorted([(s, g) for s, g in zip(t.start_s, t.gpus, strict=True)] + [(f, -g) for f, g in zip(t.finish_s, t.gpus, strict=True)])
    times, held = [0.0], [0]
    for time_s, delta in ev:
        times.append(time_s / 3600)
        held.append(held[-1] + delta)
    ax2.step(times, np.array(held) / gpus, where="post")
    ax2.set_ylabel("GPUs held")
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("time (h)")
    return _save(fig, out / f"gantt_{policy}.png")


def plot_savings(summary: dict, out: Path) -> Path:
    names = list(summary)
    reasons = sorted({r for n in names for r in summary[n].get("samples_saved_by_reason", {})})
    fig, ax = _policy_bars_axes(names)
    bottom = np.zeros(len(names))
    for r in reasons:
        vals = np.array([summary[n]["samples_saved_by_reason"].get(r, 0) / summary[n]["samples_total"] for n in names])
        ax.bar(names, vals, bottom=bottom, label=r, color=REASON_COLORS.get(r))
        bottom += vals
    ax.set_ylabel("fraction of grid samples saved")
    ax.set_title("Early-exit savings by reason")
    if reasons:
        ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return _save(fig, out / "savings.png")


def plot_trajectories(curves: pd.DataFrame, out: Path, policy: str | None = None) -> Path | None:
    if curves.empty:
        return None
    if policy is None:
        policy = "alto" if "alto" in set(curves.policy) else curves.policy.iloc[0]
    c = curves[curves.policy == policy]
    task = c.task_id.iloc[0]
    c = c[c.task_id == task]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _job, g in c.groupby("job_id", sort=True):
        reason = g.exit_reason.iloc[-1] or "completed"
        color = REASON_COLORS.get(reason, "gray")
        ax.plot(g.samples, g.val_loss, color=color, alpha=0.6, lw=1)
        ax.plot(g.samples.iloc[-1], g.val_loss.iloc[-1], "x", color=color, ms=5)
    for r, col in REASON_COLORS.items():
        if r in set(c.exit_reason) or (r == "completed" and (c.exit_reason == "completed").any()):
            ax.plot([], [], color=col, label=r)
    ax.set_xscale("symlog")
    ax.set_xlabel("samples trained (per config)")
    ax.set_ylabel("validation loss")
    ax.set_title(f"{policy}: {task} — trajectories, x = exit point")
    ax.legend(fontsize=8)
    return _save(fig, out / "trajectories.png")


# what each figure reads: summary.json per policy, and the columns of tasks.csv / curves.csv
SUMMARY_KEYS = ("makespan_s", "samples_total", "samples_saved_by_reason")
TASK_COLUMNS = ("policy", "gpus", "gpu_ids", "start_s", "finish_s")
CURVE_COLUMNS = ("policy", "task_id", "job_id", "samples", "val_loss", "exit_reason")


class ResultFileError(ValueError):
    """A result file `alto figures` cannot draw from; the message names the file and field."""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultFileError(f"{path}: no such file (is this an `alto simulate` result folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultFileError(f"{path}: not valid JSON ({e})") from None


def _read_csv(path: Path, columns: tuple, **kw) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, **kw)
    except FileNotFoundError:
        raise ResultFileError(f"{path}: no such file") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ResultFileError(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ResultFileError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def load_results(d: Path) -> tuple[dict, dict, pd.DataFrame, pd.DataFrame | None]:
    """(summary, meta, tasks, curves or None) of a result folder, checked for every field the
    figures read; ResultFileError naming the file and field otherwise."""
    summary = _read_json(d / "summary.json")
    if not isinstance(summary, dict) or not summary:
        raise ResultFileError(f"{d / 'summary.json'}: expected an object with one entry per policy")
    for name, entry in summary.items():
        if not isinstance(entry, dict):
            raise ResultFileError(f"{d / 'summary.json'}: {name}: expected an object")
        for key in SUMMARY_KEYS:
            if key not in entry:
                raise ResultFileError(f"{d / 'summary.json'}: {name}.{key}: missing")
        if not isinstance(entry["makespan_s"], (int, float)) or not entry["samples_total"]:
            raise ResultFileError(f"{d / 'summary.json'}: {name}: makespan_s and samples_total must be numbers > 0")
    meta = _read_json(d / "meta.json") if (d / "meta.json").exists() else {}
    tasks = _read_csv(d / "tasks.csv", TASK_COLUMNS, dtype={"gpu_ids": str})
    curves = None
    if (d / "curves.csv").exists():
        curves = _read_csv(d / "curves.csv", CURVE_COLUMNS, keep_default_na=False)
    return summary, meta, tasks, curves


def make_figures(result_dir: str, out_dir: str | None = None) -> list[Path]:
    """Draw every figure for one result folder; returns the PNG paths. Every input is read
    and checked before the first figure is drawn; Gantt charts of policies no longer in
    summary.json (an earlier run's, in the same folder) are removed."""
    d = Path(result_dir)
    out = Path(out_dir) if out_dir else d / "figures"
    if out.exists() and not out.is_dir():
        raise ResultFileError(f"--out {out}: exists and is not a folder")
    summary, meta, tasks, curves = load_results(d)
    ids = [int(g) for s in tasks.gpu_ids.dropna() for g in str(s).split()]
    gpus = int(meta.get("gpus") or (max(ids, default=0) + 1))
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_makespan(summary, out), plot_savings(summary, out)]
    paths += [plot_gantt(tasks, p, gpus, out) for p in summary]
    for stale in set(out.glob("gantt_*.png")) - set(paths):
        stale.unlink()
    if curves is not None:
        p = plot_trajectories(curves, out)
        if p:
            paths.append(p)
    return paths
