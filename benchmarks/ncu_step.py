"""Per-kernel GPU times inside one real multi-LoRA layer step (fwd + bwd), by Nsight Compute.

Run on the GPU machine (ncu on the PATH):
    python3 benchmarks/ncu_step.py --paths stream,fused,gemm --shape 4096x4096 --tokens 8192

For each path this script re-runs itself under ``ncu --cache-control none --clock-control none
--nvtx --nvtx-include step --metrics gpu__time_duration.sum``: two warm-up steps, then one
step inside an NVTX start/end range "step", whose kernels ncu times one by one, in order, with the
caches as the preceding kernels left them (no flush). Rows (one per kernel, in launch order)
go to benchmarks/results/ncu_step.csv. The sum of a path's kernels, set against the step's
CUDA-graph replay time (bench_multi_lora.py), says how much of the step is kernels and how
much is gaps; set against each kernel timed alone (lora_tiles.csv), it says what running in
sequence costs each kernel.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import os
import shutil
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_multi_lora import FUSED_VARIANTS, SHAPES, make_inputs, step_fn  # noqa: E402

from benchmarks.results_csv import append_results  # noqa: E402

COLUMNS = ["date", "gpu", "torch", "triton", "shape", "T", "N", "path", "order", "kernel", "us"]
VARIANT = {"stream": "fused_stream", "fused": "fused_one", "gemm": "fused_gemm",
           "split": "fused_split", "base": "base"}  # fmt: skip


def run_step(path: str, shape: str, t: int, n: int) -> None:
    """The profiled application: two warm-up steps, then one step inside NVTX range "step"."""
    inp = make_inputs(*SHAPES[shape], t, n)
    fn = step_fn(VARIANT[path], inp)
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    # a start/end range (process-wide): the backward's kernels are launched from autograd's
    # device thread, which a push/pop range of this thread would not cover
    rng = torch.cuda.nvtx.range_start("step")
    fn()
    torch.cuda.synchronize()
    torch.cuda.nvtx.range_end(rng)


def profile(path: str, args) -> list[dict]:
    """Run this script's step under ncu; per-kernel rows in launch order."""
    ncu = shutil.which("ncu") or "/usr/local/cuda/bin/ncu"
    cmd = [ncu, "--cache-control", "none", "--clock-control", "none", "--print-units", "base", "--nvtx",
           "--nvtx-include", "step", "--metrics", "gpu__time_duration.sum", "--csv",
           "--page", "raw", sys.executable, os.path.abspath(__file__), "--app", path,
           "--shape", args.shape, "--tokens", str(args.tokens), "--adapters", str(args.adapters)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    start = out.find('"ID"')
    if start < 0:
        raise RuntimeError(f"no ncu table for path {path}:\n{out[-2000:]}")
    rows = list(csv.DictReader(io.StringIO(out[start:])))
    rows = [r for r in rows if r.get("ID", "").isdigit()]  # (the units row has no ID)
    return [dict(order=i, kernel=r["Kernel Name"][:80],
                 us=f"{float(r['gpu__time_duration.sum'].replace(',', '')) / 1e3:.1f}")  # ns -> us
            for i, r in enumerate(rows)]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--paths", default="stream,fused,gemm")
    p.add_argument("--shape", default="4096x4096", choices=list(SHAPES))
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--adapters", type=int, default=32)
    p.add_argument("--out", default="benchmarks/results/ncu_step.csv")
    p.add_argument("--app", default=None, help=argparse.SUPPRESS)  # (the profiled child)
    args = p.parse_args()
    if args.app:
        run_step(args.app, args.shape, args.tokens, args.adapters)
        return
    assert set(VARIANT.values()) <= set(FUSED_VARIANTS) | {"base"}
    import triton

    meta = dict(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=triton.__version__, shape=args.shape, T=args.tokens, N=args.adapters)  # fmt: skip
    for path in args.paths.split(","):
        rows = [dict(meta, path=path, **r) for r in profile(path, args)]
        append_results(args.out, COLUMNS, rows)
        total = sum(float(r["us"]) for r in rows)
        print(f"{path}: {len(rows)} kernels, {total:.1f} us", flush=True)
        for r in rows:
            print(f"   {r['us']:>8} us  {r['kernel']}", flush=True)


if __name__ == "__main__":
    main()
