"""`alto run` end to end: load the backbone once, run each task, write DIR/.

    cfg = load_config("configs/tiny.yaml")
    result = run_config(cfg, "out/tiny")        # -> RunResult (per-task runners)

Admission memory: on CUDA a short profile (profile.fit_memory) fits the paper's
M(B) = k0 + k1*B*L on this device and budget; on CPU only `memory.max_total_batch`
and `memory.max_active` limit admission (with neither set, CPU_DEFAULT_MAX_TOTAL_BATCH).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alto.executor.config import Config, ConfigError, local_or_hub
from alto.executor.data import load_task_data
from alto.executor.lora_model import MultiLoraModel, fused_available
from alto.executor.models import load_backbone, resolve_device, save_base_model
from alto.executor.outputs import RunWriter, check_out_dir, clear_run_entries, write_run_settings
from alto.executor.runner import Hooks, JobState, TaskRunner, job_list


@dataclass
class RunResult:
    out: Path
    runners: list[TaskRunner] = field(default_factory=list)
    interrupted: bool = False
    impl: str = "reference"


def pick_impl(cfg: Config, device: torch.device) -> str:
    """reference | fused: fused only on CUDA with kernels/ importable (or when forced)."""
    if cfg.run.kernel == "reference":
        return "reference"
    if cfg.run.kernel == "fused":
        return "fused"
    return "fused" if device.type == "cuda" and fused_available() else "reference"


# On CPU no memory model bounds admission: without a cap every config of a grid would train
# in one step (60 SmolLM2 configs filled 24 GB of RAM). This many samples per step, or the
# grid's largest batch if larger, unless the config sets memory.max_total_batch / max_active.
CPU_DEFAULT_MAX_TOTAL_BATCH = 16


def check_device(name: str, key: str = "model.device") -> None:
    """ConfigError naming ``key`` (the --device flag when it set the device) when ``name`` is
    no torch device, or asks for CUDA that this torch cannot give."""
    try:
        dev = resolve_device(name)
    except RuntimeError:  # torch's own message ("Expected one of cpu, cuda, ipu, ...") names no key
        raise ConfigError(f"{key}: {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: {name!r} asks for CUDA, but this torch ({torch.__version__}) "
                          "sees no CUDA device; use cpu or auto")


def cap_cpu_admission(cfg: Config, log) -> None:
    """Set memory.max_total_batch for a CPU run that has neither cap (see
    CPU_DEFAULT_MAX_TOTAL_BATCH), and say so."""
    if cfg.memory.max_total_batch is not None or cfg.memory.max_active is not None:
        return
    cap = max(CPU_DEFAULT_MAX_TOTAL_BATCH, *(max(t.batch_sizes) for t in cfg.tasks))
    cfg.memory.max_total_batch = cap
    print(f"memory: on CPU with no memory.max_total_batch or max_active, at most {cap} samples "
          "train per step (set either to change it)", file=log)


def clamp_val_samples(cfg: Config, vals: list[list], log) -> None:
    """Lower a task's val_samples to its val split's size (``vals``: each task's split), and
    say so: evaluations score the first val_samples examples, and run.json records what applied."""
    for task, val in zip(cfg.tasks, vals, strict=True):
        if task.val_samples > len(val):
            print(f"[{task.name}] val_samples: {task.val_samples} asked, the val split has {len(val)}: "
                  f"each evaluation scores those {len(val)}", file=log)
            task.val_samples = len(val)


def run_config(cfg: Config, out: str | Path, hooks: Hooks | None = None, log=sys.stderr,
               backbone=None, overwrite: bool = False) -> RunResult:
    """Train every task of cfg; write DIR/. backbone: (model, tok, device) to reuse (tests).

    Nothing in ``out`` is touched until every task's data and the model have loaded: a
    folder holding an earlier run is refused unless ``overwrite`` (then that run's entries
    are removed, and only then), and a bad data file leaves the folder as it was."""
    out = Path(out)
    held = check_out_dir(out, overwrite)
    if backbone is None:
        check_device(cfg.model.device)
    data = [load_task_data(cfg, task, i) for i, task in enumerate(cfg.tasks)]
    model, tok, device = backbone if backbone is not None else load_backbone(cfg)
    if device.type == "cpu":
        cap_cpu_admission(cfg, log)
    clamp_val_samples(cfg, [val for _, val in data], log)
    clear_run_entries(out, held)
    impl = pick_impl(cfg, device)
    base_name = str((out / "base_model").resolve()) if cfg.model.is_random else cfg.model.path
    import datetime as dt

    from alto.executor.profile import device_name

    src = f"measured: {device_name(device)} {dt.date.today()} alto run {cfg.model.path} {cfg.model.dtype}"
    writer = RunWriter(out, source=src, base_model=base_name)
    res = RunResult(out, impl=impl)
    print(f"alto run: {cfg.model.path} on {device} ({cfg.model.dtype}), LoRA impl {impl}", file=log)
    try:  # (from the first file written on: a Ctrl-C still leaves a jobs.csv row per config)
        write_run_settings(out, cfg, str(device), impl, [len(train) for train, _ in data])
        if cfg.model.is_random:
            base_note = save_base_model(model, out / "base_model", cfg.model, device)
            if base_note:
                print(base_note, file=log)
        for i, task in enumerate(cfg.tasks):
            mlm = MultiLoraModel(model, task.target_modules, impl=impl,
                                 gradient_checkpointing=cfg.model.gradient_checkpointing,
                                 fused_ops=cfg.model.fused_ops)
            mem_fits = None
            if device.type == "cuda":
                from alto.executor.profile import fit_memory

                mem, _ = fit_memory(mlm, task.max_seq_len, max(task.ranks), cfg.memory.budget_gb,
                                 cfg.memory.margin_frac, vocab=getattr(tok, "vocab_size", 256))
                print(f"[{task.name}] memory model: {mem}", file=log)
                mem_fits = mem.fits
            runner = TaskRunner(cfg, task, i, mlm, tok, writer, mem_fits=mem_fits, hooks=hooks, log=log,
                                data=data[i])
            res.runners.append(runner)
            try:
                runner.run()
            finally:
                mlm.remove()
    except KeyboardInterrupt:
        res.interrupted = True
        if res.runners:
            res.runners[-1].interrupt()
        writer.job_rows(JobState(job, 0, None, exit_reason="interrupted")  # tasks never started
                        for task, (train, _) in list(zip(cfg.tasks, data, strict=True))[len(res.runners):]
                        for job in job_list(task, len(train)))
        print("interrupted: wrote finished jobs to jobs.csv", file=log)
    finally:
        writer.close()
    if not cfg.model.is_random:  # (an interrupted run serves what finished)
        print(serve_script(cfg, out, writer.jobs.values()), file=log)
    return res


def serve_script(cfg: Config, out: Path, rows) -> str:
    """Write DIR/serve_vllm.sh for a run on a real (not random:) base; the line to print."""
    from alto.executor.vllm_serve import write_serve_script

    base = local_or_hub(cfg, cfg.model.path)  # a local checkpoint, or a hub id
    if base.endswith(".gguf"):
        return ("no serve_vllm.sh: the base is a GGUF file; serve the adapters with vLLM on the "
                "model's HF checkpoint (the adapters' module names are the same)")
    tok = local_or_hub(cfg, cfg.model.tokenizer) if cfg.model.tokenizer else None  # (as load_backbone)
    return write_serve_script(out, base, rows, tokenizer=tok)[1]
