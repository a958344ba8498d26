"""Launcher of the "gemm" path: the base GEMM in Triton with the LoRA expand folded in.

See kernels/gemm_lora_triton.py for what the kernel computes. Per layer: forward = the split-K
shrink (S scaled by s_i) + this GEMM; backward = the shrink of dY + this GEMM for dX + the two
weight-gradient reductions. 2 Triton launches forward, 4 backward, and no cuBLAS call.
"""

from __future__ import annotations

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from . import multi_lora_triton as mlt
from .fast_launch import launch
from .launch import _empty, _n_sms, dot_precision
from .launch_fused import _tma_ok
from .layout import MultiLoraLayout


def gemm_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the gemm path can run x [T, d_in] @ weight [d_out, d_in]ᵀ: every operand and both
    outputs (y [T, d_out], dX [T, d_in], contiguous) can back TMA descriptors (a Hopper-class GPU
    or the interpreter, rows 16-byte aligned), and on CUDA a 16-bit dtype."""
    if x.device.type == "cuda" and x.element_size() > 2:
        return False  # fp32 would leave the tensor cores (an exact fp32 dot is not an MMA)
    row_bytes = x.element_size()
    return (_tma_ok(x) and _tma_ok(weight) and weight.shape[0] * row_bytes % 16 == 0
            and x.shape[1] * row_bytes % 16 == 0)  # fmt: skip


def gemm_lora(a: torch.Tensor, w: torch.Tensor, w_kmajor: bool, layout: MultiLoraLayout | None,
              s: torch.Tensor | None, v: torch.Tensor | None, v_strides: tuple | None,
              cfg: dict) -> torch.Tensor:  # fmt: skip
    """C = a @ B (+ the LoRA term when ``layout`` is given), a new [M, N] tensor of a's dtype.

    a [M, K]; w is the base weight: B = wᵀ when ``w_kmajor`` (w [N, K], the forward) else B = w
    (w [K, N], the backward's dY W). s [M, block_r] (fp32, scale applied); v with
    v_strides = (adapter, rank, n) strides of V_a[r, n].
    """
    m, k = a.shape
    n = w.shape[0] if w_kmajor else w.shape[1]
    dtype, dev = a.dtype, a.device
    out = _empty((m, n), dev, dtype)
    if m == 0:
        return out
    # TMA boxes: keep a box row at 128 bytes (64 bf16, 32 fp32 elements) along K
    bm, bn = cfg["gm_bm"], cfg["gm_bn"]
    bk = cfg["gm_bk"] * 2 // a.element_size()
    lora = layout is not None
    if lora:
        row_ad, ranks = layout.row_adapters(dev), layout.ranks_tensor(dev)
        s_str, block_r = (s.stride(0), s.stride(1)), layout.block_r
    else:  # dummies, never read (LORA is a constexpr)
        row_ad = ranks = s = v = a
        s_str, v_strides, block_r = (0, 0), (0, 0, 0), 16
    tiles = -(-m // bm) * -(-n // bn)
    grid = min(tiles, cfg["gm_persist"] * _n_sms(dev)) if cfg["gm_persist"] else tiles
    launch(mlt.get_kernels().gemm_lora, (grid,), (
        TensorDescriptor.from_tensor(a, [bm, bk]),
        TensorDescriptor.from_tensor(w, [bn, bk] if w_kmajor else [bk, bn]),
        TensorDescriptor.from_tensor(out, [bm, bn]),
        s, v, row_ad, ranks, m, n, k, grid, *s_str, *v_strides,
    ), dict(
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=block_r, GROUP_M=cfg["gm_group"],
        B_KMAJOR=w_kmajor, LORA=lora, V_ROWS=lora and v_strides[1] == 1,
        DOT_PRECISION=dot_precision(dtype), UPCAST=cfg["upcast"],
        num_warps=cfg["gm_warps"], num_stages=cfg["gm_stages"],
    ))  # fmt: skip
    return out
