"""Tile sweep of each multi-LoRA kernel on its own, GPU-only time (CUDA-graph replay).

Run on the GPU machine:  python3 benchmarks/sweep_lora_tiles.py [--budget-s 300]

For every tile configuration the four kernels of the fused path (forward shrink_expand,
backward shrink_expand, the dA and dB weight-gradient reductions) are timed separately at
Llama-3.1-8B shapes, N = 32 adapters, ranks from {16, 32, 64}. Each time is compared with the
bytes the kernel must move (its floor; `bytes` column) to give achieved GB/s. Rows are appended
to benchmarks/results/lora_tiles.csv. Configurations are visited outer-most (each compiles once,
shapes do not recompile: they are runtime ints), and the sweep stops cleanly at --budget-s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import sys
import time

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_multi_lora import SHAPES, graph_ms, make_inputs  # noqa: E402

import kernels  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402
from kernels import launch  # noqa: E402
from kernels import multi_lora as ml  # noqa: E402
from kernels.launch_fused import shrink_expand  # noqa: E402

CASES = [(s, t) for s in SHAPES for t in (8192, 16384)] + [("4096x4096", 4096)]
COLUMNS = ["date", "gpu", "triton", "kernel", "shape", "T", "N", "cfg", "us", "bytes", "gbps"]
# One change at a time from the defaults (TUNE["gpu"]), then a few combinations; about 16
# compiles per family keeps the sweep inside one device call.
_SE_ONE = [dict(), dict(bm_fused=32), dict(bm_fused=64), dict(bm_fused=128, warps=8),
           dict(bk=128), dict(bk=256), dict(bn_fused=64), dict(bn_fused=256), dict(warps=8),
           dict(stages=2), dict(stages=4)]  # fmt: skip
_SE_MIX = [dict(bk=128, warps=8), dict(bk=128, stages=4), dict(bk=128, bn_fused=256, warps=8),
           dict(bk=128, bn_fused=256, warps=8, stages=4), dict(bm_fused=32, bk=128, warps=8)]  # fmt: skip
SE_CFGS = _SE_ONE + _SE_MIX
_WG_ONE = [dict(), dict(bt=32), dict(bt=128), dict(bn=64), dict(bn=256), dict(warps=8),
           dict(stages=2), dict(stages=4), dict(chunk=1024), dict(chunk=4096)]  # fmt: skip
_WG_MIX = [dict(bt=128, warps=8), dict(bn=256, warps=8), dict(bt=128, bn=256, warps=8),
           dict(bt=128, bn=64), dict(bt=128, warps=8, stages=4), dict(bn=256, warps=8, chunk=1024)]  # fmt: skip
WG_CFGS = _WG_ONE + _WG_MIX
# Round 2 (after round 1 set wg_stages=2 and the 1024-token chunk floor): the expand's columns
# split over `split` programs per row tile (TUNE["se_split"]), with larger row tiles.
# Both rounds ran with one bk / stages for both shrink_expand directions and (round 1) for the
# weight gradients too: ROUND_BASE below restores those settings under each round's overrides.
SE_CFGS_2 = [dict(split=sp, **o) for o in (dict(), dict(bm_fused=128, warps=8), dict(bk=128),
                                            dict(stages=4), dict(bm_fused=128, bk=128, warps=8))
             for sp in (1, 2, 4, 8)]  # fmt: skip
WG_CFGS_2 = [dict(), dict(bn=256, warps=8), dict(bt=32), dict(bn=256, warps=8, chunk=2048)]
# Round 3: the adapter operands loaded along their contiguous axis (se_rows, default) or as
# before, with the shipped defaults (split=None: the column-split rule).
SE_CFGS_3 = [dict(split=None), dict(split=None, se_rows=False), dict(split=None, stages=3),
             dict(split=None, bk=128), dict(split=None, bm_fused=128, warps=8)]  # fmt: skip
WG_CFGS_3 = [dict()]
# Round 4: shrink_expand reading x and storing y through TMA descriptors (se_tma), which moves
# those bytes without the L1/TEX path ncu found saturated (docs/kernels.md §4), alone and with
# the tile settings the register / shared-memory savings might now afford.
SE_CFGS_4 = [dict(split=None), dict(split=None, se_tma="y"), dict(split=None, se_tma="x"),
             dict(split=None, se_tma="xy"), dict(split=None, stages=6), dict(split=None, stages=8),
             dict(split=None, bk=128, stages=4), dict(split=None, se_tma="y", bm_fused=64),
             dict(split=None, bm_fused=64)]  # fmt: skip
# Round 5: the stream path's kernels: the weight-gradient kernel that also writes dX (wg_dAdX),
# the row-streaming expand of the forward (wg_expand), and the split-K shrink (sh_dY, sh_x).
WG_CFGS_5 = [dict(), dict(warps=8), dict(bt=128), dict(bt=128, warps=8), dict(chunk=2048),
             dict(bn=256, warps=8), dict(stages=3), dict(bt=32)]  # fmt: skip
SH_CFGS_5 = [dict(), dict(sh_bm=64, sh_warps=4), dict(sh_bm=256, sh_warps=8), dict(stages=4),
             dict(bk=128)]  # fmt: skip
# Round 6: the split-K shrink and the weight-gradient reductions after their fp32 atomics went
# from tl.atomic_add's default acq_rel order to relaxed (acq_rel compiled each to MEMBAR.ALL.GPU
# + a returning ATOMG + an L1 invalidate, sm_90 SASS): how far to split K, how short a chunk.
SH_CFGS_6 = [dict(), dict(split_k=1), dict(split_k=2), dict(split_k=4), dict(split_k=8),
             dict(split_k=16), dict(stages=4)]  # fmt: skip
WG_CFGS_6 = [dict(), dict(chunk=256), dict(chunk=512), dict(chunk=2048)]
# Round 7 (commit fe52fa1, reverted after it): the weight-gradient kernel walking wg_cols /
# sx_cols column blocks per program in one flat loop; measured no gain (docs/kernels_log.md §3g).
# Round 8 (session 11): the Gluon shrink (kernels/shrink_gluon.py, TUNE gpu sh_gluon) against
# the Triton one, its programs per SM, ring depth and K split. (Rows labelled bf16s-atomics: its
# first build, splits summed by fp32 atomics, 4 stages, 2 programs per SM; bf16s-part-s6p1-fill:
# partial sums stored, 6 stages, 1 program per SM, split to fill the SMs once.)
SH_CFGS_8 = [dict(sh_gluon=False), dict(), dict(sh_gl_stages=8), dict(sh_gl_progs=2, sh_gl_stages=4),
             dict(split_k=2), dict(split_k=4), dict(split_k=8), dict(split_k=1, sh_gl_stages=8),
             dict(sh_gl_stages=4)]  # fmt: skip
# Round 9 (written in session 11, run in session 12): the Gluon weight-gradient reduction
# (kernels/wgrad_gluon.py, TUNE gpu wg_gluon) against the Triton kernel, its column block and
# ring depth (wg_dA / wg_dB; the dA + dX and expand kernels stay in Triton).
WG_CFGS_9 = [dict(), dict(wg_gluon=True), dict(wg_gluon=True, wg_gl_bn=256, wg_gl_stages=5),
             dict(wg_gluon=True, wg_gl_bn=64), dict(wg_gluon=True, wg_gl_stages=4)]  # fmt: skip
# Round 10 (session 12): the Gluon shrink's stream-K split (TUNE gpu sh_gl_stream_k, shipped)
# against whole tiles per program (session 11's scheme), its minimum steps per program, and
# the Triton shrink.
SH_CFGS_10 = [dict(), dict(sh_gl_stream_k=False), dict(sh_gl_min_steps=8),
              dict(sh_gl_min_steps=32), dict(sh_gluon=False)]  # fmt: skip
# round 11 (session 13): the Gluon shrink's row tile, 64 rows against 128 (twice the tiles, so
# twice the SMs streaming x when the tiles are fewer than the SMs; W's bytes per step double)
SH_CFGS_11 = [dict(), dict(sh_gl_bm=64), dict(sh_gl_bm=64, sh_gl_stages=12),
              dict(sh_gl_bm=64, sh_gl_stream_k=False),
              dict(sh_gl_bm=64, sh_gl_stages=12, sh_gl_stream_k=False),
              dict(sh_gl_stream_k=False), dict(sh_gluon=False)]  # fmt: skip
# (round 12, session 13, swept sh_gl_lag, an option since removed: its rows in lora_tiles.csv
# of 15:1xZ carry "sh_gl_lag" in their cfg)
# round 13 (written after session 13's last GPU run): a shared tile's partial sums reduced
# into the zeroed workspace (sh_gl_part "atomic") against the slots, at 128 and 64 rows, with
# the shipped gate, with forced 3-way shares (split_k 3) and stream-K wherever tiles are few
SH_CFGS_13 = [dict(), dict(sh_gl_part="atomic"), dict(split_k=3, sh_gl_bm=128),
              dict(split_k=3, sh_gl_bm=128, sh_gl_part="atomic"),
              dict(split_k=3, sh_gl_bm=64, sh_gl_part="atomic"),
              dict(sh_gl_bm=128, sh_gl_part="atomic"), dict(sh_gluon=False)]  # fmt: skip
ROUNDS = {1: dict(se=SE_CFGS, wg=WG_CFGS), 2: dict(se=SE_CFGS_2, wg=WG_CFGS_2),
          3: dict(se=SE_CFGS_3, wg=WG_CFGS_3), 4: dict(se=SE_CFGS_4),
          5: dict(wg=WG_CFGS_5, sh=SH_CFGS_5), 6: dict(sh=SH_CFGS_6, wg=WG_CFGS_6),
          8: dict(sh=SH_CFGS_8), 9: dict(wg=WG_CFGS_9), 10: dict(sh=SH_CFGS_10),
          11: dict(sh=SH_CFGS_11), 13: dict(sh=SH_CFGS_13)}
# TUNE["gpu"] settings each round started from (round 3: the shipped ones)
_SE_SHARED = dict(se_fwd_bk=64, se_fwd_stages=3, se_bwd_bk=64, se_bwd_stages=3)
ROUND_BASE = {1: dict(_SE_SHARED, wg_stages=3), 2: dict(_SE_SHARED, wg_stages=2), 3: {}, 4: {},
              5: {}, 6: {}, 8: {}, 9: {}, 10: {}, 11: {}, 13: {}}


def kernel_fns(inp: dict, cfg: dict) -> dict:
    """name -> (zero-arg launch, bytes its floor moves) for one case and one cfg."""
    x, a, b, dy = (inp[k].detach() for k in ("x", "a", "b", "dy"))
    lay = kernels.make_layout(inp["seg"], inp["ranks"], inp["scaling"], device="cuda")
    t, d_in = x.shape
    d_out = b.shape[1]
    a_str, b_str = a.stride(), b.stride()
    bt_str = (b.stride(0), b.stride(2), b.stride(1))
    at_str = (a.stride(0), a.stride(2), a.stride(1))
    y = torch.empty(t, d_out, device="cuda", dtype=x.dtype)
    dx = torch.empty_like(x)
    s = shrink_expand(x, a, a_str, b, b_str, y, d_out, lay, False, True, False, cfg)
    ds = shrink_expand(dy, b, bt_str, a, at_str, dx, d_in, lay, True, False, False, cfg)
    r2 = 2 * t * lay.block_r
    s_dt = ml._s_dtype(x.dtype)
    s32, b_rn = s.float(), (b.stride(0), b.stride(2), b.stride(1))  # the stream path's S, V_i = B_iᵀ
    return {
        "se_fwd": (lambda: shrink_expand(x, a, a_str, b, b_str, y, d_out, lay, False, True,
                                         False, cfg), 2 * t * (d_in + d_out) + r2),
        "se_bwd": (lambda: shrink_expand(dy, b, bt_str, a, at_str, dx, d_in, lay, True, False,
                                         False, cfg), 2 * t * (d_in + d_out) + r2),
        "wg_dA": (lambda: launch._wgrad(ds, x, a, False, lay, False, cfg), 2 * t * d_in + r2),
        "wg_dB": (lambda: launch._wgrad(s, dy, b, True, lay, True, cfg), 2 * t * d_out + r2),
        "wg_dAdX": (lambda: launch._wgrad(ds, x, a, False, lay, False, cfg,
                                          expand=(a, a_str, dx, False)), 4 * t * d_in + r2),
        "wg_expand": (lambda: launch._stream_expand(s32, b, b_rn, y, False, lay, cfg),
                      2 * t * d_out + 2 * r2),
        # (S in x's dtype, as the shipped paths keep it, since round 8; rounds 5-6: fp32)
        "sh_dY": (lambda: launch._shrink(dy, b, bt_str, lay, True, cfg, s_dt), 2 * t * d_out + r2),
        "sh_x": (lambda: launch._shrink(x, a, a_str, lay, True, cfg, s_dt), 2 * t * d_in + r2),
    }  # fmt: skip


def gpu_us(fn) -> float:
    return graph_ms(fn, rep=20) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/lora_tiles.csv")
    p.add_argument("--budget-s", type=float, default=300.0)
    p.add_argument("--kernels", default="se,wg,sh")
    p.add_argument("--round", type=int, default=3,
                   help="1: tile sizes; 2: column splits; 3: operand orientation; 4: TMA; "
                   "5: dX in the dA kernel; 6: split-K and chunks with relaxed atomics; "
                   "8: the Gluon shrink; 9: the Gluon weight-gradient reduction; "
                   "10: the Gluon shrink's stream-K split; 11: its row tile; "
                   "13: its partial sums by atomics")
    p.add_argument("--adapters", default="32", help="adapter counts N, comma-separated")
    p.add_argument("--cases", default=None,
                   help="SHAPExT pairs, comma-separated (e.g. 4096x1024x4096); default: CASES")
    p.add_argument("--limit", type=int, default=None, help="only the first LIMIT configurations")
    p.add_argument("--label", default="", help="recorded in each row's cfg as 'label' (e.g. "
                   "which build of the kernels ran)")  # fmt: skip
    args = p.parse_args()
    t0 = time.time()
    meta = dict(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                gpu=torch.cuda.get_device_name(), triton=triton.__version__)  # fmt: skip
    cases = CASES if args.cases is None else [
        (c.rsplit("x", 1)[0], int(c.rsplit("x", 1)[1])) for c in args.cases.split(",")]
    inputs = {(*c, n): make_inputs(*SHAPES[c[0]], c[1], n) for c in cases
              for n in (int(v) for v in args.adapters.split(","))}  # fmt: skip
    base = dict(launch.TUNE["gpu"], **ROUND_BASE[args.round])
    # alternate the families, so a budget cut leaves both partly swept
    fams = ROUNDS[args.round]
    plan = [(fam, dict(c)) for cs in itertools.zip_longest(*fams.values())
            for fam, c in zip(fams, cs, strict=True) if c is not None]  # fmt: skip
    plan = [p_ for p_ in plan if p_[0] in args.kernels.split(",")][: args.limit]
    best: dict = {}
    for i, (fam, over) in enumerate(plan):
        if time.time() - t0 > args.budget_s:
            print(f"budget reached after {i} of {len(plan)} configurations", flush=True)
            break
        tag = json.dumps(dict(over, label=args.label) if args.label else over)
        launch.TUNE["wgrad_chunk"] = over.pop("chunk", None)
        launch.TUNE["split_k"] = over.pop("split_k", None)
        launch.TUNE["se_split"] = over.pop("split", 1)  # 1: the kernel as it was before splits
        if fam == "se":  # the sweep's bk / stages apply to both shrink_expand directions
            for key in ("bk", "stages"):
                if key in over:
                    over[f"se_fwd_{key}"] = over[f"se_bwd_{key}"] = over.pop(key)
        elif "stages" in over and fam == "wg":  # the weight-gradient kernels read wg_stages
            over["wg_stages"] = over.pop("stages")
        cfg = dict(base, **over)
        for case, inp in inputs.items():
            try:
                rows = []
                for name, (fn, nbytes) in kernel_fns(inp, cfg).items():
                    if not name.startswith(fam):
                        continue
                    us = gpu_us(fn)
                    rows.append(dict(meta, kernel=name, shape=case[0], T=case[1], N=case[2], cfg=tag,
                                     us=f"{us:.1f}", bytes=nbytes, gbps=f"{nbytes / us / 1e3:.0f}"))  # fmt: skip
                    key = (name, *case)
                    if key not in best or us < best[key][0]:
                        best[key] = (us, tag, nbytes / us / 1e3)
                append_results(args.out, COLUMNS, rows)
            except Exception as exc:  # noqa: BLE001 - a config may not fit; keep going
                print(f"ERROR {tag} {case}: {exc!r}"[:300], flush=True)
        print(f"[{time.time() - t0:5.0f}s] {fam} {tag} done", flush=True)
    launch.TUNE["wgrad_chunk"] = launch.TUNE["se_split"] = launch.TUNE["split_k"] = None
    print("== best per kernel and case (us, GB/s, cfg)")
    for key in sorted(best):
        us, tag, gbps = best[key]
        print(f"  {key[0]:>6} {key[1]:>11} T={key[2]:>5} N={key[3]:>2}: {us:8.1f} us "
              f"{gbps:6.0f} GB/s  {tag}")


if __name__ == "__main__":
    main()
