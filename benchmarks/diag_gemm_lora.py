"""Can a Triton GEMM carry the LoRA expand in its epilogue at cuBLAS speed? (H200 experiment)

Run on the GPU machine:  python3 benchmarks/diag_gemm_lora.py [--out CSV]

At Llama-3.1-8B projection shapes, N = 32 adapters, GPU-only time (CUDA-graph replay) of
  cublas      torch.mm: y = x Wᵀ (forward) and dX = dY W (backward), the base of the issue;
  triton      kernels.gemm_lora_triton without the LoRA epilogue, per tile configuration;
  triton+lora the same with the LoRA expand in the epilogue (S and B_i / A_iᵀ per adapter).
Each Triton result is checked against torch first. Rows: benchmarks/results/gemm_lora.csv.

The kernel lives here, not in kernels/: measured on the H200 (2026-11-29) the Triton GEMM alone
was 1.22-1.25x cuBLAS in the forward, before any LoRA work, so the fused path does not use it
(docs/kernels.md §3c). Kernel semantics:

    C[m, n] = sum_k A[m, k] B[k, n]  +  c_a * sum_r S[m, r] V_a[n, r]      a = adapter of row m

forward:  A = x,  B = Wᵀ (strides), S = x A_iᵀ, V_a = B_a, c_a = s_a  -> y
backward: A = dY, B = W, S = dS = s_a dY B_a, V_a = A_aᵀ, c_a = 1      -> dX
One extra [BM, BLOCK_R] x [BLOCK_R, BN] dot per adapter whose rows the output tile holds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_multi_lora import SHAPES, graph_ms, make_inputs  # noqa: E402

import kernels  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402

COLUMNS = ["date", "gpu", "torch", "triton", "shape", "T", "N", "direction", "variant", "cfg",
           "us", "tflops", "rel_err"]  # fmt: skip
CFGS = [dict(gm_bm=128, gm_bn=256, gm_bk=64, gm_warps=8, gm_stages=3),
        dict(gm_bm=128, gm_bn=256, gm_bk=64, gm_warps=8, gm_stages=4),
        dict(gm_bm=128, gm_bn=128, gm_bk=64, gm_warps=8, gm_stages=4),
        dict(gm_bm=128, gm_bn=128, gm_bk=64, gm_warps=4, gm_stages=4),
        dict(gm_bm=256, gm_bn=128, gm_bk=64, gm_warps=8, gm_stages=3),
        dict(gm_bm=128, gm_bn=256, gm_bk=32, gm_warps=8, gm_stages=5)]  # fmt: skip


@triton.jit
def _gemm_lora_kernel(
    A, B, C, S, V, ROW_AD, RANKS, SCALES,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    stride_sm, stride_sr, stride_va, stride_vn, stride_vr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr, LORA: tl.constexpr, SCALE: tl.constexpr, EVEN_K: tl.constexpr,
    B_ROWS: tl.constexpr,
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
    # out-of-range rows / columns wrap (never stored): no masks in the K loop. The hints keep
    # the loads vectorised; the first run (2026-11-29 03:45Z) used tl.where(...) here, which
    # hides the contiguity, and the backward (B contiguous along n) ran 8x slower than cuBLAS.
    safe_m = tl.max_contiguous(tl.multiple_of(offs_m % M, BLOCK_M), BLOCK_M).to(tl.int64)
    safe_n = tl.max_contiguous(tl.multiple_of(offs_n % N, BLOCK_N), BLOCK_N).to(tl.int64)
    a_ptrs = A + safe_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    if B_ROWS:  # B = Wᵀ, k-contiguous: load W's [BN, BK] rows as stored and transpose
        b_ptrs = B + safe_n[:, None] * stride_bn + offs_k[None, :] * stride_bk
    else:
        b_ptrs = B + offs_k[:, None] * stride_bk + safe_n[None, :] * stride_bn
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_in = k0 + offs_k < K
            a = tl.load(a_ptrs, mask=k_in[None, :], other=0.0)
            if B_ROWS:
                b = tl.load(b_ptrs, mask=k_in[None, :], other=0.0)
            else:
                b = tl.load(b_ptrs, mask=k_in[:, None], other=0.0)
        if B_ROWS:
            b = tl.trans(b)
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
    _gemm_lora_kernel[grid](
        a, b, out, s, v, ra, rk, sc, m, n, k,
        a.stride(0), a.stride(1), *b_strides, out.stride(0), out.stride(1), *sv, **dict(
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=block_r, GROUP_M=cfg.get("gm_group", 8),
        LORA=lora, SCALE=scale, EVEN_K=k % bk == 0,
        B_ROWS=bool(cfg.get("gm_rows", True)) and b_strides[0] == 1,
        IEEE=a.dtype == torch.float32, UPCAST=cfg.get("upcast", False),
        num_warps=cfg.get("gm_warps", 8), num_stages=cfg.get("gm_stages", 3),
    ))  # fmt: skip
    return out


def gpu_us(fn) -> float:
    return graph_ms(fn, rep=30) * 1e3


def run_case(shape: str, t: int, meta: dict, out_csv: str, cfgs: list) -> None:
    """Check and time cuBLAS and every Triton configuration at one (shape, T), N = 32."""
    d_in, d_out = SHAPES[shape]
    inp = make_inputs(d_in, d_out, t, 32)
    x, w, a, b, dy = (inp[k].detach() for k in ("x", "w", "a", "b", "dy"))
    lay = kernels.make_layout(inp["seg"], inp["ranks"], inp["scaling"], device="cuda")
    r = lay.block_r
    s = torch.zeros(t, r, device="cuda", dtype=x.dtype)
    ds = torch.zeros_like(s)
    for i, (o, n) in enumerate(zip(lay.offsets[:-1], lay.seg_lens, strict=True)):
        ri = lay.ranks[i]
        s[o:o + n, :ri] = x[o:o + n] @ a[i, :ri].t()
        ds[o:o + n, :ri] = lay.scaling[i] * (dy[o:o + n] @ b[i, :, :ri])
    y_ref = kernels.fused_multi_lora_reference(x, w, a, b, lay).float()
    dx_ref = (dy @ w).float()
    for i, (o, n) in enumerate(zip(lay.offsets[:-1], lay.seg_lens, strict=True)):
        dx_ref[o:o + n] += (ds[o:o + n, :lay.ranks[i]] @ a[i, :lay.ranks[i]]).float()
    y, dx = torch.empty(t, d_out, device="cuda", dtype=x.dtype), torch.empty_like(x)
    base_flops = 2.0 * t * d_in * d_out
    rows = []
    for direction, fn_cublas in (("fwd", lambda: torch.mm(x, w.t(), out=y)),
                                 ("bwd", lambda: torch.mm(dy, w, out=dx))):  # fmt: skip
        us = gpu_us(fn_cublas)
        rows.append(dict(meta, shape=shape, T=t, N=32, direction=direction,
                         variant="cublas", cfg="", us=f"{us:.1f}",
                         tflops=f"{base_flops / us / 1e6:.0f}", rel_err=""))  # fmt: skip
        print(f"{shape:>11} T={t:>5} {direction} cublas {us:8.1f} us", flush=True)
    for cfg in cfgs:
        for direction in ("fwd", "bwd"):
            if direction == "fwd":
                call = lambda lora, cfg=cfg: gemm_lora(  # noqa: E731
                    x, w, (w.stride(1), w.stride(0)), y,
                    *((lay, s, b, b.stride()) if lora else ()), scale=True, cfg=cfg)
                ref, out = y_ref, y
            else:
                call = lambda lora, cfg=cfg: gemm_lora(  # noqa: E731
                    dy, w, (w.stride(0), w.stride(1)), dx,
                    *((lay, ds, a, (a.stride(0), a.stride(2), a.stride(1)))
                      if lora else ()), scale=False, cfg=cfg)
                ref, out = dx_ref, dx
            for lora in (False, True):
                try:
                    call(lora)
                    want = ref if lora else (x @ w.t() if direction == "fwd" else dy @ w)
                    err = float((out.float() - want.float()).norm() / want.float().norm())
                    us = gpu_us(functools.partial(call, lora))
                except Exception as exc:  # noqa: BLE001 - a config may not fit
                    print(f"ERROR {shape} {t} {direction} {cfg}: {exc!r}"[:300], flush=True)
                    continue
                var = "triton+lora" if lora else "triton"
                rows.append(dict(meta, shape=shape, T=t, N=32, direction=direction,
                                 variant=var, cfg=str(cfg), us=f"{us:.1f}",
                                 tflops=f"{base_flops / us / 1e6:.0f}",
                                 rel_err=f"{err:.1e}"))  # fmt: skip
                print(f"{shape:>11} T={t:>5} {direction} {var:>11} {us:8.1f} us "
                      f"err {err:.1e} {cfg}", flush=True)  # fmt: skip
    append_results(out_csv, COLUMNS, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/gemm_lora.csv")
    p.add_argument("--tokens", default="8192,16384")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--cfgs", default=",".join(str(i) for i in range(len(CFGS))),
                   help="indices into CFGS")  # fmt: skip
    args = p.parse_args()
    meta = dict(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=triton.__version__)  # fmt: skip
    cfgs = [CFGS[int(i)] for i in args.cfgs.split(",")]
    for shape in args.shapes.split(","):
        for t in (int(v) for v in args.tokens.split(",")):
            run_case(shape, t, meta, args.out, cfgs)
            torch.cuda.empty_cache()

if __name__ == "__main__":
    main()
