"""Can the memory-bound dA reduction run *inside* the dX GEMM's time instead of after it? (H200)

Run on the GPU machine:  python3 benchmarks/diag_coresidency.py [--out CSV]

The gemm path's backward on the k/v projection spends ≈ 19 µs in dA = dSᵀ x (x read again,
33.5 MB at T = 4096) beside a ≈ 50 µs dX GEMM that is compute-bound and leaves most of the
HBM bandwidth idle. The side stream (TUNE bwd_side "db+da") only lets dA take SMs the
persistent GEMM has left (its last, partial pass): the GEMM holds one program per SM with
229 KB of shared memory and 234 registers per thread, so no other program can sit beside it. This script measures, in
CUDA-graph replays (GPU time only):

  gemm        the dX GEMM alone (dY W + dS A, Gluon, persistent);
  da          the dA reduction alone (Triton weight-gradient kernel);
  serial      both on one stream;
  side        dA on a second stream, enqueued after the GEMM (the shipped order);
  side_p<P>   the same with the GEMM's grid cut to P programs, leaving 132 - P SMs to dA
              from the start (dA then streams x while the GEMM computes);
  *_s3        the GEMM with a 3-stage ring (less shared memory: room for a dA program?);
  *_r<R>      the GEMM compiled with at most R registers per thread (maxnreg), so that a
              4-warp dA program (96 registers) fits beside it on every SM.

and prints every compiled kernel's registers, shared memory and warps, with how many of its
programs fit on an SM beside one GEMM program. Rows: benchmarks/results/coresidency.csv.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_multi_lora import SHAPES, graph_ms, make_inputs  # noqa: E402

import kernels  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402
from kernels import fast_launch, launch, launch_gemm  # noqa: E402

COLUMNS = ["date", "gpu", "triton", "shape", "T", "N", "variant", "us"]
SM_REGS, SM_SMEM, SM_WARPS = 65536, 233472, 64  # per SM on sm_90 (smem: 228 KB usable)


def resources() -> list[dict]:
    """Every kernel compiled so far (fast_launch's cache): name, warps, registers per thread,
    shared bytes, and programs per SM by registers / shared memory / warps."""
    rows, seen = [], set()
    for kernel, _consts in fast_launch._COMPILED.values():
        md = kernel.metadata
        key = (kernel.name, md.num_warps, kernel.n_regs, md.shared)
        if key in seen:
            continue
        seen.add(key)
        regs_per_prog = -(-kernel.n_regs * 32 // 256) * 256 * md.num_warps  # 256-reg granules
        rows.append(dict(name=kernel.name[:48], warps=md.num_warps, regs=kernel.n_regs,
                         spills=kernel.n_spills, smem=md.shared, regs_per_prog=regs_per_prog,
                         per_sm=min(SM_REGS // max(regs_per_prog, 1),
                                    SM_SMEM // max(md.shared + 1024, 1),
                                    SM_WARPS // md.num_warps)))  # fmt: skip
    return rows


def two_streams(first, second):
    """A zero-arg fn running ``first`` on the current stream and ``second`` on a side stream
    that waits only for the work enqueued before ``first`` (as the backward's dA waits for dS
    alone), so both may run at once; then joined."""
    side = torch.cuda.Stream()

    def fn():
        main = torch.cuda.current_stream()
        ready = main.record_event()
        first()
        side.wait_event(ready)
        with torch.cuda.stream(side):
            second()
        main.wait_stream(side)

    return fn


def with_grid(fn, progs: int | None, stages: int, maxnreg: int | None = None):
    """fn run with the GEMM's persistent grid capped at ``progs`` programs (None: one per SM),
    its ring ``stages`` deep and its registers per thread capped at ``maxnreg`` (None: as
    compiled; a cap leaves registers for another kernel's program on the same SM)."""
    cfg = launch.TUNE["gpu"]

    def wrapped():
        old = launch_gemm._n_sms, cfg["gm_gl_stages"], cfg.get("gm_maxnreg")
        if progs is not None:
            launch_gemm._n_sms = lambda dev: progs
        cfg["gm_gl_stages"], cfg["gm_maxnreg"] = stages, maxnreg
        try:
            return fn()
        finally:
            launch_gemm._n_sms, cfg["gm_gl_stages"], cfg["gm_maxnreg"] = old

    return wrapped


def case(shape: str, t: int, n: int, progs_list: list[int], regs_list: list[int]) -> list[dict]:
    d_in, d_out = SHAPES[shape]
    inp = make_inputs(d_in, d_out, t, n)
    x, w, a, b, dy = (inp[k].detach() for k in ("x", "w", "a", "b", "dy"))
    lay = kernels.make_layout(inp["seg"], inp["ranks"], inp["scaling"], device="cuda")
    cfg = launch.TUNE["gpu"]
    b_str = (b.stride(0), b.stride(2), b.stride(1))
    ds = launch._shrink(dy, b, b_str, lay, True, cfg, dy.dtype)

    def gemm():
        return launch_gemm.gemm_lora(dy, w, False, lay, ds, a, cfg)

    def da():
        return launch._wgrad(ds, x, a, False, lay, False, cfg)

    # correctness first: the pieces against fp32 torch (never time wrong kernels)
    offs = [0, *torch.tensor(inp["seg"]).cumsum(0).tolist()]
    dsf, xf, af = ds.float(), x.float(), a.float()
    dx_ref = dy.float() @ w.float()
    for i, r in enumerate(inp["ranks"]):
        o0, o1 = offs[i], offs[i + 1]
        dx_ref[o0:o1] += dsf[o0:o1, :r] @ af[i, :r]
    got = with_grid(gemm, progs_list[0], 3, regs_list[-1])().float()
    assert torch.allclose(got, dx_ref, rtol=2e-2, atol=2e-2 * dx_ref.abs().max().item()), shape
    da_got = da().float()
    for i, r in enumerate(inp["ranks"]):
        ref = dsf[offs[i]:offs[i + 1], :r].t() @ xf[offs[i]:offs[i + 1]]
        assert torch.allclose(da_got[i, :r], ref, rtol=2e-2, atol=2e-2 * max(ref.abs().max().item(), 1e-6))

    def serial():
        gemm()
        da()

    variants = {"gemm": gemm, "gemm_s3": with_grid(gemm, None, 3), "da": da, "serial": serial,
                "side": two_streams(gemm, da), "side_s3": with_grid(two_streams(gemm, da), None, 3)}
    for p in progs_list:
        variants[f"gemm_p{p}"] = with_grid(gemm, p, 4)
        variants[f"side_p{p}"] = with_grid(two_streams(gemm, da), p, 4)
    for r in regs_list:  # 3 stages (180 KB) + a 48 KB dA program fit in 228 KB of shared memory
        variants[f"gemm_s3_r{r}"] = with_grid(gemm, None, 3, r)
        variants[f"side_s3_r{r}"] = with_grid(two_streams(gemm, da), None, 3, r)
    rows = []
    for name, fn in variants.items():
        us = graph_ms(fn) * 1e3
        rows.append(dict(shape=shape, T=t, N=n, variant=name, us=round(us, 2)))
        print(f"{shape:>10} T={t:>5} N={n:>2} {name:>14} {us:8.2f} us", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="4096x1024x4096x32,4096x1024x8192x32,4096x4096x4096x64")
    ap.add_argument("--progs", default="124,116")
    ap.add_argument("--maxnreg", default="208,200,168")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "coresidency.csv"))
    args = ap.parse_args()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    meta = dict(date=stamp, gpu=torch.cuda.get_device_name(), triton=triton.__version__)
    progs = [int(p) for p in args.progs.split(",")]
    rows = []
    for c in args.cases.split(","):
        d_in, d_out, t, n = (int(v) for v in c.split("x"))
        shape = next(k for k, v in SHAPES.items() if v == (d_in, d_out))
        rows += case(shape, t, n, progs, [int(r) for r in args.maxnreg.split(",")])
    print("\nkernel resources (programs per SM alone):")
    for r in resources():
        print("  " + "  ".join(f"{k}={v}" for k, v in r.items()))
    append_results(args.out, COLUMNS, [dict(meta, **r) for r in rows])


if __name__ == "__main__":
    main()
