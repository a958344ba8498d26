"""Gather per-adapter LoRA factors into one rank-padded stack, and scatter-add its gradient
back: one launch each per factor and layer, whatever the number of adapters.

The executor keeps each adapter's factors, for every layer, in one flat fp32 buffer per
adapter (and their gradients in a second one). Stacking them for `fused_multi_lora` with
torch ops costs one copy kernel per adapter and factor (a cast and a pad into a strided
destination leave torch's foreach fast path), and the backward one add per adapter: at 60
adapters on SmolLM2-135M, 50,400 launches a step (benchmarks/profile_executor_host.py).
Here a table of the adapters' buffer addresses replaces the per-adapter tensors.

Addressing (elements of fp32): adapter i's factor starts at ``bases[i] + ranks[i] * unit``
(its buffer holds the layers in one order, each as A [r_i, d_in] then B [d_out, r_i], so a
factor's offset is the rank times a sum of widths, the same for every adapter):
  * ``rank_dim = 0`` (A): source [r_i, width] row-major; stack [N, r_max, width];
  * ``rank_dim = 1`` (B): source [width, r_i] row-major; stack [N, width, r_max].
Rank entries at or past r_i are zeros in the stack, and their gradient is dropped.

The caller guarantees that every address stays valid and fp32 while the kernels run (the
executor builds the table per step from the live adapters).

Floor: the same bytes as the torch ops (read the factors in fp32, write the stack in the
activation dtype; read the stack's gradient, read-modify-write fp32 gradients).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import fast_launch
from .launch import _empty
from .multi_lora_triton import lazy_jit

_BLOCK = 1024


def _factor_stack_kernel(bases_ptr, ranks_ptr, stack_ptr, unit, width, r_max,
                         RANK_DIM: tl.constexpr, SCATTER: tl.constexpr, BLOCK: tl.constexpr):
    """Program (i, j): elements [j*BLOCK, (j+1)*BLOCK) of adapter i's slice of the stack.
    Gather: stack = source (zeros past the rank). Scatter: source += stack (fp32)."""
    i = tl.program_id(0)
    r = tl.load(ranks_ptr + i)
    src = (tl.load(bases_ptr + i) + r.to(tl.int64) * unit * 4).to(tl.pointer_type(tl.float32))
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    per = width * r_max
    inside = e < per
    if RANK_DIM == 0:  # A: stack [r_max, width] per adapter, source [r, width]
        k = e // width
        off = e  # row k of the source is row k of the stack: same offset
    else:  # B: stack [width, r_max] per adapter, source [width, r]
        k = e % r_max
        off = (e // r_max) * r + k
    live = inside & (k < r)
    at = stack_ptr + i.to(tl.int64) * per + e
    if SCATTER:
        g = tl.load(at, mask=live, other=0.0).to(tl.float32)
        acc = tl.load(src + off, mask=live, other=0.0)
        tl.store(src + off, acc + g, mask=live)
    else:
        v = tl.load(src + off, mask=live, other=0.0)
        tl.store(at, v.to(stack_ptr.dtype.element_ty), mask=inside)


def _launch(bases, ranks, stack, unit: int, width: int, r_max: int, rank_dim: int, scatter: bool) -> None:
    n = stack.shape[0]
    grid = (n, triton.cdiv(width * r_max, _BLOCK))
    fast_launch.launch(lazy_jit(_factor_stack_kernel), grid, (bases, ranks, stack, unit, width, r_max),
                       dict(RANK_DIM=rank_dim, SCATTER=scatter, BLOCK=_BLOCK, num_warps=4, num_stages=1))


def gather_factors(bases: torch.Tensor, ranks: torch.Tensor, unit: int, width: int, r_max: int,
                   rank_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The rank-padded stack of N adapters' factors, cast to dtype.

    bases: [N] int64 on the device, each adapter's fp32 buffer address; ranks: [N] int32 on
    the device; unit: the factor's offset per unit of rank (elements); width: d_in for A
    (rank_dim 0), d_out for B (rank_dim 1). Returns [N, r_max, width] or [N, width, r_max]."""
    n = bases.shape[0]
    shape = (n, r_max, width) if rank_dim == 0 else (n, width, r_max)
    stack = _empty(shape, bases.device, dtype)  # NaN under TUNE['poison']: every element is written
    _launch(bases, ranks, stack, unit, width, r_max, rank_dim, scatter=False)
    return stack


def scatter_add_factors(grad: torch.Tensor, bases: torch.Tensor, ranks: torch.Tensor, unit: int,
                        rank_dim: int) -> None:
    """Add each adapter's unpadded block of ``grad`` (a stack's gradient, shaped as
    gather_factors returned it, any float dtype) to its fp32 gradient buffer at ``bases``
    (same addressing as gather_factors). Entries past an adapter's rank are dropped."""
    grad = grad.contiguous()
    n, a, b = grad.shape
    r_max, width = (a, b) if rank_dim == 0 else (b, a)
    if n:
        _launch(bases, ranks, grad, unit, width, r_max, rank_dim, scatter=True)
