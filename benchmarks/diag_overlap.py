"""Does running the backward's independent kernels on a second stream shorten it? (H200)

Run on the GPU machine:  python3 benchmarks/diag_overlap.py [--out CSV]

Backward of one multi-LoRA layer on the fused path, GPU time from CUDA-graph replay:
  serial   shrink_expand(dY -> dS, dX delta), the dX GEMM (beta = 1), dA, dB on one stream
           (what fused_multi_lora does today);
  overlap  dB = s dYᵀ S needs only the forward's S, so it runs on a side stream from the start;
           dA (needs dS) follows it there once shrink_expand is done; the main stream runs
           shrink_expand then the GEMM. The memory-bound reductions can use SMs the
           latency-bound shrink_expand and the GEMM's last wave leave idle.
Rows: benchmarks/results/overlap.csv.
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
from kernels import launch  # noqa: E402
from kernels.launch_fused import shrink_expand  # noqa: E402

COLUMNS = ["date", "gpu", "triton", "shape", "T", "N", "variant", "us"]


def backward_fns(inp: dict) -> dict:
    """name -> zero-arg fn of one layer's backward (fused path), serial and two-stream."""
    x, a, b, dy, w = (inp[k].detach() for k in ("x", "a", "b", "dy", "w"))
    lay = kernels.make_layout(inp["seg"], inp["ranks"], inp["scaling"], device="cuda")
    cfg = launch.TUNE["gpu"]
    d_in = x.shape[1]
    bt_str = (b.stride(0), b.stride(2), b.stride(1))
    at_str = (a.stride(0), a.stride(2), a.stride(1))
    y = torch.empty(x.shape[0], b.shape[1], device="cuda", dtype=x.dtype)
    s = shrink_expand(x, a, a.stride(), b, b.stride(), y, b.shape[1], lay, False, True, False, cfg)
    side = torch.cuda.Stream()

    def se_bwd():
        dx = torch.empty_like(x)
        ds = shrink_expand(dy, b, bt_str, a, at_str, dx, d_in, lay, True, False, False, cfg)
        return dx, ds

    def serial():
        dx, ds = se_bwd()
        dx.addmm_(dy, w)
        launch._wgrad(ds, x, a, False, lay, False, cfg)
        launch._wgrad(s, dy, b, True, lay, True, cfg)

    def overlap():
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            launch._wgrad(s, dy, b, True, lay, True, cfg)
        dx, ds = se_bwd()
        done = torch.cuda.Event()
        done.record(main)
        with torch.cuda.stream(side):
            side.wait_event(done)
            launch._wgrad(ds, x, a, False, lay, False, cfg)
        dx.addmm_(dy, w)
        main.wait_stream(side)

    def gemm_only():
        torch.mm(dy, w)

    return dict(serial=serial, overlap=overlap, gemm=gemm_only)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/overlap.csv")
    p.add_argument("--cases", default="4096x4096:8192,4096x4096:16384,4096x1024:8192,4096x14336:8192")
    args = p.parse_args()
    meta = dict(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                gpu=torch.cuda.get_device_name(), triton=triton.__version__)  # fmt: skip
    for case in args.cases.split(","):
        shape, t = case.split(":")
        fns = backward_fns(make_inputs(*SHAPES[shape], int(t), 32))
        rows = []
        for name, fn in fns.items():
            us = graph_ms(fn) * 1e3
            rows.append(dict(meta, shape=shape, T=int(t), N=32, variant=name, us=f"{us:.1f}"))
            print(f"{shape:>11} T={t:>5} {name:>8}: {us:8.1f} us", flush=True)
        append_results(args.out, COLUMNS, rows)


if __name__ == "__main__":
    main()
