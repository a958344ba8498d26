"""Base GEMM with the multi-LoRA expand in its epilogue (Triton), and its launcher.

    C[m, n] = sum_k A[m, k] B[k, n]  +  c_a * sum_r S[m, r] V_a[n, r]      a = adapter of row m

forward:  A = x,  B = Wᵀ (strides), S = x A_iᵀ (from the shrink), V_a = B_a,  c_a = s_a  -> y
backward: A = dY, B = W,            S = dS = s_a dY B_a,            V_a = A_aᵀ, c_a = 1    -> dX
So y (and dX) are written once, with no LoRA delta written and read back, and the LoRA expand
rides on the compute-bound GEMM's tiles: per output tile, one extra [BM, BLOCK_R] x [BLOCK_R, BN]
dot per adapter whose rows the tile holds (usually one, two at a segment boundary). Rows are
grouped by adapter (as everywhere in this package); ``ROW_AD`` gives each row's adapter, and
rank columns >= r_a are masked on both operands (V may hold anything there).

Program order: GROUP_M row tiles share each column strip (the usual L2-friendly swizzle).
Same conventions as multi_lora_triton: lazily jit-decorated, core builtins, ``UPCAST`` under the
interpreter, ``IEEE`` for fp32 inputs.
"""

from __future__ import annotations

import torch
import triton.language as tl

from . import multi_lora_triton as mlt
from .fast_launch import launch


def _gemm_lora_kernel(
    A, B, C, S, V, ROW_AD, RANKS, SCALES,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    stride_sm, stride_sr, stride_va, stride_vn, stride_vr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr, LORA: tl.constexpr, SCALE: tl.constexpr, EVEN_K: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    tiles_m = (M + BLOCK_M - 1) // BLOCK_M
    tiles_n = (N + BLOCK_N - 1) // BLOCK_N
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_in = offs_m < M
    n_in = offs_n < N
    # out-of-range rows / columns read row 0 / column 0 (never stored): no masks in the K loop
    safe_m = tl.where(m_in, offs_m, 0).to(tl.int64)
    safe_n = tl.where(n_in, offs_n, 0).to(tl.int64)
    a_ptrs = A + safe_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = B + offs_k[:, None] * stride_bk + safe_n[None, :] * stride_bn
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_in = k0 + offs_k < K
            a = tl.load(a_ptrs, mask=k_in[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_in[:, None], other=0.0)
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        if IEEE:
            acc += tl.dot(a, b, input_precision="ieee")
        else:
            acc += tl.dot(a, b)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if LORA:
        row_ad = tl.load(ROW_AD + offs_m, mask=m_in, other=-1)
        first = tl.load(ROW_AD + pid_m * BLOCK_M)
        last = tl.load(ROW_AD + tl.minimum(pid_m * BLOCK_M + BLOCK_M, M) - 1)
        offs_r = tl.arange(0, BLOCK_R)
        for ad in range(first, last + 1):
            rank = tl.load(RANKS + ad)
            r_in = offs_r < rank
            mine = row_ad == ad
            s = tl.load(S + safe_m[:, None] * stride_sm + offs_r[None, :] * stride_sr,
                        mask=mine[:, None] & r_in[None, :], other=0.0)  # fmt: skip
            v = tl.load(V + ad * stride_va + offs_r[:, None] * stride_vr
                        + safe_n[None, :] * stride_vn, mask=r_in[:, None], other=0.0)  # fmt: skip
            s = s.to(v.dtype)
            if UPCAST:
                s, v = s.to(tl.float32), v.to(tl.float32)
            if IEEE:
                part = tl.dot(s, v, input_precision="ieee")
            else:
                part = tl.dot(s, v)
            if SCALE:
                part = part * tl.load(SCALES + ad)
            acc += part
    c_ptrs = C + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=m_in[:, None] & n_in[None, :])


def gemm_lora(a, b, b_strides, out, layout=None, s=None, v=None, v_strides=None,
              scale: bool = False, cfg: dict | None = None) -> torch.Tensor:  # fmt: skip
    """out[M, N] = a[M, K] @ B (+ the LoRA epilogue when ``layout`` is given); returns out.

    b_strides = (k, n) strides of B (so Wᵀ is W with swapped strides); s: [M, block_r] rows'
    shrink (x.dtype or fp32); v with v_strides = (adapter, n, r) strides of V_a[n, r].
    """
    cfg = cfg or {}
    m, k = a.shape
    n = out.shape[1]
    bm, bn, bk = cfg.get("gm_bm", 128), cfg.get("gm_bn", 256), cfg.get("gm_bk", 64)
    lora = layout is not None
    dev = a.device
    if lora:
        ra, rk, sc = layout.row_adapters(dev), layout.ranks_tensor(dev), layout.scaling_tensor(dev)
        sv = (s.stride(0), s.stride(1), *v_strides)
        block_r = layout.block_r
    else:  # dummies, never read (LORA is a constexpr)
        ra = rk = sc = s = v = a
        sv, block_r = (0, 0, 0, 0, 0), 16
    grid = (-(-m // bm) * -(-n // bn),)
    launch(mlt.get_kernels().gemm_lora, grid, (
        a, b, out, s, v, ra, rk, sc, m, n, k,
        a.stride(0), a.stride(1), *b_strides, out.stride(0), out.stride(1), *sv,
    ), dict(
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=block_r, GROUP_M=cfg.get("gm_group", 8),
        LORA=lora, SCALE=scale, EVEN_K=k % bk == 0,
        IEEE=a.dtype == torch.float32, UPCAST=cfg.get("upcast", False),
        num_warps=cfg.get("gm_warps", 8), num_stages=cfg.get("gm_stages", 3),
    ))  # fmt: skip
    return out
