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

**Cheap activations are recomputed, not saved** (:func:`recompute_cheap_activations`, used by
MultiLoraModel around the forward): the norm outputs (saved by the q/k/v and gate/up LoRA
linears as their input) and silu(gate)·up (saved by down_proj) are rebuilt in backward from
tensors the fused ops keep anyway (the norm's input; gate and up). Per token and layer of
Llama-3.1-8B that is 2 x 8 KB + 28 KB of the ~170 KB a layer keeps, for one extra norm /
SwiGLU forward kernel in backward. Layers under activation checkpointing are untouched
(checkpointing installs its own saved-tensor hooks inside, which take precedence).
"""

from __future__ import annotations

import contextlib
import weakref

import torch
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


class _Recompute:
    """What a saved tensor is replaced by: how to rebuild its base, and the view's geometry."""

    __slots__ = ("fn", "size", "stride", "offset")

    def __init__(self, fn, t: torch.Tensor):
        self.fn, self.size, self.stride, self.offset = fn, t.size(), t.stride(), t.storage_offset()


# storage address -> (weakref to the registered output, its version, nbytes, rebuild fn).
# Only filled while recompute_cheap_activations() is active.
_REGISTRY: dict[int, tuple] | None = None


def _register(out: torch.Tensor, rebuild) -> None:
    """Let saved copies of ``out`` (or views of it) be rebuilt by ``rebuild()`` in backward."""
    if _REGISTRY is None or not torch.is_grad_enabled():
        return  # (out need not require grad: layer 0's norm output is saved by its LoRA linears)
    key = out.untyped_storage().data_ptr()
    # the weakref drops the entry when `out` dies, so a later tensor at the same address
    # (the allocator reuses memory) is never mistaken for it
    ref = weakref.ref(out, lambda _r, k=key: _REGISTRY is not None and _REGISTRY.pop(k, None))
    _REGISTRY[key] = (ref, out._version, out.untyped_storage().nbytes(), rebuild)


def _pack(t: torch.Tensor):
    if _REGISTRY is None or t.layout != torch.strided:
        return t
    e = _REGISTRY.get(t.untyped_storage().data_ptr())
    if e is None:
        return t
    ref, version, nbytes, rebuild = e
    base = ref()
    if base is None or base._version != version or t.untyped_storage().nbytes() != nbytes or t.dtype != base.dtype:
        return t
    return _Recompute(rebuild, t)


def _unpack(p):
    if isinstance(p, _Recompute):
        with torch.no_grad():
            return p.fn().as_strided(p.size, p.stride, p.offset)
    return p


def _outer_hooks_active() -> bool:
    """Saved-tensor hooks already installed (or unknown: a torch without the query)."""
    try:
        return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
    except (AttributeError, TypeError, RuntimeError):
        return True


@contextlib.contextmanager
def recompute_cheap_activations(on: bool = True):
    """Within this context, tensors the fused norm / SwiGLU forwards register are saved for
    backward as recipes instead of copies. No-op when off or when saved-tensor hooks (e.g.
    activation checkpointing of the whole model) are already active."""
    global _REGISTRY
    if not on or _REGISTRY is not None or _outer_hooks_active():
        yield
        return
    _REGISTRY = {}
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        _REGISTRY = None


def _norm_forward(mod: nn.Module):
    from kernels.norm_act import rms_norm

    eps = _eps(mod)

    def forward(x):
        y = rms_norm(x, mod.weight, eps)
        xd = x.detach()  # rms_norm saves x itself: holding it here costs no memory
        _register(y, lambda: rms_norm(xd, mod.weight, eps))
        return y

    return forward


def _mlp_forward(mod: nn.Module):
    from kernels.norm_act import silu_mul

    def forward(x):
        g, u = mod.gate_proj(x), mod.up_proj(x)
        h = silu_mul(g, u)
        gd, ud = g.detach(), u.detach()  # saved by silu_mul already
        _register(h, lambda: silu_mul(gd, ud))
        return mod.down_proj(h)

    return forward


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
