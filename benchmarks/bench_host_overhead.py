"""Python-side host cost of one fused_multi_lora fwd+bwd, every Triton launch replaced by a counter.

    python3 benchmarks/bench_host_overhead.py [--label TEXT]

What it isolates: everything the op does on the host *except* launching kernels: argument
checks, the autograd Function, launch-plan lookups, buffer allocations, the two cuBLAS addmm
calls (here on CPU, tiny). It runs on any CPU (the kernels are selected through the
interpreter switch but never executed), so host-side changes can be measured without a GPU.
The GPU host adds the launches themselves on top (docs/kernels_log.md §3b). Reports the best of
5 repeats of 2,000 calls per path, next to a plain F.linear fwd+bwd, and appends a row per
path to benchmarks/results/host_overhead.csv.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # take the Triton branch of fused_multi_lora on CPU

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kernels  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402
from kernels import launch as launch_split  # noqa: E402
from kernels import launch_fused, launch_gemm  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "host_overhead.csv")
COLUMNS = ["date", "machine", "torch", "path", "fused_us", "base_us", "launches_per_call", "label"]


def _time(fn, calls: int = 2000, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        for _ in range(50):
            fn()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    counted = {"n": 0}

    def count_launch(jit_fn, grid, call_args, meta):
        """Same signature as kernels.fast_launch.launch; counts instead of running a kernel, so
        only the op's own host work is timed (the outputs stay uninitialised: nothing reads them)."""
        counted["n"] += 1

    real = launch_split.launch, launch_fused.launch, launch_gemm.launch
    launch_split.launch = launch_fused.launch = launch_gemm.launch = count_launch
    try:
        rows = _measure(counted, args.label)
    finally:
        launch_split.launch, launch_fused.launch, launch_gemm.launch = real
    append_results(OUT, COLUMNS, rows)


def _measure(counted: dict, label: str) -> list[dict]:
    """One row per kernel path: the op's fwd+bwd and a plain F.linear fwd+bwd, in µs per call."""
    t_tokens, d, n = 64, 64, 8
    x = torch.randn(t_tokens, d, requires_grad=True)
    w = torch.randn(d, d)
    a = torch.randn(n, 16, d, requires_grad=True)
    b = torch.randn(n, d, 16, requires_grad=True)
    dy = torch.randn(t_tokens, d)
    lay = kernels.make_layout([t_tokens // n] * n, [16] * n, [2.0] * n)

    def fused():
        y = kernels.fused_multi_lora(x, w, a, b, layout=lay)
        torch.autograd.grad(y, (x, a, b), dy)

    def base():
        torch.autograd.grad(torch.nn.functional.linear(x, w), (x,), dy)

    rows = []
    for path, pair in (("split", False), ("fused", False), ("fused", True), ("stream", False),
                       ("gemm", False)):  # fmt: skip
        kernels.TUNE.update(path=path, wgrad_pair=pair)
        counted["n"] = 0
        fused()
        per_call = counted["n"]
        rows.append(dict(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                         machine=f"{platform.machine()} {os.cpu_count()} cpus", torch=torch.__version__,
                         path=path + ("+pair" if pair else ""), fused_us=f"{_time(fused):.1f}",
                         base_us=f"{_time(base):.1f}", launches_per_call=per_call, label=label))
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
