"""Write one adapter in PEFT's on-disk LoRA format (no peft import needed).

DIR/adapters/<job>/adapter_config.json + adapter_model.safetensors, loadable with::

    base = AutoModelForCausalLM.from_pretrained(DIR / "base_model")   # random: models
    model = PeftModel.from_pretrained(base, DIR / "adapters" / "<job>")

Tensor names follow PEFT's saved layout: `base_model.model.<module>.lora_A.weight`
([r, d_in]) and `...lora_B.weight` ([d_out, r]); scaling = lora_alpha / r.
Job ids contain '/' (task/lr..-r..-b..); the folder name replaces it with '__'.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def job_dir_name(job_id: str) -> str:
    """Folder name of a job's adapter: '/' -> '__' (job ids are task/config)."""
    return job_id.replace("/", "__")


def export_adapter(out_dir: Path, tensors: dict[str, torch.Tensor], rank: int, alpha: float,
                   target_modules: list[str], base_model: str, extra: dict | None = None) -> Path:
    """tensors: `<module>.lora_A.weight` / `<module>.lora_B.weight` (Adapter.state_tensors()).
    target_modules: HF leaf names (q_proj, ...). Returns the folder written."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {f"base_model.model.{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    save_file(sd, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": int(rank),
        "lora_alpha": float(alpha),
        "target_modules": sorted(target_modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
        "base_model_name_or_path": base_model,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if extra:
        (out_dir / "alto_job.json").write_text(json.dumps(extra, indent=2, default=str) + "\n")
    return out_dir
