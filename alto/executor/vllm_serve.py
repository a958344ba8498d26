"""DIR/serve_vllm.sh: serve the best adapter of each task of an `alto run` with vLLM.

vLLM loads a PEFT LoRA folder as `alto run` exports it (adapter_config.json +
adapter_model.safetensors) once the server is started with ``--enable-lora``, a
``--max-lora-rank`` at least the adapters' rank and taken from vLLM's fixed choices
(VLLM_MAX_LORA_RANKS; vLLM's default, 16, is below most ALTO grids), ``--max-loras`` at least
the number of adapters one batch may mix, and ``--lora-modules NAME=PATH``. The script holds
exactly that command for the base model the run trained on.

:func:`vllm_load_problems` checks an exported folder against the rules of vLLM's LoRA loader
that hold for every model (read from vLLM's source: ``vllm/lora/utils.py``
``parse_fine_tuned_lora_name``, ``vllm/lora/peft_helper.py``, ``LoRAConfig``'s rank choices):
it is not vLLM, which is not installed on these machines, and it cannot know which modules a
given vLLM model class accepts (Llama's: q/k/v/o/gate/up/down_proj, the ones ALTO trains).

Random-init bases (``random:<shape>``) get no script: their byte tokenizer and (above 50M
parameters) unsaved weights are nothing vLLM can load, and their adapters mean nothing on
any other base.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks
SCRIPT = "serve_vllm.sh"


def vllm_max_lora_rank(ranks) -> int:
    """The least of vLLM's --max-lora-rank choices that holds every rank in ``ranks``."""
    need = max(ranks)
    for r in VLLM_MAX_LORA_RANKS:
        if r >= need:
            return r
    raise ValueError(f"rank {need} is above vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})")


def vllm_load_problems(adapter_dir: Path) -> list[str]:
    """What in an exported adapter folder vLLM's LoRA loader would reject ([] when nothing):
    config fields (r, lora_alpha, target_modules present; bias "none"; no modules_to_save; no
    DoRA; r within vLLM's rank choices), tensor names (``base_model.model.<module>.lora_A.weight``
    / ``lora_B.weight``, each module with both) and shapes (A [r, d_in], B [d_out, r]). Also
    ALTO's own consistency check, not a vLLM rule: each module's leaf name is among a list
    target_modules (vLLM checks it against the model's supported modules instead)."""
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        return [f"adapter_config.json: {e}"]
    bad = [f"adapter_config.json: {k} missing" for k in ("r", "lora_alpha", "target_modules") if k not in cfg]
    if bad:
        return bad
    r, targets = int(cfg["r"]), cfg["target_modules"]  # (a str is a PEFT regex: not checked here)
    if cfg.get("bias", "none") != "none":
        bad.append(f"adapter_config.json: bias {cfg['bias']!r} (vLLM needs 'none' unless started with bias)")
    if cfg.get("modules_to_save"):
        bad.append("adapter_config.json: modules_to_save is set (vLLM allows none)")
    if cfg.get("use_dora"):
        bad.append("adapter_config.json: use_dora (vLLM has no DoRA)")
    if r > VLLM_MAX_LORA_RANKS[-1]:
        bad.append(f"adapter_config.json: r {r} above vLLM's largest --max-lora-rank")
    shapes: dict[str, dict[str, list[int]]] = {}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():
            parts = key.split(".")
            if parts[:2] != ["base_model", "model"] or parts[-1] != "weight" or parts[-2] not in ("lora_A", "lora_B"):
                bad.append(f"tensor {key}: not base_model.model.<module>.lora_A|lora_B.weight")
                continue
            module = ".".join(parts[2:-2])
            shapes.setdefault(module, {})[parts[-2]] = list(f.get_slice(key).get_shape())
    for module, ab in shapes.items():
        if isinstance(targets, list) and module.rsplit(".", 1)[-1] not in targets:
            bad.append(f"module {module}: not in target_modules {sorted(targets)}")
        if set(ab) != {"lora_A", "lora_B"}:
            bad.append(f"module {module}: has {sorted(ab)} only")
        elif ab["lora_A"][0] != r or ab["lora_B"][1] != r:
            bad.append(f"module {module}: lora_A {ab['lora_A']}, lora_B {ab['lora_B']} for r {r}")
    if not shapes:
        bad.append("adapter_model.safetensors: no LoRA tensor")
    return bad


