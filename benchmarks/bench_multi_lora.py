"""Benchmark one multi-LoRA linear layer, fwd + bwd, on a CUDA GPU; rows appended to a CSV.

Run (on the GPU machine, from the repo root):
    python3 benchmarks/bench_multi_lora.py --out benchmarks/results/multi_lora.csv
    python3 benchmarks/bench_multi_lora.py --quick          # one small config, smoke test

Variants (all compute the same function; the frozen base weight never gets a gradient):
  base       y = x Wᵀ and dX = dY W only (the floor the LoRA part is added to)
  fused      kernels.fused_multi_lora as shipped (TUNE defaults: path "auto": since 2026-11-29
             session 12 (13:56Z) "gemm" where d_in·d_out <= 2048·(d_in + d_out), i.e. also
             4096²; from 06:2xZ "gemm" for d_out <= d_in / 4 and "stream" elsewhere; from
             05:1xZ "stream" everywhere; rows before: split / fused by T)
  fused_one  TUNE path="fused": shrink+expand in one launch (shrink_expand), two wgrad launches
  fused_pair path="fused" + wgrad_pair (dA and dB in one launch)
  fused_split path="split" explicitly
  fused_kadd defaults + TUNE fuse_add="kernel" (paper's fused expand-and-add in the kernel)
  fused_split_c512 / _c2048  path="split" with 512 / 2048 output columns per expand program
  fused_stream  TUNE path="stream": shrink + row-streaming expand; backward shrink of dY, dA
             and the dX delta in one weight-gradient launch, dB
  (rows of 2026-11-29 03:4xZ named fused_dxw / fused_one_dxw / fused_split_dxw: that backward
  under the option that became the stream path, with the auto / fused / split forward)
  fused_tma_x / fused_bm64  shrink_expand reading x through TMA / with 64-row tiles at every T
  fused_stream_x128  the stream path with its forward expand at 128 columns / 4 warps (the
             setting before 2026-11-29 05:5xZ; since: sx_bn 256, sx_warps 8)
  (rows of 2026-11-29 09:4xZ named fused_at_0aab245: the shipped path of commit 0aab245, run
  from an archive of that commit in the same device session, as the A/B of docs/kernels_log.md §3h)
  fused_w1 / fused_w0  the weight-gradient reductions split long segments over token chunks
             (fp32 atomics, zeroed buffer, cast) only below 1 wave of programs / never
             (TUNE wgrad_waves; shipped: 2)
  fused_stream_s32 / fused_gemm_s32  those paths with S and dS kept in fp32 (TUNE narrow_s
             False; the default until 2026-11-29 05:10Z)
  fused_gemm TUNE path="gemm": the base GEMM in Triton (TMA) with the LoRA expand in each output
             tile, forward y and backward dX (no cuBLAS), shipped tiles (rows before 2026-11-29
             05:00Z: one tile per program; since: a persistent grid of one program per SM);
             _p1 / _p0 persistent / one tile per program, _n128 128-column tiles, 4 stages
  (rows of 2026-11-29 06:55Z named fused_acqrel / fused_relaxed: the shipped path before its
  fp32 atomics were made relaxed, and with only that change, before the rank-axis loads were
  vectorised; an A/B of one device call, the kernel source edited between the two runs)
  (rows of 2026-11-29 07:30Z named fused_one_vwhere / fused_split_vwhere: those paths with
  V's rank padding zeroed in registers instead of by the load mask, a build reverted after it
  failed to launch at rank 128 in fp32; the stream path ("fused" rows) was not affected)
  loop       eager PyTorch: shared base GEMM + per-adapter loop (kernels.reference)
  separate   N separate jobs: each adapter runs its own base GEMM + LoRA on its own tokens

Shapes are Llama-3.1-8B projections (d_in -> d_out); ranks drawn from {16, 32, 64}; tokens split
over adapters by a multinomial draw (seeded). Timing: triton.testing.do_bench (CUDA events,
L2 flushed between runs), median and p20/p80: host launch cost included, so small layers are
host-bound. gpu_ms: the same fwd+bwd step captured in a CUDA graph and replayed
(triton.testing.do_bench_cudagraph, median), the GPU time alone, as in a training step that is
graph-captured or whose host runs ahead of the GPU. Launches: CUDA kernels + memsets seen by
torch.profiler in one fwd+bwd step. FLOPs: base 4·T·d_in·d_out (fwd + dX), LoRA
6·Σ_i n_i·r_i·(d_in + d_out). lora_bytes: bytes the LoRA part adds in the variant's kernel path
(lora_model; the gemm path has no delta round trips; rows before 2026-11-29 13:0xZ used the
delta design with fp32 S for every variant), lora_floor_ms = lora_bytes / measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys

import numpy as np
import torch
import triton
import triton.testing

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kernels  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402
from kernels import multi_lora as ml  # noqa: E402

SHAPES = {
    "4096x4096": (4096, 4096),
    "4096x1024": (4096, 1024),
    "4096x14336": (4096, 14336),
    "14336x4096": (14336, 4096),
}


def shape_of(name: str) -> tuple[int, int]:
    """(d_in, d_out) of a named shape, or of any "DINxDOUT" (e.g. 576x1536, SmolLM2's up)."""
    if name in SHAPES:
        return SHAPES[name]
    try:
        d_in, d_out = (int(v) for v in name.split("x"))
    except ValueError:
        raise SystemExit(f"--shapes: {name!r} is neither one of {', '.join(SHAPES)} nor DINxDOUT") from None
    return d_in, d_out


COLUMNS = [
    "date",
    "gpu",
    "torch",
    "triton",
    "shape",
    "T",
    "N",
    "ranks",
    "variant",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "tflops",
    "lora_bytes",
    "lora_floor_ms",
    "launches",
    "ratio_vs_base",
    "gpu_ms",
    "gpu_ratio_vs_base",
]
BF16 = torch.bfloat16
DEFAULT_TUNE = {k: ml.TUNE[k] for k in ("path", "fuse_add", "wgrad_pair", "narrow_s", "wgrad_waves",
                                       "bwd_side", "bwd_side_paths", "bwd_side_when")}
DEFAULT_TUNE["gpu"] = dict(ml.TUNE["gpu"])  # variants may override tile settings
FUSED_VARIANTS = {  # TUNE overrides of each fused_multi_lora variant
    "fused": dict(DEFAULT_TUNE),  # the defaults as shipped
    "fused_split": dict(DEFAULT_TUNE, path="split", wgrad_pair=False),
    "fused_one": dict(DEFAULT_TUNE, path="fused", wgrad_pair=False),
    "fused_pair": dict(DEFAULT_TUNE, path="fused", wgrad_pair=True),
    "fused_kadd": dict(DEFAULT_TUNE, fuse_add="kernel"),
    # split path whose expand programs cover 512 / 2048 columns each, V loads pipelined
    "fused_split_c512": dict(DEFAULT_TUNE, path="split", wgrad_pair=False,
                             gpu=dict(DEFAULT_TUNE["gpu"], ex_cols=512, ex_stages=3)),
    "fused_split_c2048": dict(DEFAULT_TUNE, path="split", wgrad_pair=False,
                              gpu=dict(DEFAULT_TUNE["gpu"], ex_cols=2048, ex_stages=3)),
    # weight-gradient reductions split long segments below 1 wave / never (default: 2 waves)
    "fused_w1": dict(DEFAULT_TUNE, wgrad_waves=1.0),
    "fused_w0": dict(DEFAULT_TUNE, wgrad_waves=0.0),
    "fused_stream": dict(DEFAULT_TUNE, path="stream"),
    "fused_stream_s32": dict(DEFAULT_TUNE, path="stream", narrow_s=False),
    "fused_stream_x128": dict(DEFAULT_TUNE, path="stream",
                              gpu=dict(DEFAULT_TUNE["gpu"], sx_bn=128, sx_warps=4)),
    "fused_gemm_s32": dict(DEFAULT_TUNE, path="gemm", narrow_s=False),
    "fused_gemm": dict(DEFAULT_TUNE, path="gemm"),
    # the dX GEMM beside dA as before session 17: 4 stages, registers as compiled (TUNE gpu
    # gm_side_fit off), so no dA program fits beside a GEMM program on an SM
    "fused_no_side_fit": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], gm_side_fit=None)),
    # the gemm path through the Gluon GEMM (LoRA term as extra pipeline steps; the default on
    # Hopper since 2026-11-29 11:1xZ) and through the Triton GEMM (the default before)
    "fused_gluon": dict(DEFAULT_TUNE, path="gemm", gpu=dict(DEFAULT_TUNE["gpu"], gm_gluon=True)),
    "fused_gemm_triton": dict(DEFAULT_TUNE, path="gemm",
                              gpu=dict(DEFAULT_TUNE["gpu"], gm_gluon=False)),
    # the Gluon GEMM with its base steps peeled out of the general step (TUNE gpu gm_peel)
    "fused_gluon_peel": dict(DEFAULT_TUNE, path="gemm",
                             gpu=dict(DEFAULT_TUNE["gpu"], gm_gluon=True, gm_peel=True)),
    # the gemm path's Gluon GEMM with its LoRA MMA over all 64 ranks and V's rank padding
    # masked in shared memory (TUNE gpu gm_rank_k off: the kernel before session 12)
    "fused_gluon_full_k": dict(DEFAULT_TUNE, path="gemm",
                               gpu=dict(DEFAULT_TUNE["gpu"], gm_gluon=True, gm_rank_k=False)),
    # the gemm path's Gluon GEMM masking S's rows in registers (TUNE gpu gm_s_regs; added at
    # the end of session 12, the default since session 14) and by a shared-memory pass (before)
    "fused_gluon_s_regs": dict(DEFAULT_TUNE, path="gemm",
                               gpu=dict(DEFAULT_TUNE["gpu"], gm_gluon=True, gm_s_regs=True)),
    "fused_gluon_smem_mask": dict(DEFAULT_TUNE, path="gemm",
                                  gpu=dict(DEFAULT_TUNE["gpu"], gm_gluon=True, gm_s_regs=False)),
    # the backward's dB (and on the gemm path dA) on a second stream (TUNE bwd_side, on the
    # gemm path "db+da" since session 14; kernels/side_stream.py), on both paths; one stream
    "fused_side_db": dict(DEFAULT_TUNE, bwd_side="db", bwd_side_paths=("stream", "gemm")),
    "fused_side_dbda": dict(DEFAULT_TUNE, bwd_side="db+da", bwd_side_paths=("stream", "gemm")),
    "fused_one_stream": dict(DEFAULT_TUNE, bwd_side=None),
    # the fork taken in eager mode too, even when the host bounds the step (before 17:5xZ)
    "fused_side_always": dict(DEFAULT_TUNE, bwd_side_when="always"),
    # dA enqueued before the dX GEMM (the first shipped order, runs 16:33Z-16:49Z) instead of
    # after it (shipped since 17:0xZ)
    "fused_side_da_before": dict(DEFAULT_TUNE, bwd_side="db+da_before"),
    # the defaults as session 13 left them (S's rows masked in shared memory, one stream)
    "fused_session13": dict(DEFAULT_TUNE, bwd_side=None,
                            gpu=dict(DEFAULT_TUNE["gpu"], gm_s_regs=False)),
    # (rows fused_gluon_lean_fence, fused_gm_lag, fused_sh_lag, fused_lag, fused_gm_s4_lag of
    # session 13 measured options since removed: docs/kernels_log.md §3l)
    # the Gluon shrink's row tile: 64 rows, chosen by tile count (the default since session 13),
    # 128 rows (before)
    "fused_shgl_bm64": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], sh_gl_bm=64)),
    "fused_shgl_auto": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], sh_gl_bm="auto")),
    "fused_shgl_128": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], sh_gl_bm=128)),
    # the Gluon GEMM with C stored in halves and a fourth ring stage (gm_epi_halves; the
    # default since session 13), with halves and three stages,
    # and as before session 13 (three stages, C in one store)
    "fused_gm_s4": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], gm_gl_stages=4,
                                                gm_epi_halves=True)),
    "fused_gm_halves": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], gm_gl_stages=3,
                                                    gm_epi_halves=True)),
    "fused_gm_s3": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], gm_gl_stages=3,
                                                gm_epi_halves=False)),
    # the shipped kernels as session 12 left them (3-stage GEMM, 128-row shrink tiles)
    "fused_session12": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], gm_gl_stages=3,
                                                    gm_epi_halves=False, sh_gl_bm=128)),
    # the Gluon shrink's shared tiles reduced into the workspace (sh_gl_part "atomic", with the
    # shipped stream-K gate; run in session 14: correct, no gain, docs/kernels_log.md §3m)
    "fused_shgl_atomic": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], sh_gl_part="atomic")),
    # the shrinks through the Triton kernel instead of the Gluon one (TUNE gpu sh_gluon, the
    # default on Hopper since 2026-11-29, session 11), on the shipped path and on the gemm path
    "fused_sh_triton": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], sh_gluon=False)),
    # no Gluon kernel at all (their launches cost the host more than Triton's, §3k): the
    # gemm path's GEMM and both paths' shrinks in Triton
    "fused_gemm_all_triton": dict(DEFAULT_TUNE, path="gemm",
                                  gpu=dict(DEFAULT_TUNE["gpu"], gm_gluon=False, sh_gluon=False)),
    "fused_stream_triton": dict(DEFAULT_TUNE, path="stream", gpu=dict(DEFAULT_TUNE["gpu"], sh_gluon=False)),
    # the Gluon shrink with whole row tiles per program (TUNE gpu sh_gl_stream_k off: session
    # 11's scheme) instead of the stream-K split shipped in session 12
    "fused_shgl_whole": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], sh_gl_stream_k=False)),
    "fused_gemm_sh_triton": dict(DEFAULT_TUNE, path="gemm",
                                 gpu=dict(DEFAULT_TUNE["gpu"], sh_gluon=False)),
    # the weight-gradient reductions through the Gluon kernel (TUNE gpu wg_gluon; off, not yet
    # run on a GPU when added in session 11)
    "fused_wg_gluon": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], wg_gluon=True)),
    "fused_gemm_p1": dict(DEFAULT_TUNE, path="gemm", gpu=dict(DEFAULT_TUNE["gpu"], gm_persist=1)),
    "fused_gemm_p0": dict(DEFAULT_TUNE, path="gemm", gpu=dict(DEFAULT_TUNE["gpu"], gm_persist=0)),
    "fused_gemm_n128": dict(DEFAULT_TUNE, path="gemm",
                            gpu=dict(DEFAULT_TUNE["gpu"], gm_bn=128, gm_stages=4)),
    # shrink_expand reading x through TMA; 64-row tiles at every T
    "fused_tma_x": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], se_tma="x")),
    "fused_bm64": dict(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"], bm_fused=64)),
}  # fmt: skip


