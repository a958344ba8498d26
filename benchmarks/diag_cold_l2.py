"""Each multi-LoRA kernel alone with a warm and with a cold L2, GPU-only time (CUDA graphs).

Run on the GPU machine:  python3 benchmarks/diag_cold_l2.py [--out benchmarks/results/cold_l2.csv]

benchmarks/sweep_lora_tiles.py replays one kernel back to back, so up to the L2's 50 MB of its
inputs may still be cached from the previous replay; inside a training step the kernel before
it has usually evicted them. Here each kernel of the fused and stream paths (shipped tile
settings, N = 32) is timed twice from CUDA graphs of `reps` launches: back to back (hot, as in
the sweep) and with a 256 MB memset before every launch (cold: time of memset + kernel graph
minus time of the memset-only graph, per launch). Rows: hot_us, cold_us.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_multi_lora import SHAPES, make_inputs  # noqa: E402
from sweep_lora_tiles import kernel_fns  # noqa: E402

from benchmarks.results_csv import append_results  # noqa: E402
from kernels import launch  # noqa: E402

COLUMNS = ["date", "gpu", "triton", "kernel", "shape", "T", "N", "hot_us", "cold_us"]
CASES = [("4096x4096", 8192), ("4096x4096", 16384), ("4096x14336", 16384)]


def graph_ms(body, replays: int = 7) -> float:
    """Median ms of one replay of a CUDA graph capturing body() (run once before, uncaptured)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        body()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def hot_cold_us(fn, flush: torch.Tensor, reps: int = 20) -> tuple[float, float]:
    """(µs per launch back to back, µs per launch after evicting the L2)."""
    def hot():
        for _ in range(reps):
            fn()

    def cold():
        for _ in range(reps):
            flush.zero_()
            fn()

    def flush_only():
        for _ in range(reps):
            flush.zero_()

    per = 1e3 / reps
    return graph_ms(hot) * per, (graph_ms(cold) - graph_ms(flush_only)) * per


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/cold_l2.csv")
    args = p.parse_args()
    meta = dict(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                gpu=torch.cuda.get_device_name(), triton=triton.__version__)  # fmt: skip
    flush = torch.empty(256 * 1024**2 // 4, dtype=torch.int32, device="cuda")
    cfg = dict(launch.TUNE["gpu"])
    for shape, t in CASES:
        inp = make_inputs(*SHAPES[shape], t, 32)
        rows = []
        for name, (fn, _) in kernel_fns(inp, cfg).items():
            hot, cold = hot_cold_us(fn, flush)
            rows.append(dict(meta, kernel=name, shape=shape, T=t, N=32, hot_us=f"{hot:.1f}",
                             cold_us=f"{cold:.1f}"))  # fmt: skip
            print(f"{shape:>10} T={t:>5} {name:>10}: hot {hot:7.1f} us  cold {cold:7.1f} us", flush=True)
        append_results(args.out, COLUMNS, rows)
        del inp
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
