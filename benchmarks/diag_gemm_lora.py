"""Can a Triton GEMM carry the LoRA expand in its epilogue at cuBLAS speed? (H200 experiment)

Run on the GPU machine:  python3 benchmarks/diag_gemm_lora.py [--out CSV]

At Llama-3.1-8B projection shapes, N = 32 adapters, GPU-only time (CUDA-graph replay) of
  cublas      torch.mm: y = x Wᵀ (forward) and dX = dY W (backward), the base of the issue;
  triton      kernels.gemm_lora_triton without the LoRA epilogue, per tile configuration;
  triton+lora the same with the LoRA expand in the epilogue (S and B_i / A_iᵀ per adapter).
Each Triton result is checked against torch first. Rows: benchmarks/results/gemm_lora.csv.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import sys

import torch
import triton
import triton.testing

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_multi_lora import SHAPES, make_inputs  # noqa: E402

import kernels  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402
from kernels.gemm_lora_triton import gemm_lora  # noqa: E402

COLUMNS = ["date", "gpu", "torch", "triton", "shape", "T", "N", "direction", "variant", "cfg",
           "us", "tflops", "rel_err"]  # fmt: skip
CFGS = [dict(gm_bm=128, gm_bn=256, gm_bk=64, gm_warps=8, gm_stages=3),
        dict(gm_bm=128, gm_bn=256, gm_bk=64, gm_warps=8, gm_stages=4),
        dict(gm_bm=128, gm_bn=128, gm_bk=64, gm_warps=8, gm_stages=4),
        dict(gm_bm=128, gm_bn=128, gm_bk=64, gm_warps=4, gm_stages=4),
        dict(gm_bm=256, gm_bn=128, gm_bk=64, gm_warps=8, gm_stages=3),
        dict(gm_bm=128, gm_bn=256, gm_bk=32, gm_warps=8, gm_stages=5)]  # fmt: skip


def gpu_us(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=30, return_mode="median") * 1e3


def run_case(shape: str, t: int, meta: dict, out_csv: str) -> None:
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
    for cfg in CFGS:
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
    args = p.parse_args()
    meta = dict(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=triton.__version__)  # fmt: skip
    for shape in SHAPES:
        for t in (int(v) for v in args.tokens.split(",")):
            run_case(shape, t, meta, args.out)
            torch.cuda.empty_cache()

if __name__ == "__main__":
    main()