def ceilings() -> dict:
    """Measured copy bandwidth (bytes read + written) and bf16 GEMM rate on this GPU."""
    a = torch.empty(2 * 1024**3 // 2, dtype=BF16, device="cuda")
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), warmup=25, rep=100)
    bw = 2 * a.numel() * 2 / (ms * 1e-3)
    m = torch.randn(8192, 8192, device="cuda", dtype=BF16)
    ms_mm = triton.testing.do_bench(lambda: m @ m, warmup=25, rep=100)
    return {"copy_bytes_per_s": bw, "bf16_mm_flops": 2 * 8192**3 / (ms_mm * 1e-3)}


def make_inputs(d_in, d_out, t, n, seed=0):
    rng = np.random.default_rng(seed)
    ranks = [int(r) for r in rng.choice([16, 32, 64], size=n)]
    seg = rng.multinomial(t, [1.0 / n] * n).tolist()
    scaling = [2.0] * n  # alpha = 2r
    r_max = max(ranks)
    g = dict(device="cuda", dtype=BF16)
    x = torch.randn(t, d_in, **g).requires_grad_()
    w = torch.randn(d_out, d_in, **g) / d_in**0.5
    a = (torch.randn(n, r_max, d_in, **g) / d_in**0.5).requires_grad_()
    b = (torch.randn(n, d_out, r_max, **g) / r_max**0.5).requires_grad_()
    dy = torch.randn(t, d_out, **g)
    return dict(x=x, w=w, a=a, b=b, dy=dy, seg=seg, ranks=ranks, scaling=scaling)


