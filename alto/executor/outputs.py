"""Result files of `alto run --out DIR`.

- DIR/jobs.csv: one row per config (rewritten whenever a job finishes, so an
  interrupted run still leaves every finished row);
- DIR/losses.csv: one row per evaluation (time_s is wall seconds since the task began);
- DIR/curves.csv: the same evaluations in the simulator's recorded-curve format
  (task, job_id, lr, rank, batch_size, samples, total_samples, train_loss, val_loss, source);
- DIR/adapters/<job>/: PEFT adapters (see peft_export.py);
- DIR/base_model/: the base HF config (+ weights for small random models; a larger one's
  README.md says how to rebuild its weights: models.save_base_model);
- DIR/serve_vllm.sh: a real (not random:) base's vLLM command serving each task's best
  adapter (vllm_serve.py);
- DIR/run.json: the settings the run trained with, as applied (model, device, LoRA impl,
  early exit, memory caps: a CPU run without caps records the default cap it got; each
  task's val_samples, no more than its val split holds), so that
  `alto simulate --early-exit DIR --admission-from DIR` replays it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

from alto.executor.config import RUN_SETTINGS
from alto.executor.peft_export import export_adapter, job_dir_name
from alto.executor.vllm_serve import SCRIPT as SERVE_SCRIPT
from alto.policy.early_exit import EarlyExitConfig
from alto.policy.types import JobConfig, LossReported

JOB_COLS = ["task", "job_id", "lr", "rank", "alpha", "batch_size", "total_samples", "samples_trained",
            "steps_trained", "exit_reason", "best_val_loss", "best_val_step", "final_val_loss",
            "kept_step", "adapter_dir"]
LOSS_COLS = ["time_s", "task", "job_id", "step", "samples", "train_loss", "val_loss"]
CURVE_COLS = ["task", "job_id", "lr", "rank", "batch_size", "samples", "total_samples", "train_loss",
              "val_loss", "source"]


RUN_ENTRIES = ("jobs.csv", "losses.csv", "curves.csv", "adapters", "base_model", RUN_SETTINGS,
               SERVE_SCRIPT)  # what a run writes


class OutputDirError(ValueError):
    """--out cannot take this run; the message names the folder and what to do."""


def check_out_dir(out: Path, overwrite: bool) -> list[str]:
    """The entries of an earlier run inside ``out`` (RUN_ENTRIES present), which ``overwrite``
    lets :func:`clear_run_entries` remove once the new run has loaded its data and model.
    Raises OutputDirError if ``out`` is a file, or holds an earlier run and ``overwrite`` is
    off (its jobs.csv and adapters would otherwise be mixed with, or replaced by, this run's).
    Nothing is written here."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--out {out}: exists and is not a folder")
    held = [n for n in RUN_ENTRIES if (out / n).exists()]
    if held and not overwrite:
        raise OutputDirError(f"--out {out}: already holds a run ({', '.join(held)}); pass "
                             "--overwrite to replace it, or choose another folder")
    return held


def clear_run_entries(out: Path, held: list[str]) -> None:
    """Remove an earlier run's entries (from :func:`check_out_dir`); other files stay."""
    for name in held:
        p = Path(out) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def write_run_settings(out: Path, cfg, device: str, impl: str, train_samples: list[int]) -> None:
    """DIR/run.json: the settings of this run as applied (see the module docstring);
    train_samples: each task's training samples per epoch (what `alto simulate --replay`
    needs for the task's dataset size)."""
    settings = {
        "model": dataclasses.asdict(cfg.model), "device": device, "lora_impl": impl,
        "early_exit": dataclasses.asdict(EarlyExitConfig(**cfg.early_exit)),  # defaults filled in
        "memory": dataclasses.asdict(cfg.memory),
        "run": dataclasses.asdict(cfg.run),
        "tasks": [{"name": t.name, "max_seq_len": t.max_seq_len, "epochs": t.epochs, "lrs": t.lrs,
                   "ranks": t.ranks, "batch_sizes": t.batch_sizes, "alpha": t.alpha,
                   "val_samples": t.val_samples, "seed": t.seed, "train_samples": n}
                  for t, n in zip(cfg.tasks, train_samples, strict=True)],
    }
    (Path(out) / RUN_SETTINGS).write_text(json.dumps(settings, indent=1) + "\n")


def _f(x: float) -> str:
    """Exact round-trip text of a loss (replaying the policy on recorded losses needs the bits)."""
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))


class RunWriter:
    """Appends loss rows as they happen; keeps job rows and rewrites jobs.csv."""

    def __init__(self, out: Path, source: str, base_model: str):
        self.out, self.source, self.base_model = Path(out), source, base_model
        self.out.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, dict] = {}
        self.exported: dict[str, str] = {}
        self._loss = open(self.out / "losses.csv", "w", newline="")
        self._curve = open(self.out / "curves.csv", "w", newline="")
        self._lw, self._cw = csv.writer(self._loss), csv.writer(self._curve)
        self._lw.writerow(LOSS_COLS)
        self._cw.writerow(CURVE_COLS)

    def loss_row(self, task: str, job: JobConfig, ev: LossReported) -> None:
        self._lw.writerow([f"{ev.time_s:.3f}", task, job.job_id, ev.step, ev.samples_seen,
                           _f(ev.train_loss), _f(ev.val_loss)])
        # recorded-curve format: a diverged (NaN) loss is written as inf (nan is not allowed there)
        inf = lambda x: "inf" if not math.isfinite(x) else repr(float(x))
        self._cw.writerow([task, job.job_id, f"{job.lr:g}", job.rank, job.batch_size, ev.samples_seen,
                           job.total_samples, inf(ev.train_loss), inf(ev.val_loss), self.source])
        self._loss.flush()
        self._curve.flush()

    def export(self, job: JobConfig, adapter, mlm, reason: str) -> None:
        d = self.out / "adapters" / job_dir_name(job.job_id)
        export_adapter(d, adapter.state_tensors(), job.rank, job.alpha, mlm.target_names,
                       self.base_model, extra={"job_id": job.job_id, "lr": job.lr, "exit_reason": reason})
        self.exported[job.job_id] = str(d.relative_to(self.out))

    def job_row(self, st) -> None:
        """Record ``st``'s row and rewrite jobs.csv (a finished row is never lost)."""
        self.job_rows([st])

    def job_rows(self, states) -> None:
        """Record the rows of ``states`` and rewrite jobs.csv once."""
        for st in states:
            self._set_row(st)
        with open(self.out / "jobs.csv", "w", newline="") as f:
            w = csv.DictWriter(f, JOB_COLS)
            w.writeheader()
            w.writerows(self.jobs.values())

    def _set_row(self, st) -> None:
        j = st.job
        self.jobs[j.job_id] = {
            "task": j.task_id, "job_id": j.job_id, "lr": f"{j.lr:g}", "rank": j.rank, "alpha": f"{j.alpha:g}",
            "batch_size": j.batch_size, "total_samples": j.total_samples, "samples_trained": st.samples,
            "steps_trained": st.steps, "exit_reason": st.exit_reason, "best_val_loss": _f(st.best_val),
            "best_val_step": st.best_step, "final_val_loss": _f(st.final_val),
            "kept_step": "" if st.kept_step is None else st.kept_step,
            "adapter_dir": self.exported.get(j.job_id, ""),
        }

    def close(self) -> None:
        self._loss.close()
        self._curve.close()
