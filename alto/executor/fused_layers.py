"""Swap the frozen backbone's RMSNorms and SwiGLU MLP activations for the fused kernels.

``set_fused_ops(model, True)`` points every frozen ``*RMSNorm`` module (Llama, Qwen2, Mistral:
``weight * bf16(x * rsqrt(mean(x²) + eps))``) at :func:`kernels.norm_act.rms_norm`, and every
MLP with ``gate_proj`` / ``up_proj`` / ``down_proj`` and a SiLU activation at
:func:`kernels.norm_act.silu_mul`. The modules, their parameters and state-dict names stay as
they are: only the instance's ``forward`` is overridden, and ``set_fused_ops(model, False)``
removes the override. Same math and roundings as HF's eager code (tests/executor compares the
losses and gradients), one kernel each way instead of ~7 for a norm, and far less saved for
backward (x and an fp32 rstd per row instead of fp32 copies of the hidden state; gate and up
instead of gate, up and silu(gate)). That lets larger token batches train without
recomputation (docs/executor.md).

On CPU without TRITON_INTERPRET the functions fall back to the same eager ops as HF.
"""

from __future__ import annotations

from torch import nn

_MARK = "_alto_fused_forward"


def _is_frozen_rmsnorm(mod: nn.Module) -> bool:
    w = getattr(mod, "weight", None)
    return (type(mod).__name__.endswith("RMSNorm") and isinstance(w, nn.Parameter) and w.dim() == 1
            and not w.requires_grad and _eps(mod) is not None)


def _eps(mod: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        v = getattr(mod, name, None)
        if isinstance(v, float):
            return v
    return None


def _is_swiglu_mlp(mod: nn.Module) -> bool:
    act = getattr(mod, "act_fn", None)
    return (all(hasattr(mod, n) for n in ("gate_proj", "up_proj", "down_proj"))
            and type(act).__name__ in ("SiLU", "SiLUActivation"))


def _norm_forward(mod: nn.Module):
    from kernels.norm_act import rms_norm

    eps = _eps(mod)
    return lambda x: rms_norm(x, mod.weight, eps)


def _mlp_forward(mod: nn.Module):
    from kernels.norm_act import silu_mul

    return lambda x: mod.down_proj(silu_mul(mod.gate_proj(x), mod.up_proj(x)))


def set_fused_ops(model: nn.Module, on: bool) -> dict[str, int]:
    """Fused norms and SwiGLU on (or back to HF's eager forwards); returns how many modules of
    each kind now run fused. Norms whose weight trains are left eager."""
    counts = {"rmsnorm": 0, "swiglu": 0}
    for mod in model.modules():
        if getattr(mod, _MARK, False):  # undo first: a reused backbone may carry an old patch
            del mod.forward
            delattr(mod, _MARK)
        if not on:
            continue
        if _is_frozen_rmsnorm(mod):
            mod.forward, kind = _norm_forward(mod), "rmsnorm"
        elif _is_swiglu_mlp(mod):
            mod.forward, kind = _mlp_forward(mod), "swiglu"
        else:
            continue
        setattr(mod, _MARK, True)
        counts[kind] += 1
    return counts