def step_fn(variant: str, inp: dict):
    x, w, a, b, dy = inp["x"], inp["w"], inp["a"], inp["b"], inp["dy"]
    seg, ranks, scaling = inp["seg"], inp["ranks"], inp["scaling"]
    if variant == "base":
        return lambda: torch.autograd.grad(torch.nn.functional.linear(x, w), (x,), dy)
    if variant.startswith("fused"):
        lay = kernels.make_layout(seg, ranks, scaling, device="cuda")
        tune = dict(FUSED_VARIANTS[variant])

        def fused():
            ml.TUNE.update(tune)
            y = kernels.fused_multi_lora(x, w, a, b, layout=lay)
            return torch.autograd.grad(y, (x, a, b), dy)

        return fused
    if variant == "loop":

        def loop():
            y = kernels.fused_multi_lora_reference(x, w, a, b, seg, ranks, scaling)
            return torch.autograd.grad(y, (x, a, b), dy)

        return loop
    if variant == "separate":
        offs = np.concatenate([[0], np.cumsum(seg)])
        jobs = []
        for i, (o, n) in enumerate(zip(offs[:-1], seg, strict=True)):
            if n:
                r = ranks[i]
                jobs.append(
                    (
                        x[o : o + n].detach().clone().requires_grad_(),
                        a[i, :r].detach().clone().requires_grad_(),
                        b[i, :, :r].detach().clone().requires_grad_(),
                        dy[o : o + n],
                        scaling[i],
                    )
                )

        def separate():
            for xi, ai, bi, dyi, s in jobs:
                yi = torch.nn.functional.linear(xi, w) + s * (xi @ ai.t()) @ bi.t()
                torch.autograd.grad(yi, (xi, ai, bi), dyi)

        return separate
    raise ValueError(variant)


