"""Launch each fused-path kernel once at one shape, for Nsight Compute to profile (H200).

Run on the GPU machine, e.g.:
    ncu --clock-control none -k regex:"shrink_expand|wgrad" --launch-skip 2 --launch-count 3 \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \\
        --section LaunchStats --section WarpStateStats \\
        python3 benchmarks/ncu_lora_kernels.py --shape 4096x4096 --tokens 8192

Launch order: shrink_expand forward and backward once each to build S and dS (the two launches
to skip), then shrink_expand forward, shrink_expand backward and the dA reduction: the three
kernels ncu reports, with the shipped tile settings. ``--split``: then also the split path's
forward shrink and expand (regex "shrink_kernel|expand_kernel", skip 0, count 2).

``--gluon-shrink``: instead, the Gluon shrink of x (kernels/shrink_gluon.py) three times:
whole row tiles, then every tile shared by 3 programs (TUNE split_k = 3: partial sums, tickets),
then the shipped rule; each once to warm up, once to profile (skip 1 of each pair). To see
where a shared tile's ≈ 5 µs per program goes (docs/kernels.md §5), with source counters:
    ncu --clock-control none -k regex:shrink_gluon --launch-skip 1 --launch-count 1 \
        --set full --import-source yes -o shrink_whole python3 benchmarks/ncu_lora_kernels.py \
        --gluon-shrink --tokens 8192      # then --launch-skip 3 (split 3), --launch-skip 5
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_multi_lora import SHAPES, make_inputs  # noqa: E402
from sweep_lora_tiles import kernel_fns  # noqa: E402

import kernels  # noqa: E402
from kernels import launch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="4096x4096", choices=list(SHAPES))
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--adapters", type=int, default=32)
    p.add_argument("--split", action="store_true", help="also the split path's shrink, expand")
    p.add_argument("--gluon-shrink", action="store_true",
                   help="only the Gluon shrink of x: whole tiles, 3-way shared tiles, shipped")
    args = p.parse_args()
    inp = make_inputs(*SHAPES[args.shape], args.tokens, args.adapters)
    cfg = launch.TUNE["gpu"]
    if args.gluon_shrink:
        profile_gluon_shrink(inp, cfg)
        return
    fns = kernel_fns(inp, cfg)
    for name in ("se_fwd", "se_bwd", "wg_dA"):
        fns[name][0]()
    if args.split:
        x, a, b = (inp[k].detach() for k in ("x", "a", "b"))
        lay = kernels.make_layout(inp["seg"], inp["ranks"], inp["scaling"], device="cuda")
        s = launch._shrink(x, a, a.stride(), lay, False, cfg)
        y = torch.empty(x.shape[0], b.shape[1], device="cuda", dtype=x.dtype)
        launch._expand(s, b, b.stride(), y, lay, True, False, cfg)
    torch.cuda.synchronize()


def profile_gluon_shrink(inp: dict, cfg: dict) -> None:
    """Six launches of the Gluon shrink of x (warm-up, profiled) x (whole 128-row tiles, tiles
    shared by 3 programs, the shipped rule); fails if the Triton shrink ran instead."""
    from kernels import launch_gemm
    from kernels.launch_shrink_gluon import shrink_gluon_ok

    x, a = inp["x"].detach(), inp["a"].detach()
    lay = kernels.make_layout(inp["seg"], inp["ranks"], inp["scaling"], device="cuda")
    for split, over in ((1, dict(sh_gl_bm=128)), (3, dict(sh_gl_bm=128)), (None, {})):
        launch.TUNE["split_k"] = split
        run_cfg = dict(cfg, sh_gluon=True, **over)
        if not shrink_gluon_ok(x, a, True, lay, run_cfg):
            raise RuntimeError(f"the Gluon shrink would not run with {over} on this device")
        fn_cfg = kernel_fns(inp, run_cfg)["sh_x"][0]
        for _ in range(2):
            fn_cfg()
    launch.TUNE["split_k"] = None
    torch.cuda.synchronize()
    if launch_gemm.GLUON_FAILED:
        raise RuntimeError(f"the Gluon shrink did not run: {launch_gemm.GLUON_FAILED}")


if __name__ == "__main__":
    main()
