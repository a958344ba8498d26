"""Where the host time of one kernel launch goes, on a GPU machine (a diagnostic, no CSV).

    python3 benchmarks/diag_launch_cost.py [--case 4096x1024x4096x8] [--calls 400] [--dump DIR]

It records the launches of one eager fwd+bwd of the gemm path (``fast_launch.launch`` calls:
kernel, grid, arguments), then replays each launch alone ``--calls`` times and reports host µs
per launch (median of 5 repeats) for:
  * ``launch``: the whole ``fast_launch.launch`` call;
  * ``key``: building its specialisation key;
  * ``run``: the compiled kernel's launcher call (``kernel.run``) with prepared arguments;
  * ``fill``: time inside the driver's TMA-descriptor encoders per launch (each ``fill_*``
    function of ``triton.runtime.driver.active.utils`` is wrapped with a timer), and their count;
  * ``desc``: building one Gluon descriptor (``launch_gemm.gluon_desc``), ``empty``: one
    torch.empty on the device.
``--dump DIR`` also copies Triton's launcher sources there (the parts that differ between
Triton versions), for reading off the GPU machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_multi_lora import make_inputs, step_fn  # noqa: E402
from kernels import fast_launch, launch, launch_gemm, launch_shrink_gluon  # noqa: E402


def _median_us(fn, calls: int, repeats: int = 5) -> float:
    """Host µs per call of ``calls`` back-to-back calls after an idle GPU (median of
    ``repeats``). ``calls`` must stay under the driver's launch queue (about 1,000 launches),
    so that the host never waits for the GPU inside the timed loop."""
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t) / calls * 1e6)
    torch.cuda.synchronize()
    return statistics.median(out)


def _record(step) -> list[tuple]:
    seen = []
    real = fast_launch.launch

    def rec(jit_fn, grid, args, meta):
        seen.append((jit_fn, grid, args, meta))
        real(jit_fn, grid, args, meta)

    mods = (launch, launch_gemm, launch_shrink_gluon)
    saved = [m.launch for m in mods]
    for m in mods:
        m.launch = rec
    try:
        step()
    finally:
        for m, s in zip(mods, saved, strict=True):
            m.launch = s
    torch.cuda.synchronize()
    return seen


def _wrap_fills() -> dict:
    utils = triton.runtime.driver.active.utils
    stats = {}
    for name in [n for n in dir(utils) if n.startswith("fill_")]:
        fn = getattr(utils, name)
        stats[name] = [0, 0.0]

        def timed(*a, _fn=fn, _s=stats[name]):
            t = time.perf_counter()
            r = _fn(*a)
            _s[1] += time.perf_counter() - t
            _s[0] += 1
            return r

        setattr(utils, name, timed)
    return stats


def _time_launch(jit_fn, grid, a, meta, calls: int, fill_stats: dict) -> str:
    """One report line for one recorded launch (see the module docstring)."""
    dev = torch.cuda.current_device()
    key = (id(jit_fn), dev, *meta.items(), *[fast_launch._arg_key(v) for v in a])
    kernel = (fast_launch._COMPILED.get(key) or (None,))[0]
    name = getattr(jit_fn, "__name__", None) or getattr(getattr(jit_fn, "fn", None), "__name__", "?")
    full = _median_us(lambda: fast_launch.launch(jit_fn, grid, a, meta), calls)
    k_us = _median_us(lambda: (id(jit_fn), dev, *meta.items(), *[fast_launch._arg_key(v) for v in a]), calls)
    line = f"{name:28s} grid {str(grid):12s} args {len(a):2d}  launch {full:6.1f}  key {k_us:5.1f}"
    if kernel is None:
        return line + "  (not in the fast-launch cache)"
    g = (*grid, 1, 1)
    stream = torch._C._cuda_getCurrentRawStream(dev)
    consts = [meta[nm] for nm in jit_fn.arg_names[len(a):]]
    la = [*map(fast_launch._as_launch_arg, a)]
    for s in fill_stats.values():
        s[0], s[1] = 0, 0.0
    run = _median_us(lambda: kernel.run(g[0], g[1], g[2], stream, kernel.function, kernel.packed_metadata,
                                        None, None, None, *la, *consts), calls)
    per = 5 * calls
    n_fill = sum(s[0] for s in fill_stats.values())
    fill_us = sum(s[1] for s in fill_stats.values()) / per * 1e6
    return (line + f"  run {run:6.1f}  fill {fill_us:5.1f} ({n_fill / per:.1f}/launch)"
            f"  launcher {type(kernel.run).__module__}.{type(kernel.run).__name__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default="4096x1024x4096x8")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--dump", default="")
    args = ap.parse_args()
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
        root = os.path.dirname(triton.__file__)
        for rel in ("backends/nvidia/driver.py", "backends/driver.py", "runtime/jit.py",
                    "experimental/gluon/nvidia/hopper.py", "compiler/compiler.py"):
            if os.path.exists(os.path.join(root, rel)):
                shutil.copy(os.path.join(root, rel), os.path.join(args.dump, rel.replace("/", "__")))
    d_in, d_out, t, n = (int(v) for v in args.case.split("x"))
    print(f"torch {torch.__version__} triton {triton.__version__} {torch.cuda.get_device_name()}")
    inp = make_inputs(d_in, d_out, t, n)
    step = step_fn("fused", inp)
    for _ in range(3):
        step()
    launches = _record(step)
    fill_stats = _wrap_fills()
    x = inp["x"].detach()
    print(f"desc  {_median_us(lambda: launch_gemm.gluon_desc(x, [128, 64]), args.calls):7.1f} us")
    print(f"empty {_median_us(lambda: torch.empty((t, 64), device='cuda', dtype=torch.bfloat16), args.calls):7.1f} us")
    for jit_fn, grid, a, meta in launches:
        print(_time_launch(jit_fn, grid, a, meta, args.calls, fill_stats), flush=True)
    print("fast_launch.DISABLED", fast_launch.DISABLED)


if __name__ == "__main__":
    main()