def graph_ms(fn, rep: int = 50) -> float:
    """Median ms of fn replayed from a CUDA graph (about ``rep`` ms of replays): GPU time
    without the host's launch cost. fn runs once first, outside the capture (compiles kernels,
    builds layout tables)."""
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode="median")


def count_launches(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def lora_model(d_in, d_out, t, seg, ranks, block_r, path: str = "split") -> tuple[float, float]:
    """(LoRA FLOPs, LoRA bytes) of one fwd+bwd, bf16 activations, in a kernel path's design:
    "gemm" adds the LoRA term inside the base GEMMs (no delta round trips); the others write
    the forward and dX deltas and cuBLAS's epilogue reads them back. Either way x and dY are
    read twice (shrink and weight gradient), A and B once per pass, the gradients written once,
    and S and dS written once and read twice (bf16, fp32 on the split path)."""
    flops = 6.0 * sum(n * r for n, r in zip(seg, ranks, strict=True)) * (d_in + d_out)
    act = 2 * t * (2 * d_in + 2 * d_out)  # x twice, dY twice
    if path != "gemm":
        act += 2 * t * (2 * d_out + 2 * d_in)  # y delta and dX delta, each written and read
    wts = 3 * 2 * len(seg) * max(ranks) * (d_in + d_out)  # A, B read fwd + bwd, grads written
    s_bufs = 6 * (4 if path == "split" else 2) * t * block_r  # S and dS
    return flops, float(act + wts + s_bufs)


def variant_path(variant: str, t: int, d_in: int, d_out: int) -> str:
    """The kernel path a variant runs: its TUNE path, "auto" resolved by the shipped rule
    (the eager loop and separate jobs are given the split path's design, as a yardstick)."""
    path = FUSED_VARIANTS.get(variant, {}).get("path", "split")
    return kernels.launch.auto_path(t, d_in, d_out)[0] if path == "auto" else path


def bench_case(shape: str, t: int, n: int, args, meta: dict, bw: float) -> None:
    """Check, time and record (CSV rows) every variant of one (shape, T, N) case."""
    d_in, d_out = shape_of(shape)
    slow_t = {int(v) for v in args.slow_variants_tokens.split(",")}
    graph_vars = set(args.graph_variants.split(","))
    inp = make_inputs(d_in, d_out, t, n)
    lay = kernels.make_layout(inp["seg"], inp["ranks"], inp["scaling"], device="cuda")
    lflops, _ = lora_model(d_in, d_out, t, inp["seg"], inp["ranks"], lay.block_r)
    bflops = 4.0 * t * d_in * d_out
    base_ms = base_gpu = None
    res = {}
    with torch.no_grad():  # check before timing: fused vs eager loop, same dtype
        yf = kernels.fused_multi_lora(inp["x"], inp["w"], inp["a"], inp["b"], layout=lay)
        yl = kernels.fused_multi_lora_reference(inp["x"], inp["w"], inp["a"], inp["b"], lay)
        err = float((yf.float() - yl.float()).norm() / yl.float().norm())
        del yf, yl
    if not err < 2e-2:
        print(f"WARNING {shape} T={t} N={n}: fused vs loop rel err {err:.2e}")
    for var in args.variants.split(","):
        if var in ("loop", "separate") and t not in slow_t:
            continue
        try:
            fn = step_fn(var, inp)
            fn()  # compile / warm caches
            med, p20, p80 = triton.testing.do_bench(
                fn, warmup=25, rep=args.rep, quantiles=[0.5, 0.2, 0.8]
            )
            launches = count_launches(fn)
            gpu = float("nan")
            if var in graph_vars:
                try:
                    gpu = graph_ms(fn)
                except Exception as exc:  # noqa: BLE001 - keep the eager timing of this row
                    print(f"ERROR (graph) {shape} T={t} N={n} {var}: {exc!r}"[:400], flush=True)
        except Exception as exc:  # noqa: BLE001 - log, keep the other rows
            print(f"ERROR {shape} T={t} N={n} {var}: {exc!r}"[:400], flush=True)
            continue
        finally:  # the variant's fn set its TUNE; the next one starts from the defaults
            ml.TUNE.update(DEFAULT_TUNE, gpu=dict(DEFAULT_TUNE["gpu"]))
        base_ms = med if var == "base" else base_ms
        base_gpu = gpu if var == "base" else base_gpu
        flops = bflops + (0.0 if var == "base" else lflops)
        lbytes = lora_model(d_in, d_out, t, inp["seg"], inp["ranks"], lay.block_r,
                            variant_path(var, t, d_in, d_out))[1]  # fmt: skip
        res[var] = med
        append_results(args.out, COLUMNS, [dict(
            meta, shape=shape, T=t, N=n,
            ranks=f"16/32/64 mean {np.mean(inp['ranks']):.1f}", variant=var,
            median_ms=f"{med:.4f}", p20_ms=f"{p20:.4f}", p80_ms=f"{p80:.4f}",
            tflops=f"{flops / (med * 1e-3) / 1e12:.1f}",
            lora_bytes=int(0 if var == "base" else lbytes),
            lora_floor_ms=f"{(0 if var == 'base' else lbytes / bw * 1e3):.4f}",
            launches=launches,
            ratio_vs_base=f"{med / base_ms:.3f}" if base_ms else "",
            gpu_ms="" if gpu != gpu else f"{gpu:.4f}",
            gpu_ratio_vs_base=f"{gpu / base_gpu:.3f}" if gpu == gpu and base_gpu else "",
        )])  # fmt: skip
        res[var + "_gpu"] = gpu
    del inp
    torch.cuda.empty_cache()
    r = res
    print(
        f"{shape:>11} T={t:>5} N={n:>2} "
        + " ".join(f"{k}={v:.3f}" for k, v in r.items())
        + (f"  fused/base={r['fused'] / r['base']:.3f}" if "fused" in r and "base" in r else "")
        + (f" gpu {r['fused_gpu'] / r['base_gpu']:.3f}" if "fused_gpu" in r and "base_gpu" in r else "")
        + (f" loop/fused={r['loop'] / r['fused']:.2f}" if "loop" in r and "fused" in r else "")
        + f" err={err:.1e}",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/multi_lora.csv")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--tokens", default="2048,4096,8192,16384")
    p.add_argument("--adapters", default="8,32,64")
    p.add_argument("--variants", default="base,fused,fused_one,fused_kadd,loop,separate")
    p.add_argument(
        "--slow-variants-tokens",
        default="2048,4096,8192,16384",
        help="T values at which loop/separate are timed (they are slow)",
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rep", type=int, default=100, help="do_bench rep (ms)")
    p.add_argument(
        "--graph-variants",
        default="base,fused,fused_one,fused_split,fused_pair,fused_kadd,fused_split_c512,"
        "fused_split_c2048",
        help="variants also timed GPU-only, from a CUDA graph (gpu_ms)",
    )
    args = p.parse_args()
    if args.quick:
        args.shapes, args.tokens, args.adapters = "4096x4096", "4096", "8"
    ceil = ceilings()
    print(json.dumps(ceil), flush=True)
    bw = ceil["copy_bytes_per_s"]
    meta = dict(
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        gpu=torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
    )
    for shape in args.shapes.split(","):
        for t in (int(v) for v in args.tokens.split(",")):
            for n in (int(v) for v in args.adapters.split(",")):
                bench_case(shape, t, n, args, meta, bw)

if __name__ == "__main__":
    main()
