"""Swap the frozen backbone's RMSNorms and SwiGLU MLP activations for the fused kernels.

``set_fused_ops(model, True)`` points every frozen RMSNorm of HF's Llama, Qwen2 and Mistral
classes (``weight * bf16(x * rsqrt(mean(x²) + eps))``; RMSNORM_CLASSES) at
:func:`kernels.norm_act.rms_norm`, and their SwiGLU MLPs (SWIGLU_MLP_CLASSES) at
:func:`kernels.norm_act.silu_mul`. Other classes keep their own forwards. The modules, their
parameters and state-dict names stay as they are: only the instance's ``forward`` is
overridden, and ``set_fused_ops(model, False)`` removes the override. Same math and roundings as HF's eager code (tests/executor compares the
losses and gradients), one kernel each way instead of ~7 for a norm, and far less saved for
backward (x and an fp32 rstd per row instead of fp32 copies of the hidden state; gate and up
instead of gate, up and silu(gate)). That lets larger token batches train without
recomputation (docs/executor.md).

On CPU without TRITON_INTERPRET the functions fall back to the same eager ops as HF.

**Cheap activations are recomputed, not saved** (:func:`recompute_cheap_activations`, used by
MultiLoraModel around the forward, and :func:`lora_saves` around each LoRA linear): the norm
outputs (saved by the q/k/v and gate/up LoRA linears as their input) and silu(gate)·up (saved by down_proj) are rebuilt in backward from
tensors the fused ops keep anyway (the norm's input; gate and up). Per token and layer of
Llama-3.1-8B that is 2 x 8 KB + 28 KB of the ~170 KB a layer keeps, for one extra norm /
SwiGLU forward kernel in backward (once per output, however many linears saved it). Layers
under activation checkpointing are untouched (their saves belong to checkpointing's hooks).
"""

from __future__ import annotations

import contextlib
import types
import weakref

import torch
from torch import nn

_MARK = "_alto_fused_forward"
# Exactly the classes whose math the kernels reproduce (HF Llama/Qwen2/Mistral). Name matching
# would be wrong: Gemma's RMSNorm scales by (1 + w) in fp32, and several *MLP classes with
# gate/up/down projections add multipliers, clamps or sub-norms.
RMSNORM_CLASSES = ("LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm")
SWIGLU_MLP_CLASSES = ("LlamaMLP", "Qwen2MLP", "MistralMLP")


def _is_frozen_rmsnorm(mod: nn.Module) -> bool:
    w = getattr(mod, "weight", None)
    return (type(mod).__name__ in RMSNORM_CLASSES and isinstance(w, nn.Parameter) and w.dim() == 1
            and not w.requires_grad and isinstance(getattr(mod, "variance_epsilon", None), float))


def _is_swiglu_mlp(mod: nn.Module) -> bool:
    return (type(mod).__name__ in SWIGLU_MLP_CLASSES
            and type(getattr(mod, "act_fn", None)).__name__ in ("SiLU", "SiLUActivation"))


class _Recipe:
    """How to rebuild one registered output; the rebuilt tensor is kept while any saved slot
    still refers to this recipe (q, k and v all save the same norm output: rebuilt once)."""

    __slots__ = ("fn", "inputs", "versions", "built")

    def __init__(self, fn, inputs: tuple[torch.Tensor, ...]):
        self.fn, self.inputs, self.built = fn, inputs, None
        self.versions = tuple(t._version for t in inputs)

    def get(self) -> torch.Tensor:
        if self.built is None:
            if tuple(t._version for t in self.inputs) != self.versions:
                raise RuntimeError("a tensor needed to rebuild a saved activation was modified in place")
            with torch.no_grad():
                self.built = self.fn(*self.inputs)
        return self.built


class _Recompute:
    """What a saved view of a registered output is replaced by: its recipe and geometry."""

    __slots__ = ("recipe", "size", "stride", "offset")

    def __init__(self, recipe: _Recipe, t: torch.Tensor):
        self.recipe, self.size, self.stride, self.offset = recipe, t.size(), t.stride(), t.storage_offset()


# storage address -> (weakref to the registered output, its version, nbytes, recipe).
# Only filled while recompute_cheap_activations() is active.
_REGISTRY: dict[int, tuple] | None = None


