"""Diagnostics for the fused multi-LoRA layer: host overhead, GPU-only time, per-kernel times.

Run on the GPU machine:  python3 benchmarks/diag_multi_lora.py [--sweep]

1. Host cost per call: wall time of many back-to-back calls at a tiny size (GPU idle-bound),
   for the fused step, the base step, one bare Triton launch and one torch op.
2. GPU-only time: the fwd+bwd step captured in a CUDA graph and replayed
   (triton.testing.do_bench_cudagraph), fused vs base, so host overhead is excluded.
3. Per-kernel device time of one fused step (torch.profiler), to place the gap.
4. --sweep: GPU-only time of the fused step for a few tile configurations (TUNE["gpu"]).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import triton
import triton.testing

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_multi_lora import SHAPES, make_inputs, step_fn  # noqa: E402

from kernels import multi_lora as ml  # noqa: E402


def host_us(fn, n=200) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def graph_ms(fn) -> float:
    fn()  # compile kernels and build layout tables outside the capture
    torch.cuda.synchronize()
    try:
        return triton.testing.do_bench_cudagraph(fn, rep=50, quantiles=[0.5, 0.2, 0.8])[0]
    except Exception as exc:  # noqa: BLE001 - report and continue
        print("graph capture failed:", repr(exc)[:200])
        return float("nan")


def kernel_table(fn, top=12) -> None:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            k = e.name[:60]
            rows[k] = rows.get(k, 0.0) + e.device_time / 5
    for k, us in sorted(rows.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {us:9.1f} us  {k}")
    print(f"    {sum(rows.values()):9.1f} us  TOTAL (device time, per step)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--host-only", action="store_true", help="section 1 only")
    args = p.parse_args()
    print("== 1. host cost per call (us), T=256 4096x1024 N=8")
    inp = make_inputs(4096, 1024, 256, 8)
    from kernels import fast_launch

    for fast in (True, False):
        fast_launch.ENABLED = fast
        for v in ("base", "fused_split", "fused_one", "fused_pair"):
            print(f"  {v:>11} (fast launch {'on' if fast else 'off'}): {host_us(step_fn(v, inp)):.1f}")
    fast_launch.ENABLED = True
    import cProfile
    import pstats

    fn = step_fn("fused_split", inp)
    fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(100):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    print("  cProfile of 100 fused_split calls (fast launch on), top by own time:")
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(14)
    ks = ml.mlt.get_kernels()
    lay = __import__("kernels").make_layout(inp["seg"], inp["ranks"], inp["scaling"], "cuda")
    cfg = ml._cfg(torch.device("cuda"))
    s = ml._shrink(inp["x"].detach(), inp["a"].detach(), inp["a"].stride(), lay, False, cfg)
    print(f"  one _shrink call: {host_us(lambda: ml._shrink(inp['x'].detach(), inp['a'].detach(), inp['a'].stride(), lay, False, cfg)):.1f}")
    print(f"  torch.empty: {host_us(lambda: torch.empty(16, device='cuda')):.1f}")
    print(f"  F.linear: {host_us(lambda: torch.nn.functional.linear(inp['x'].detach(), inp['w'])):.1f}")
    del ks, s
    if args.host_only:
        return
    print("== 2. GPU-only (CUDA graph) ms: base, fused, ratio; N=32")
    for shape in SHAPES:
        for t in (4096, 8192, 16384):
            inp = make_inputs(*SHAPES[shape], t, 32)
            b, f = graph_ms(step_fn("base", inp)), graph_ms(step_fn("fused", inp))
            sp = graph_ms(step_fn("fused_one", inp))
            print(f"  {shape:>11} T={t:>5}: base={b:.3f} fused={f:.3f} ratio={f / b:.3f}"
                  f" fused_one={sp:.3f} ratio={sp / b:.3f}", flush=True)  # fmt: skip
    for shape, t in (("4096x4096", 16384), ("4096x1024", 8192)):
        print(f"== 3. kernels of one fused step {shape} T={t} N=32")
        kernel_table(step_fn("fused", make_inputs(*SHAPES[shape], t, 32)))
    if args.sweep:
        print("== 4. tile sweep (GPU-only ms), 4096x4096 T=8192 N=32 and 4096x1024 T=8192 N=32")
        base = dict(ml.TUNE["gpu"])
        for over in (dict(), dict(bm_fused=32), dict(bm_fused=128), dict(bn_fused=256),
                     dict(bk=128), dict(bn=256), dict(bt=128), dict(stages=4), dict(warps=8)):
            ml.TUNE["gpu"] = dict(base, **over)
            res = []
            for shape in ("4096x4096", "4096x1024"):
                res.append(graph_ms(step_fn("fused", make_inputs(*SHAPES[shape], 8192, 32))))
            print(f"  {over}: " + " ".join(f"{r:.3f}" for r in res), flush=True)
        ml.TUNE["gpu"] = base
    print("== 5. one fused step's kernels after the sweep, 4096x1024 T=8192 N=32")
    kernel_table(step_fn("fused", make_inputs(*SHAPES["4096x1024"], 8192, 32)))


if __name__ == "__main__":
    main()
