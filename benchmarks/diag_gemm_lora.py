"""Can the base GEMM carry the LoRA expand at cuBLAS speed? (H200 experiment, the "gemm" path)

Run on the GPU machine:  python3 benchmarks/diag_gemm_lora.py [--tokens 4096,8192] [--cfgs 0,2]

At Llama-3.1-8B projection shapes, N = 32 adapters, GPU-only time (CUDA-graph replay) of
  cublas        torch.mm: y = x Wᵀ (forward) and dX = dY W (backward), the base of the issue;
  tma           kernels.launch_gemm.gemm_lora without the LoRA term (TMA loads and stores),
                per tile configuration of CFGS (the TUNE["gpu"] gm_* keys);
  tma+lora      the same with the LoRA term (S and B_aᵀ / A_a per adapter of each tile).
Each result is checked against torch first. Rows: benchmarks/results/gemm_lora.csv (the
variants "triton" / "triton+lora" of 2026-11-29 02:30Z were an earlier pointer-load kernel,
docs/kernels_log.md §3c). Rows of 04:3xZ loaded
S and V through pointers (that kernel spilled); rows whose cfg holds gm_flatten / gm_diag
(04:5xZ) came from temporary kernel switches, since removed (docs/kernels_log.md §3e):
gm_flatten = tl.range(flatten=True) over the tiles; gm_diag 1 = V's rank mask off, 2 = the
first adapter of each tile only, 3 = one pre-masked bf16 S tile straight from TMA into the MMA
(no register pass), 4 = two such S tiles per output tile. Modes 1-4 compute a different
function (their rel_err is large) and only time what the epilogue's parts cost. Rows of
05:01Z timed a reverted variant that loaded S and the first adapter's V before the K loop.
Rows of 05:5xZ timed a reverted variant with S slotted ([T, 2r] bf16, adapter i's columns at
(i % 2)·r, zeros elsewhere: no row or rank mask on S for tiles of one or two adapters;
docs/kernels_log.md §3f): +41 / +42 µs over the plain GEMM, as before.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_multi_lora import SHAPES, graph_ms, make_inputs  # noqa: E402

import kernels  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402
from kernels import launch_gemm  # noqa: E402
from kernels.launch import TUNE  # noqa: E402
from kernels.launch_gemm import gemm_lora  # noqa: E402

COLUMNS = ["date", "gpu", "torch", "triton", "shape", "T", "N", "direction", "variant", "cfg",
           "us", "tflops", "rel_err"]  # fmt: skip
_G = ("gm_bm", "gm_bn", "gm_bk", "gm_warps", "gm_stages", "gm_group", "gm_persist")
CFGS = [dict(zip(_G, v, strict=True)) for v in (
    (128, 256, 64, 8, 3, 8, 0),
    (128, 256, 64, 8, 3, 8, 1),
    (128, 128, 64, 8, 4, 8, 0),
    (128, 128, 64, 4, 4, 8, 0),
    (256, 128, 64, 8, 3, 8, 0),
    (128, 128, 64, 8, 5, 8, 1),
    (128, 256, 64, 8, 3, 16, 0),
    (128, 256, 32, 8, 5, 8, 0),
    # 8-11 (2026-11-29, tenth session): two programs per SM (sm_90 compile: 98-116 KB of
    # shared memory and <= 255 registers x 128 threads each), so that one program's LoRA
    # epilogue overlaps the other's K loop
    (128, 128, 64, 4, 2, 8, 2),
    (128, 128, 64, 4, 2, 8, 0),
    (64, 256, 64, 4, 2, 8, 2),
    (128, 64, 64, 4, 3, 8, 2),
)] + [  # 12-13: the Gluon GEMM (kernels/gemm_lora_gluon.py), LoRA as extra pipeline steps,
    # as before session 13 (3 stages, C in one store); 13 (4 stages) does not fit
    dict(gm_bm=128, gm_bn=256, gm_bk=64, gm_warps=8, gm_gl_stages=3, gm_epi_halves=False,
         gm_group=8, gm_persist=1, gm_gluon=True),
    dict(gm_bm=128, gm_bn=256, gm_bk=64, gm_warps=8, gm_gl_stages=4, gm_epi_halves=False,
         gm_group=8, gm_persist=1, gm_gluon=True),
] + [  # 14-16: 12 with a timing diagnostic (wrong results): 1 no masking pass, 2 and V_a
    # always adapter 0's (L2-hot), 3 and the LoRA steps' S / V boxes read from x / dY and W
    dict(gm_bm=128, gm_bn=256, gm_bk=64, gm_warps=8, gm_gl_stages=3, gm_epi_halves=False,
         gm_group=8, gm_persist=1, gm_gluon=True, gm_diag=d) for d in (1, 2, 3)
] + [  # 17: 12 with the base steps peeled out of the general step (gm_peel; never run yet)
    dict(gm_bm=128, gm_bn=256, gm_bk=64, gm_warps=8, gm_gl_stages=3, gm_epi_halves=False,
         gm_group=8, gm_persist=1, gm_gluon=True, gm_peel=True),
] + [  # 18: 12 with its LoRA MMA over all 64 ranks and V's padding masked (gm_rank_k off: the
    # kernel before session 12; 12-17 take the shipped gm_rank_k)
    dict(gm_bm=128, gm_bn=256, gm_bk=64, gm_warps=8, gm_gl_stages=3, gm_epi_halves=False,
         gm_group=8, gm_persist=1, gm_gluon=True, gm_rank_k=False),
] + [  # 19: 12 with S's rows masked in registers (gm_s_regs; 12-18 and 20-21 take the shipped
    # setting, on since session 14, so their earlier rows ran with it off)
    dict(gm_bm=128, gm_bn=256, gm_bk=64, gm_warps=8, gm_gl_stages=3, gm_epi_halves=False,
         gm_group=8, gm_persist=1, gm_gluon=True, gm_s_regs=True),
] + [  # 20-21 (session 13): C stored in two halves (gm_epi_halves) with a fourth ring stage
    # (shipped since), with three (the halves' own cost); rows of 15:3xZ with gm_lag measured
    # a removed option (one wgmma kept in flight)
    dict(gm_bm=128, gm_bn=256, gm_bk=64, gm_warps=8, gm_gl_stages=st, gm_group=8, gm_persist=1,
         gm_gluon=True, gm_epi_halves=True) for st in (4, 3)
]  # fmt: skip


_GLUON_CALLS = [0]  # calls of the Gluon GEMM, so that a silent fallback cannot pass as it
_gluon_real = launch_gemm._gemm_lora_gluon


def _gluon_counted(*args, **kw):
    out = _gluon_real(*args, **kw)
    _GLUON_CALLS[0] += 1  # after it returned: a failure falls back to the Triton GEMM
    return out


launch_gemm._gemm_lora_gluon = _gluon_counted


def gpu_us(fn) -> float:
    return graph_ms(fn, rep=30) * 1e3


def run_case(shape: str, t: int, meta: dict, out_csv: str, cfgs: list) -> None:
    """Check and time cuBLAS and every Triton configuration at one (shape, T), N = 32."""
    d_in, d_out = SHAPES[shape]
    inp = make_inputs(d_in, d_out, t, 32)
    x, w, a, b, dy = (inp[k].detach() for k in ("x", "w", "a", "b", "dy"))  # contiguous
    lay = kernels.make_layout(inp["seg"], inp["ranks"], inp["scaling"], device="cuda")
    r = lay.block_r
    # as the shrink writes them: in x's dtype (TUNE narrow_s, shipped; the Gluon GEMM needs it).
    # Rows before 2026-11-29T11:1xZ used fp32 S / dS.
    s = torch.zeros(t, r, device="cuda", dtype=x.dtype)
    ds = torch.zeros_like(s)
    for i, (o, n) in enumerate(zip(lay.offsets[:-1], lay.seg_lens, strict=True)):
        ri = lay.ranks[i]
        s[o:o + n, :ri] = (lay.scaling[i] * (x[o:o + n] @ a[i, :ri].t()).float()).to(x.dtype)
        ds[o:o + n, :ri] = (lay.scaling[i] * (dy[o:o + n] @ b[i, :, :ri]).float()).to(x.dtype)
    y_ref = kernels.fused_multi_lora_reference(x, w, a, b, lay).float()
    dx_ref = (dy @ w).float()
    for i, (o, n) in enumerate(zip(lay.offsets[:-1], lay.seg_lens, strict=True)):
        dx_ref[o:o + n] += ds[o:o + n, :lay.ranks[i]].float() @ a[i, :lay.ranks[i]].float()
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
        full = dict(TUNE["gpu"], **cfg)
        for direction in ("fwd", "bwd"):
            if direction == "fwd":
                call = lambda lora, full=full: gemm_lora(  # noqa: E731
                    x, w, True, *((lay, s, b) if lora else (None, None, None)), full)
                ref = y_ref
            else:
                call = lambda lora, full=full: gemm_lora(  # noqa: E731
                    dy, w, False, *((lay, ds, a) if lora else (None, None, None)), full)
                ref = dx_ref
            for lora in (False, True):
                try:
                    before = _GLUON_CALLS[0]
                    out = call(lora)
                    if full.get("gm_gluon") and _GLUON_CALLS[0] == before:
                        raise RuntimeError("gm_gluon set but the Triton GEMM ran (fallback)")
                    want = ref if lora else (x @ w.t() if direction == "fwd" else dy @ w)
                    err = float((out.float() - want.float()).norm() / want.float().norm())
                    us = gpu_us(functools.partial(call, lora))
                except Exception as exc:  # noqa: BLE001 - a config may not fit
                    print(f"ERROR {shape} {t} {direction} {cfg}: {exc!r}"[:300], flush=True)
                    continue
                var = "tma+lora" if lora else "tma"
                rows.append(dict(meta, shape=shape, T=t, N=32, direction=direction,
                                 variant=var, cfg=str(cfg), us=f"{us:.1f}",
                                 tflops=f"{base_flops / us / 1e6:.0f}",
                                 rel_err=f"{err:.1e}"))  # fmt: skip
                print(f"{shape:>11} T={t:>5} {direction} {var:>9} {us:8.1f} us "
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