def _register(out: torch.Tensor, fn, *inputs: torch.Tensor) -> None:
    """Let saved copies of ``out`` (or views of it) be rebuilt as ``fn(*inputs)`` in backward.
    ``inputs`` must be tensors that backward keeps anyway (so holding them costs nothing)."""
    if _REGISTRY is None or not torch.is_grad_enabled() or out.untyped_storage().nbytes() == 0:
        return  # (out need not require grad: layer 0's norm output is saved by its LoRA linears)
    key = out.untyped_storage().data_ptr()
    # the weakref drops the entry when `out` dies, so a later tensor at the same address
    # (the allocator reuses memory) is never mistaken for it
    ref = weakref.ref(out, lambda _r, k=key: _REGISTRY is not None and _REGISTRY.pop(k, None))
    _REGISTRY[key] = (ref, out._version, out.untyped_storage().nbytes(), _Recipe(fn, inputs))


def _pack(t: torch.Tensor):
    # Hooks turn off autograd's in-place check on saved tensors, so every plain tensor is
    # saved with its version and checked on unpack, as autograd would.
    if _REGISTRY is None or t.layout != torch.strided:
        return t
    e = _REGISTRY.get(t.untyped_storage().data_ptr())
    if e is not None:
        ref, version, nbytes, recipe = e
        base = ref()
        if (base is not None and base._version == version and t.untyped_storage().nbytes() == nbytes
                and t.dtype == base.dtype):
            return _Recompute(recipe, t)
    return (t, t._version)


def _unpack(p):
    if isinstance(p, _Recompute):
        return p.recipe.get().as_strided(p.size, p.stride, p.offset)
    if isinstance(p, tuple):
        t, version = p
        if t._version != version:
            raise RuntimeError("one of the variables needed for gradient computation has been modified "
                               f"by an inplace operation (version {version} when saved, now {t._version})")
        return t
    return p


def _outer_hooks_active() -> bool:
    """Saved-tensor hooks already installed (or unknown: a torch without the query)."""
    try:
        return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
    except (AttributeError, TypeError, RuntimeError):
        return True


@contextlib.contextmanager
def recompute_cheap_activations(on: bool = True):
    """Within this context (one model forward), outputs of the fused norm / SwiGLU forwards
    are registered, and the LoRA linears that save them (:func:`lora_saves`) keep recipes
    instead of copies. No-op when off."""
    global _REGISTRY
    if not on or _REGISTRY is not None:
        yield
        return
    _REGISTRY = {}
    try:
        yield
    finally:
        _REGISTRY = None


def lora_saves():
    """Saved-tensor hooks for one LoRA linear's forward (MultiLoraLinear): its saved input is
    a recipe when it is a registered output. Scoped to the LoRA op on purpose: that op never
    saves its own output, so the packed tensors cannot form reference cycles with their
    grad_fn (which a model-wide hook would create for exp/softmax/attention outputs, leaking
    any graph that never runs backward). Inactive outside recompute_cheap_activations() and
    under other saved-tensor hooks (activation checkpointing owns those layers' saves)."""
    if _REGISTRY is None or not _REGISTRY or _outer_hooks_active():
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)


def _rms_norm_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward of a patched RMSNorm (bound to the module, so deepcopy rebinds it)."""
    from kernels.norm_act import rms_norm

    y = rms_norm(x, self.weight, self.variance_epsilon)
    # rms_norm saves x itself: the recipe holding it costs no memory
    _register(y, lambda xd, w: rms_norm(xd, w, self.variance_epsilon), x.detach(), self.weight)
    return y


def _swiglu_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward of a patched SwiGLU MLP: down(silu(gate(x)) * up(x)) with the fused product."""
    from kernels.norm_act import silu_mul

    g, u = self.gate_proj(x), self.up_proj(x)
    h = silu_mul(g, u)
    _register(h, silu_mul, g.detach(), u.detach())  # silu_mul saves g and u already
    return self.down_proj(h)


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
            mod.forward, kind = types.MethodType(_rms_norm_forward, mod), "rmsnorm"
        elif _is_swiglu_mlp(mod):
            mod.forward, kind = types.MethodType(_swiglu_mlp_forward, mod), "swiglu"
        else:
            continue
        setattr(mod, _MARK, True)
        counts[kind] += 1
    return counts
