"""Where the host time of one eager fused_multi_lora fwd+bwd goes, on a GPU machine.

    python3 benchmarks/profile_host_gpu.py [--cases 4096x4096x4096x32,...] [--iters 200]
        [--variants fused_one_stream,...] [--rounds 5] [--deep 0|1] [--label TEXT]

For each case (d_in x d_out x T x N) it reports, per layer fwd+bwd:
  * wall ms of ``iters`` back-to-back eager steps with one synchronise at the end (when the
    host is the bottleneck, this is the host time), next to the same for a plain F.linear
    ("base") and for other bench_multi_lora variants, timed in interleaved rounds; one row per
    variant is appended to benchmarks/results/host_gpu.csv;
  * host µs spent inside each kernel launch (``fast_launch.launch`` timed with perf_counter,
    grouped by kernel name), and the count of launches;
  * the top functions of a cProfile of the same loop (own time), to find torch-side work.
bench_host_overhead.py measures the op's host cost without launches on any CPU; this script
adds the launches themselves, which only a GPU host can time.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import datetime as dt
import os
import pstats
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_multi_lora import make_inputs, step_fn  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402
from kernels import fast_launch  # noqa: E402

COLUMNS = ["date", "gpu", "torch", "triton", "shape", "T", "N", "variant", "wall_ms", "enqueue_ms",
           "iters", "rounds", "label"]


def _wall_ms(fn, iters: int) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters * 1e3


def _enqueue_ms(fn, iters: int = 20) -> float:
    """Host ms per step to enqueue ``iters`` steps after an idle GPU (no wait at the end): too
    few steps to fill the launch queue, so this is the host's own cost per step."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    dt = (time.perf_counter() - t) / iters * 1e3
    torch.cuda.synchronize()
    return dt


def _syncs(fn) -> list[str]:
    """Messages of the host-device synchronisations one step makes (torch's sync debug mode)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return [str(w.message)[:200] for w in caught]


def _gpu_busy(fn, steps: int = 5) -> None:
    """torch.profiler over ``steps`` steps: GPU kernel time per step against the wall, and the
    ops with the most CPU time."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) / steps * 1e3
    kern = [e for e in prof.events() if e.device_type.name == "CUDA"]
    busy = sum(e.device_time for e in kern) / steps / 1e3
    print(f"  profiler: wall {wall:.3f} ms/step, GPU kernels {busy:.3f} ms/step, "
          f"{len(kern) / steps:.1f} GPU ops/step", flush=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15,
                                    max_name_column_width=40), flush=True)


def _timed_launches(fn, iters: int) -> dict[str, list[float]]:
    """Host µs per launch by kernel name, with the launcher wrapped where each module calls it."""
    spent: dict[str, list[float]] = collections.defaultdict(list)
    real = fast_launch.launch

    def timed(jit_fn, grid, args, meta):
        t = time.perf_counter()
        real(jit_fn, grid, args, meta)
        spent[getattr(jit_fn, "__name__", str(jit_fn))].append((time.perf_counter() - t) * 1e6)

    mods = [m for m in list(sys.modules.values())  # every kernels module that imported it
            if m is not None and m.__name__.startswith("kernels.")
            and getattr(m, "launch", None) is real]
    for m in mods:
        m.launch = timed
    try:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    finally:
        for m in mods:
            m.launch = real
    return spent


def _wall_interleaved(fns: dict, iters: int, rounds: int) -> dict[str, float]:
    """Median over ``rounds`` of each step's wall ms (``iters`` back-to-back steps, one sync),
    the variants taking turns in every round so that drifts of this shared host hit all alike."""
    walls: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            walls[name].append(_wall_ms(fn, iters))
    return {name: sorted(w)[len(w) // 2] for name, w in walls.items()}


def profile_case(case: str, iters: int, variants: list[str], rounds: int, deep: bool) -> list[dict]:
    """Print the case's host breakdown; return one CSV row per variant (fused = the defaults,
    base = F.linear)."""
    d_in, d_out, t, n = (int(v) for v in case.split("x"))
    inp = make_inputs(d_in, d_out, t, n)
    fns = {v: step_fn(v, inp) for v in ["base", "fused", *variants]}
    print(f"== {d_in}x{d_out} T={t} N={n}", flush=True)
    walls = _wall_interleaved(fns, iters, rounds)
    rows = []
    for v, f in fns.items():
        enq = _enqueue_ms(f)
        print(f"  {v}: wall {walls[v]:.3f} ms (median of {rounds} rounds), enqueue {enq:.3f} ms",
              flush=True)  # fmt: skip
        rows.append(dict(shape=f"{d_in}x{d_out}", T=t, N=n, variant=v, wall_ms=f"{walls[v]:.4f}",
                         enqueue_ms=f"{enq:.4f}", iters=iters, rounds=rounds))
    if not deep:
        return rows
    fused = fns["fused"]
    print(f"  syncs in one step: {_syncs(fused)}", flush=True)
    _gpu_busy(fused)
    spent = _timed_launches(fused, iters)
    total = 0.0
    for name, us in sorted(spent.items(), key=lambda kv: -sum(kv[1])):
        per_step = sum(us) / iters
        total += per_step
        print(f"  launch {name:40s} {len(us) / iters:4.1f}/step  {per_step:7.1f} us/step "
              f"(median {sorted(us)[len(us) // 2]:6.1f} us)")
    print(f"  launches total {total:.1f} us/step", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(iters):
        fused()
    torch.cuda.synchronize()
    prof.disable()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(12)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="4096x4096x4096x32,4096x1024x4096x32")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--variants", default="fused_sh_triton,fused_gemm_triton",
                   help="more bench_multi_lora variants to time (wall and enqueue only)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the wall timing")
    p.add_argument("--deep", type=int, default=1,
                   help="also the profiler, per-launch host times and cProfile (0: walls only)")
    p.add_argument("--label", default="")
    p.add_argument("--out", default="benchmarks/results/host_gpu.csv")
    args = p.parse_args()
    stamp = dict(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                 gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                 triton=triton.__version__)  # fmt: skip
    rows = []
    for case in args.cases.split(","):
        rows += profile_case(case, args.iters, [v for v in args.variants.split(",") if v],
                             args.rounds, bool(args.deep))  # fmt: skip
    append_results(args.out, COLUMNS, [dict(stamp, **r, label=args.label) for r in rows])


if __name__ == "__main__":
    main()