def _exported_val_loss(row: dict) -> float:
    """Val loss of the weights an exported jobs.csv row's adapter holds: the best-val
    evaluation's when they were kept (kept_step), else the last evaluation's."""
    v = float(row["best_val_loss"] if row.get("kept_step") not in ("", None) else row["final_val_loss"])
    return v if math.isfinite(v) else math.inf


def best_adapters(rows) -> dict[str, dict]:
    """task -> the exported jobs.csv row with the lowest val loss of its weights (tasks
    without an exported, finitely evaluated adapter are left out)."""
    best: dict[str, dict] = {}
    for row in rows:
        if row.get("adapter_dir") and _exported_val_loss(row) < math.inf:
            cur = best.get(row["task"])
            if cur is None or _exported_val_loss(row) < _exported_val_loss(cur):
                best[row["task"]] = row
    return best


def _lora_module(name: str, path: str) -> str:
    """One --lora-modules item: NAME=PATH, or vLLM's JSON form when the name holds '=' or ','
    (its parser splits NAME=PATH only without them)."""
    if "=" in name or "," in name:
        return json.dumps({"name": name, "path": path})
    return f"{name}={path}"


def write_serve_script(out: Path, base: str, rows, tokenizer: str | None = None) -> tuple[Path | None, str]:
    """Write DIR/serve_vllm.sh serving best_adapters(rows) on ``base`` (a model path or hub
    id). Returns (the script or None, the line the run prints about it). Adapters vLLM would
    reject are named instead of served. ``tokenizer``: the run's own tokenizer, when it set
    one (model.tokenizer), served with the base."""
    out = Path(out)
    rows = list(rows)
    picks = best_adapters(rows)
    if not picks:
        if not any(r.get("adapter_dir") for r in rows):
            return None, "no serve_vllm.sh: no adapter was exported (run.export, or no config finished)"
        return None, "no serve_vllm.sh: no task has an exported adapter with a finite val loss"
    problems = {t: vllm_load_problems(out / r["adapter_dir"]) for t, r in picks.items()}
    problems = {t: p for t, p in problems.items() if p}
    if problems:
        t, p = next(iter(problems.items()))
        return None, (f"no serve_vllm.sh (for none of the {len(picks)} task(s)): vLLM would reject "
                      f"{picks[t]['adapter_dir']}: {'; '.join(p[:3])}"
                      + (f" (and the best adapter of {len(problems) - 1} other task(s))" if len(problems) > 1 else ""))
    lines = ["#!/bin/sh",
             "# Serve the best adapter of each task of this `alto run` with vLLM (written by alto run;",
             "# best: the lowest val loss of the exported weights, jobs.csv). Extra vllm options pass through.",
             "# Requests pick an adapter by its task name as the model, e.g. \"model\": \"<task>\"."]
    lines += [f"#   {t}: {r['job_id']} (val loss {_exported_val_loss(r):.4f}, {r['exit_reason']})"
              for t, r in sorted(picks.items())]
    cmd = ["vllm", "serve", base, "--enable-lora",
           "--max-lora-rank", str(vllm_max_lora_rank([int(r["rank"]) for r in picks.values()])),
           "--max-loras", str(len(picks))]
    cmd += ["--tokenizer", tokenizer] if tokenizer else []
    cmd += ["--lora-modules"]
    cmd += [_lora_module(t, r["adapter_dir"]) for t, r in sorted(picks.items())]
    lines += ['cd "$(dirname "$0")" || exit 1', "exec " + " ".join(shlex.quote(c) for c in cmd) + ' "$@"']
    path = out / SCRIPT
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path, f"wrote {path}: vLLM serving of {len(picks)} task(s)' best adapter on {base}"
