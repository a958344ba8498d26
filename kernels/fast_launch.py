"""Low-overhead launches of already-compiled Triton kernels.

``jit_fn[grid](*args, **meta)`` binds and specialises every argument, builds a cache key and
looks the kernel up on every call. Here the first call of each *specialisation* goes through
Triton as usual and returns its ``CompiledKernel``; later calls with the same specialisation call
that kernel's launcher directly. Measured on the H200 host: 130–300 µs less per layer fwd+bwd
(4–6 launches), 10–25 % of the op's host time (docs/kernels_log.md §3b): Triton's binding was not
the main host cost, the launches themselves and the torch-side work are.

The specialisation key reproduces what Triton specialises on, conservatively:
  * tensors: dtype and whether the data pointer is 16-byte aligned;
  * ints: == 1, divisible by 16, fits in int32 (Triton's i32 / i64 choice);
  * bools and floats: the value / the type; constexpr meta-parameters: their values.
Over-specialising only costs an extra cache entry (compiled once by Triton itself).

Tensors are passed to the launcher as their device addresses (ints), which skips Triton's
per-pointer validity query to the driver; the first (Triton-path) call of each specialisation has
already validated them as tensors on this device.

The launcher call (``kernel.run(gx, gy, gz, stream, function, packed_metadata, launch_metadata,
enter_hook, exit_hook, *all_args)``) is the one ``JITFunction.run`` makes in Triton 3.6 and 3.9.
If it ever fails, or a launch hook (a profiler such as proton) is installed, launches go back
through Triton's own path; the reason is kept in :data:`DISABLED` (the GPU tests assert it stays
empty). The interpreter (TRITON_INTERPRET=1) always uses Triton's path.
"""

from __future__ import annotations

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from . import multi_lora_triton as mlt

ENABLED = True  # benchmarks switch it off to measure Triton's own launch path
DISABLED: list[str] = []
STATS = {"fast": 0, "triton": 0}  # launches by path (CUDA only; tests assert the fast one is used)
_COMPILED: dict[tuple, object] = {}
_INT32 = (-(2**31), 2**31 - 1)


def _arg_key(a) -> object:
    """What Triton specialises ``a`` on (see the module docstring); dispatched on the exact
    type first (:data:`_KEY_OF`), the general rules otherwise."""
    f = _KEY_OF.get(type(a))
    if f is not None:
        return f(a)
    if isinstance(a, torch.Tensor):
        return _tensor_key(a)
    if isinstance(a, int):  # an int subclass (IntEnum, ...): Triton sees the int
        return _int_key(int(a))
    if hasattr(a, "block_shape") and hasattr(a, "layout"):  # a Gluon descriptor: + its layout
        _KEY_OF[type(a)] = _gluon_desc_key
        return _gluon_desc_key(a)
    return type(a)


def _int_key(a: int) -> object:
    # small values as themselves (over-specialising 2..16 is harmless; bools are keyed (b,),
    # as True == 1), others by Triton's hints: divisible by 16, and i32 / i64 / u64
    return a if -17 < a < 17 else (a % 16 == 0, _INT32[0] <= a <= _INT32[1], a < 2**63)


def _tensor_key(a: torch.Tensor) -> object:
    return (a.dtype, a.data_ptr() % 16 == 0)


def _triton_desc_key(a) -> object:  # Triton specialises on the element type and the box
    return (a.base.dtype, *a.block_shape)


def _gluon_desc_key(a) -> object:  # the layout object (cached per box) hashes in 0.2 µs
    return (type(a), a.base.dtype, *a.block_shape, a.layout)


_KEY_OF = {bool: lambda a: (a,), int: _int_key, torch.Tensor: _tensor_key,
           torch.nn.Parameter: _tensor_key, TensorDescriptor: _triton_desc_key}  # fmt: skip


def _as_launch_arg(a):
    """Tensors go to the launcher as raw device addresses: Triton's launcher then skips its
    per-pointer data_ptr() call and cuPointerGetAttribute check (it takes ints as-is).
    TMA descriptors pass as they are (the launcher encodes them)."""
    t = type(a)
    if t is int or t is bool or t is float:
        return a
    return a.data_ptr() if isinstance(a, torch.Tensor) else a


def _raw_stream(index: int) -> int:
    """The current CUDA stream's handle (what Triton's own launch path passes)."""
    return torch._C._cuda_getCurrentRawStream(index)


def _hook_installed(hook) -> bool:
    """Triton >= 3.4 keeps hooks in an (initially empty) HookChain; older versions use None."""
    if hook is None:
        return False
    calls = getattr(hook, "calls", None)
    return bool(calls) if calls is not None else True


def _hook_holder():
    """Where this Triton keeps its launch hooks: knobs.runtime (>= 3.4) or CompiledKernel."""
    try:
        from triton import knobs

        return knobs.runtime
    except (ImportError, AttributeError):
        from triton.compiler import CompiledKernel

        return CompiledKernel


_HOOKS = None  # resolved on the first CUDA launch, not at import (CPU runs never need it)


def _hooks_installed() -> bool:
    """Whether a launch hook (e.g. a profiler such as proton) is installed in Triton now."""
    global _HOOKS
    if _HOOKS is None:
        _HOOKS = _hook_holder()
    return (_hook_installed(getattr(_HOOKS, "launch_enter_hook", None))
            or _hook_installed(getattr(_HOOKS, "launch_exit_hook", None)))


def launch(jit_fn, grid: tuple, args: tuple, meta: dict) -> None:
    """Launch ``jit_fn[grid](*args, **meta)``; ``args`` must list every runtime argument in the
    kernel's order and ``meta`` its constexprs plus num_warps / num_stages (all of them, so that
    positional order == signature order)."""
    first = args[0]  # a tensor, or a (Triton / Gluon) TMA descriptor over one
    dev = (first.base if hasattr(first, "block_shape") else first).device
    if dev.type != "cuda" or not ENABLED or DISABLED or mlt.interpret_mode():
        jit_fn[grid](*args, **meta)
        return
    key = (id(jit_fn), dev.index, *meta.items(), *[_arg_key(a) for a in args])
    entry = _COMPILED.get(key)
    if entry is None or _hooks_installed():
        STATS["triton"] += 1
        kernel = jit_fn[grid](*args, **meta)
        if kernel is not None:  # the constexprs' values follow from the key: kept with it
            consts = [meta[name] for name in jit_fn.arg_names[len(args):]]
            _COMPILED[key] = (kernel, consts)
        return
    kernel, consts = entry
    g = (*grid, 1, 1)
    try:
        STATS["fast"] += 1
        # every argument in signature order: runtime args, then the constexprs by name
        kernel.run(g[0], g[1], g[2], _raw_stream(dev.index), kernel.function, kernel.packed_metadata,
                   None, None, None, *[_as_launch_arg(a) for a in args], *consts)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - fall back to Triton's own launch, keep the reason
        DISABLED.append(repr(exc)[:500])
        jit_fn[grid](*args, **meta)


def clear_cache() -> None:
    """Forget compiled-kernel handles (tests)."""
    _COMPILED.clear()
