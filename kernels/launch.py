"""Launch helpers of the multi-LoRA kernels: tuning table, grid heuristics, buffer allocation.

Four kernel paths compute the same thing (see kernels/multi_lora_triton.py for notation);
``TUNE["path"] = "auto"`` (default) picks one per call from the layer's shape
(:func:`auto_path`: "gemm" for narrow outputs, else "stream"; measured on the H200,
docs/kernels.md):

* ``"split"``: separate ``shrink``
  (split-K with fp32 atomics when T/BLOCK_M is small), ``expand`` and two ``wgrad`` launches.
  Per layer: fwd 2 Triton launches, bwd 4.
* ``"fused"``: ``shrink_expand`` (1 launch: shrink kept in registers, stored once, expand
  streamed over the output columns) + two ``wgrad`` launches (or one ``wgrad_pair`` launch with
  ``TUNE["wgrad_pair"]``). Per layer: fwd 1, bwd 3 (2). Fewer launches = less host time.
* ``"stream"``: the split path's ``shrink``, then the weight-gradient kernel streams token rows:
  as the forward's expand (one B_i column block per program, loaded once) and, in the
  backward, as dA with the dX delta written from the same dS tiles. Per layer: fwd 2, bwd 3.
* ``"gemm"`` (kernels/launch_gemm.py): the stream path's shrinks and weight-gradient
  reductions, with the base GEMM itself in Triton carrying the LoRA expand (y and dX, no
  cuBLAS). Per layer: fwd 2, bwd 4. Falls back to "stream" where TMA cannot run it.
"""

from __future__ import annotations

import functools

import torch

from . import multi_lora_triton as mlt
from .fast_launch import launch
from .layout import MultiLoraLayout

# Launch parameters; tests and the benchmark override entries (None = heuristic).
TUNE: dict = {
    # "auto" (choose_path), "split" (shrink/expand/wgrad), "fused" (shrink_expand + wgrad) or
    # "stream" (shrink + row-streaming expand; bwd: shrink + wgrad-with-dX + wgrad) or "gemm"
    # (shrink + Triton base GEMM with the expand in its epilogue; bwd the same for dX + 2 wgrad)
    "path": "auto",
    "wgrad_pair": False,  # fused path: dA+dB in one launch (never chosen by auto)
    "fuse_add": "addmm",  # "addmm" (delta + cuBLAS epilogue) or "kernel" (expand-and-add)
    "split_k": None,  # shrink split over K; None = fill ~2 waves of SMs
    # bwd_side: on the paths in bwd_side_paths ("stream", "gemm") the backward runs dB on a
    # second CUDA stream beside the shrink of dY ("db"), and on the gemm path dA too, beside
    # the dX GEMM, enqueued after it ("db+da") or before it ("db+da_before"); None: one stream
    # (kernels/side_stream.py). Interleaved layer A/B (run 16:33Z, ab_layer.csv, 12 rounds,
    # N = 32 / 64): "db+da_before" on the gemm path -1.0 to -4.9 % (4096->1024, T = 4096:
    # 0.1669 -> 0.1587 ms; 4096², T = 4096 to 8192: -1.0 to -1.2 %), faster in 9-12 of 12
    # rounds; "db" alone -0.2 to -1.8 %. dA after the GEMM against before it (run 16:56Z, 18
    # cells of 4096² and 4096->1024): faster in 12 cells, by up to 2.6 % (N = 32 / 64), slower
    # in 6 (N = 8, by 0.2-1.7 %): shipped. On the stream path
    # (MLP shapes, dB moved alone) within +-0.3 % at N = 32 (won 6-7 of 12); run 16:49Z:
    # -0.4 to -1.7 % at T = 4096 (N = 8 / 64, won 7-9), +0.3 / +0.5 % at T = 8192 (won 5-6),
    # so it stays off there (each fork and join also costs host time in eager mode).
    "bwd_side": "db+da",
    "bwd_side_paths": ("gemm",),
    # bwd_side_when: "gpu_bound" forks only under CUDA-graph capture or, in eager mode, when
    # the previous backward on the stream has not finished on the GPU (side_stream.
    # worth_forking; eager host-bound layers measured 0.04-0.31 ms slower per fwd+bwd with the
    # fork, docs/kernels_log.md §3n); "always" forks whenever bwd_side asks
    "bwd_side_when": "gpu_bound",
    "narrow_s": True,  # stream / gemm paths: the shrink writes S and dS in x.dtype (else fp32)
    "se_split": None,  # shrink_expand: programs per row tile sharing its columns; None = heuristic
    "wgrad_chunk": None,  # tokens per weight-gradient program; None = heuristic
    "wgrad_waves": 2.0,  # reductions split segments over tokens below this many waves
    # upcast: give tl.dot fp32 operands (the interpreter's bf16 dot is broken, see multi_lora_triton)
    # Per-kernel overrides, from the H200 sweeps of 2026-11-29 (benchmarks/sweep_lora_tiles.py,
    # rows in benchmarks/results/lora_tiles.csv): wg_stages, the weight-gradient kernels'
    # pipeline depth (2 beat 3 on every shape, 3-10 %); se_fwd_* / se_bwd_*, the forward and
    # backward shrink_expand (their operands are laid out differently: the forward reads A_i
    # along k, the backward B_i along r), each 5-15 % faster than the shared bk / stages.
    # ex_cols / ex_stages: output columns per program of the split path's expand and its
    # pipeline depth (ex_cols = bn, stages 1 is the one-block-per-program kernel of 2026-11-28).
    # se_rows: shrink_expand loads a k- or r-contiguous adapter operand along that axis.
    # se_tma: shrink_expand reads x ("x") and / or stores y ("y") through TMA descriptors.
    # sh_bm / sh_warps: the split-K shrink's row tile and warps (round 5: 128 rows, 8 warps
    # beat 64 / 4 by 25-32 % at T >= 8192 on the 4096-deep shapes).
    # gm_*: the gemm path's Triton GEMM (tile rows / columns / K step, warps, stages, GROUP_M
    # row tiles per L2 group, gm_persist programs per SM or 0 = one per tile); from
    # benchmarks/diag_gemm_lora.py (2026-11-29, gemm_lora.csv): 128 x 256 x 64, 8 warps,
    # 3 stages is at cuBLAS speed, 128 x 128 and 256 x 128 were 5-15 % slower; two programs
    # per SM (128 x 128 x 2 stages, 4 warps) 25-30 % slower, no smaller LoRA cost (10:56Z).
    # gm_gluon: on Hopper the gemm path runs kernels/gemm_lora_gluon.py (same tiles; LoRA as
    # extra pipeline steps) instead: in the layer step (runs 11:02Z, 11:08Z) 5-8 % faster at
    # 4096->1024 (the k/v projections, where the auto rule takes the gemm path) and 0-3 % at
    # 4096², T = 4096; the isolated GEMM's LoRA term +29-34 µs against +41-46 at 4096²,
    # T = 8192, and +16 against +27 in the k/v backward.
    # gm_peel: the Gluon GEMM's base steps in a loop without the producer's tile-switch and
    # LoRA branches (77-81 SASS instructions and 4 CTA barriers per step against 191-207 and
    # 7). Off: in the layer step within 0-2 % of the general loop (§3j).
    # gm_rank_k: the Gluon GEMM's LoRA steps run their wgmma over 16, 32 or 64 ranks (the least
    # that holds the adapter's rank) instead of all 64, so V's rank padding needs no masking
    # pass for ranks 16, 32 and 64 (the pass cost about 6 µs per forward and 20 per backward
    # GEMM at 4096², T = 8192, §3i); -14 to -19 µs per 4096² layer step at T = 8192 (§3k).
    # gm_s_regs (needs gm_rank_k): in tiles holding several adapters, S goes to the LoRA wgmma
    # from registers with other adapters' rows zeroed there, instead of a shared-memory
    # masking pass (store, fence, CTA barrier) per step. On since session 14: in the
    # interleaved layer A/B (run 16:2xZ, ab_layer.csv, N = 64, 20 rounds) 1.0-1.4 % faster at
    # 4096² (T = 4096 / 8192: won 21 / 16 of 21 rounds) and 1.4 % at 4096->1024, T = 4096
    # (21 of 21). (Tried in session 13 and removed, no gain: the fence and barrier only after a
    # pass that stored; one wgmma kept in flight across steps in the GEMM and the shrink.)
    # gm_gl_stages / gm_epi_halves: the Gluon GEMM's ring depth (gm_stages is the Triton
    # GEMM's, whose 4 stages do not fit) and C stored in two [BM, BN / 2] halves through one
    # buffer of that size, which leaves room for the fourth stage (session 13). 4 stages with
    # halves against 3 with one store, interleaved layer A/B (run 15:4xZ, ab_layer.csv): faster
    # in all 14 cells of 4096² and 4096->1024 (17-20 of 20 rounds), by 0.5-2 % (-1.4 to
    # -26 µs); the halves alone cost 1-2 % (run 15:3xZ).
    # gm_side_fit: (ring stages, registers per thread) of the gemm path's dX GEMM while dA runs
    # beside it on the side stream (bwd_side "db+da"; multi_lora._side_fit), None = as the
    # forward's. The shipped GEMM (4 stages: 229 KB; 234 registers x 256 threads) leaves no
    # room on an SM for another program, so dA only ran in the GEMM's last, partial pass;
    # with (3, 200) (180 KB, 51,200 registers) one dA program (4 warps x 96 registers, 48 KB)
    # fits beside each GEMM program and streams x while the GEMM computes
    # (benchmarks/diag_coresidency.py: the dX GEMM + dA at 4096->1024, T = 4096, N = 32, 78.2 ->
    # 75.3 µs, the GEMM alone 63.3 -> 63.7). Interleaved layer A/B (session 17, run 20:37Z,
    # ab_layer.csv, 15 rounds): 4096->1024 T = 4096 -4.0 % (N = 32) / -3.7 % (N = 64), T = 8192
    # -1.6 %; 4096² T = 4096 -1.0 % (N = 64) / -2.1 % (N = 8), T = 8192 N = 64 0.0 %; faster in
    # 14-15 of 15 rounds except the last (9). Larger GEMMs (runs 21:01Z / 21:03Z, 12 rounds): 4096->1024
    # T = 8192 N = 64 -3.1 %, T = 16384 N = 8 / 32 -3.8 / -0.4 %; 4096² T = 8192 N = 8 -0.5 %,
    # N = 32 +0.6 %, T = 16384 N = 8 0.0 %, N = 64 +0.1 %: on the 4096² GEMMs past T = 4096 the
    # lost stage costs what dA hides, so gm_side_fit_max_macs limits the fit to dX GEMMs of at
    # most T·d_out·d_in = 2^36 multiply-adds (4096² at T = 4096, 4096->1024 at T = 16384;
    # rerun with the limit, 21:03Z: 4096->1024 T = 16384 N = 8 -2.4 %, 4096² T = 8192 N = 32
    # equal, 4096² T = 4096 N = 32 +0.4 % on the median but won 8 of 12 rounds).
    # tests/kernels/test_generated_code.py checks the fit with CI's Triton. gm_maxnreg: that
    # register cap (None = none), set by multi_lora._side_fit.
    # sh_gluon: on Hopper the split-K shrink (x and dY, stream and gemm paths) runs
    # kernels/shrink_gluon.py: row tiles of sh_gl_bm rows ("auto": 64 when 64-row tiles fill
    # half to all of the SMs, else 128; launch_shrink_gluon.auto_row_tile; session 13: in the
    # interleaved layer A/B, run 15:20Z, ab_layer.csv: 0.2-1.8 % faster on 4096² and k/v at
    # T = 4096; 14336->4096 -10 to -30 µs there, but within the A/B's +-2 % at 15:36Z; same
    # kernels at other T), TMA ring of sh_gl_stages steps,
    # at most sh_gl_progs programs per SM. sh_gl_stream_k: while the row tiles fill at most a
    # third of the SMs, their K steps shared evenly by the programs (stream-K, session 12;
    # launch_shrink_gluon.gluon_units), each taking >= sh_gl_min_steps; else, and off, whole
    # tiles per program. sh_gl_part: a
    # shared tile's partial sums in a slot per piece ("slots", measured) or reduced into the
    # zeroed workspace as the Triton shrink does ("atomic", kernels/shrink_gluon.py
    # PART_ATOMIC: correct on the GPU, no gain, session 14, docs/kernels_log.md §3m). Sweep
    # round 8 (session 11, lora_tiles.csv, N = 32, alone, whole tiles): at T = 8192 24-26 µs
    # for 67 MB against the Triton shrink's 29.6-30.2, 7.1 against 13.5 for dY of the k/v
    # projections; at T = 4096 x 17.7 against 17.2 µs and dY of k/v 6.8 against 9.7. In the
    # layer step (run 12:23Z) faster in 18 of 24 cases (docs/kernels_log.md §3j).
    # wg_gluon: the weight-gradient reductions (dA, dB; not the stream path's dA + dX) through
    # kernels/wgrad_gluon.py on Hopper, wg_gl_stages-deep TMA ring, wg_gl_bn columns per item.
    # Off: correct on the GPU (20 tests, session 12) but slower than the Triton kernel in
    # sweep round 9 (lora_tiles.csv, N = 32, alone): dA 29.4 / 38.1-38.9 µs against 16.7 / 26.0
    # at 4096->1024 T = 4096 / 8192 and 4096², T = 8192; dB 5.5-7.1 against 5.5 at T = 4096;
    # and in the layer step (run 13:42Z) within -9 to +21 % of the shipped step, mostly behind.
    # Likely cause (not profiled): each item (a segment x 128 columns, 2-4 steps at these T / N)
    # ends with a shared-memory pass zeroing both boxes' rows past the segment and a store
    # from the MMA layout, with one program per SM, so nothing overlaps them.
    # sx_bn / sx_warps: the stream path's row-streaming expand (no reduction), 256 columns and
    # 8 warps: 0.88-0.93 of 128 / 4 on 8 of the 9 shape x T cases of the 03:50Z sweep
    # (lora_tiles.csv, kernel wg_expand; 1.02 on 4096->1024 at T = 16384). In the layer step
    # (run 05:5xZ, N = 32, variant fused_stream_x128 = 128 / 4) within +-3 %, the step's noise.
    "gpu": dict(bm=64, bk=64, bn=128, bt=64, warps=4, stages=3, wg_stages=2, bm_fused=None,
                bn_fused=128, se_fwd_bk=64, se_fwd_stages=4, se_bwd_bk=128, se_bwd_stages=3,
                se_rows=True, ex_cols=128, ex_stages=1, se_tma="", sh_bm=128, sh_warps=8,
                gm_bm=128, gm_bn=256, gm_bk=64, gm_warps=8, gm_stages=3, gm_gl_stages=4,
                gm_group=8, gm_persist=1, gm_gluon=True, gm_peel=False, gm_rank_k=True,
                gm_s_regs=True, gm_epi_halves=True, gm_side_fit=(3, 200),
                gm_side_fit_max_macs=2**36, gm_maxnreg=None,
                sx_bn=256, sx_warps=8,
                sh_gluon=True, sh_gl_bm="auto", sh_gl_progs=1, sh_gl_stages=8, sh_gl_warps=4,
                sh_gl_stream_k=True, sh_gl_min_steps=16, sh_gl_part="slots", wg_gluon=False,
                wg_gl_stages=8, wg_gl_bn=128, upcast=False),  # fmt: skip
    "interp": dict(bm=32, bk=32, bn=64, bt=32, warps=4, stages=1, wg_stages=1, bm_fused=32,
                   bn_fused=32, se_fwd_bk=32, se_fwd_stages=1, se_bwd_bk=32, se_bwd_stages=1,
                   se_rows=True, ex_cols=64, ex_stages=1, se_tma="", sh_bm=32, sh_warps=4,
                   gm_bm=32, gm_bn=32, gm_bk=32, gm_warps=4, gm_stages=1, gm_gl_stages=1,
                   gm_group=2, gm_persist=0, gm_gluon=False, gm_rank_k=False, gm_s_regs=False,
                   gm_epi_halves=False, sx_bn=64, sx_warps=4, sh_gluon=False,
                   sh_gl_bm=32, sh_gl_progs=1, sh_gl_stages=1, sh_gl_warps=4,
                   sh_gl_stream_k=False, sh_gl_min_steps=16, sh_gl_part="slots",
                   wg_gluon=False, wg_gl_stages=1, wg_gl_bn=64, upcast=True),  # fmt: skip
    "poison": False,  # tests: fill every internally allocated output with NaN first
}

_PROPS: dict[int, object] = {}
# Shared memory one program may use on an H200 (sm_90: 227 KB per block); a kernel above it
# compiles but fails at launch (OutOfResources).
SM90_SHARED_BYTES = 232448


def auto_path(t: int, d_in: int, d_out: int) -> tuple[str, bool]:
    """(path, wgrad_pair) the "auto" rule picks for a layer d_in -> d_out over t tokens.

    The gemm path replaces the stream path's LoRA deltas (y's in the forward, dX's in the
    backward: a write by the LoRA kernel and a read by cuBLAS's epilogue, 4·T·(d_out + d_in)
    bytes in 16 bits) with LoRA steps inside its own GEMM, which runs 0-4 % behind cuBLAS on
    the base work (4·T·d_in·d_out FLOPs). What it saves, relative to what it risks, scales
    with 1/d_in + 1/d_out, so the rule is a threshold on that sum: the gemm path when
    ``1/d_in + 1/d_out >= 2/4096``, i.e. d_in·d_out <= 2048·(d_in + d_out) (harmonic mean of
    the two sizes <= 4096), else the stream path. Where the gemm path cannot run (no TMA,
    fp32, rank > 64, unaligned rows) the call takes "stream" (multi_lora.py).

    Evidence: GPU-only (CUDA-graph) step times of benchmarks/bench_multi_lora.py on the H200
    (Llama-3.1-8B shapes, N = 8 / 32 / 64; docs/kernels_log.md §3f, §3k):
    * 4096->1024 (k/v; harmonic mean 819): the gemm path as fast or faster than the stream
      path in all 11 runs before it became the rule (§3f), 0-14 %.
    * 4096² (2048): since the Gluon GEMM's LoRA MMA stops at the rank (TUNE gpu gm_rank_k,
      session 12) the gemm path was faster in 17 of 18 cases at T = 2048-16384 (0.4-5 %; a
      tie at T = 8192, N = 64); before it, 2-5 % ahead at T <= 4096 and behind at 8192.
    * 4096<->14336 (3186): the stream path ahead in 9 of 12 cases (to 5 %; session 12).
    wgrad_pair saves one launch of host time but is 10-30 % slower on the GPU: never picked.
    """
    return ("gemm" if d_in * d_out <= 2048 * (d_in + d_out) else "stream"), False


def narrow_outputs_rule(d_in: int, d_out: int) -> tuple[str, bool]:
    """The auto rule before session 12 (docs/kernels_log.md §3f): the gemm path only for narrow
    outputs (4·d_out <= d_in, the k/v projections), else the stream path. What "auto" picks
    under the Triton interpreter (choose_path), and the A/B baseline of
    benchmarks/ab_executor_rule.py."""
    return ("gemm" if 4 * d_out <= d_in else "stream"), False


# Largest rank padding (layout.block_r) at which each path's kernels fit in the 227 KB of shared
# memory one program may use on sm_90, by operand size in bytes: from Triton 3.6's compile
# metadata for the shipped tile settings (benchmarks/ptx_fingerprint.shared_memory, 2026-11-29;
# kept true by tests/kernels/test_generated_code.py). Above it a launch fails with
# OutOfResources (seen on the H200 for a variant of the fused path at rank 128, fp32). fp32's
# split path would fit at 256 too (192 KB) but is capped at 128: it never ran compiled there,
# and CI cannot afford to re-check fp32 tiles that large (minutes per compile on a CPU). The
# gemm path's own limit is gemm_ok's (block_r <= 64, 16-bit).
MAX_BLOCK_R = {"stream": {2: 256, 4: 128}, "split": {2: 256, 4: 128}, "fused": {2: 128, 4: 64},
               "gemm": {2: 64, 4: 64}}  # fmt: skip


def max_block_r(elem_size: int) -> int:
    """The largest rank padding any kernel path takes for operands of this size (bytes); above
    it a call runs the pure-torch reference."""
    return max(limits.get(elem_size, 0) for limits in MAX_BLOCK_R.values())


def fitting_path(path: str, block_r: int, elem_size: int) -> str:
    """``path`` if its kernels fit at this rank padding and operand size (bytes), else the first
    of "stream" and "split" that does (one does whenever block_r <= max_block_r(elem_size))."""
    for p in (path, "stream", "split"):
        if block_r <= MAX_BLOCK_R[p].get(elem_size, 0):
            return p
    raise RuntimeError(f"no kernel path takes rank padding {block_r} at {elem_size}-byte operands")


def choose_path(t: int, d_in: int, d_out: int, device: torch.device | None = None) -> tuple[str, bool]:
    """(path, wgrad_pair) for one layer call: :func:`auto_path` when TUNE["path"] is "auto",
    else TUNE["path"] / TUNE["wgrad_pair"] as set.

    Under the Triton interpreter (a CPU ``device``, or TRITON_INTERPRET=1) "auto" sends only
    the narrow outputs (4·d_out <= d_in) to the gemm path: there the gemm path computes the
    base GEMM itself, interpreted, where the stream path calls torch's matmul, and the square
    and small layers the GPU rule also sends there made the CPU test suite twice as slow
    (10.5 against 5 minutes, session 12). The narrow outputs keep the gemm path under test."""
    if TUNE["path"] == "auto":
        if device is not None and (device.type != "cuda" or mlt.interpret_mode()):
            return narrow_outputs_rule(d_in, d_out)
        return auto_path(t, d_in, d_out)
    if TUNE["path"] not in PATHS:
        raise ValueError(f'TUNE["path"] = {TUNE["path"]!r}: expected "auto" or one of {PATHS}')
    return TUNE["path"], bool(TUNE["wgrad_pair"])


PATHS = ("split", "fused", "stream", "gemm")  # TUNE["path"]'s values besides "auto"


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input_precision for operands of this dtype: "ieee" for fp32 (exact fp32 products,
    which the fp32 tests' 2e-5 tolerance needs), else "tf32", the default, which names only how
    fp32 operands would be rounded and leaves a 16-bit dot as it is."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _empty(shape, device, dtype) -> torch.Tensor:
    """torch.empty, or NaN-filled when TUNE["poison"] (so unwritten elements show up in tests)."""
    if TUNE["poison"]:
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(shape, device=device, dtype=dtype)


def _cuda_props(device: torch.device):
    """torch.cuda.get_device_properties of a CUDA device, cached (it is on every launch's path)."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _PROPS:
        _PROPS[idx] = torch.cuda.get_device_properties(idx)
    return _PROPS[idx]


def _n_sms(device: torch.device) -> int:
    return _cuda_props(device).multi_processor_count if device.type == "cuda" else 4


def _tma_ok(t: torch.Tensor) -> bool:
    """Whether a 2-D tensor can back a TMA descriptor: a Hopper-class GPU (or the interpreter),
    rows contiguous, base and row stride 16-byte aligned."""
    if t.device.type == "cuda" and not mlt.interpret_mode() and _cuda_props(t.device).major < 9:
        return False
    return tma_rows_ok(t.data_ptr(), t.stride(0), t.stride(1), t.element_size())


def tma_rows_ok(ptr: int, row_stride: int, col_stride: int, elem_size: int) -> bool:
    """TMA's layout rule for a 2-D operand (the part of :func:`_tma_ok` that needs no tensor,
    so that a caller can check a view without building it): rows contiguous, base address
    and row stride 16-byte aligned."""
    return col_stride == 1 and row_stride * elem_size % 16 == 0 and ptr % 16 == 0


def _cfg(device: torch.device) -> dict:
    """Tile settings for this device: TUNE["interp"] under the interpreter, else TUNE["gpu"]."""
    return TUNE["interp"] if device.type != "cuda" or mlt.interpret_mode() else TUNE["gpu"]


def _plan_key(cfg: dict, *extra) -> tuple:
    """Cache key of a launch plan on a layout: everything in TUNE/cfg that shapes it, plus the
    call's own sizes (so a TUNE change made by a test or benchmark is never served stale)."""
    return (*extra, tuple(cfg.values()), TUNE["split_k"], TUNE["se_split"], TUNE["wgrad_chunk"],
            torch.are_deterministic_algorithms_enabled())


def rank_extent(w: torch.Tensor, k: int) -> int:
    """r_max of an adapter weight w, lora_a [N, r_max, k] or lora_b [N, k, r_max] (k: its
    other axis; if k == r_max both readings agree): how many rank columns exist to load."""
    return w.shape[1] if w.shape[2] == k else w.shape[2]


def _split_k(n_tiles: int, k: int, cfg: dict, device: torch.device) -> tuple[int, int]:
    """(split, k_per_split) for the shrink kernel: aim at >= 2 programs per SM, >= 4 K-blocks each."""
    split = TUNE["split_k"]
    if torch.are_deterministic_algorithms_enabled():
        split = 1
    if split is None:
        want = max(1, -(-2 * _n_sms(device) // max(n_tiles, 1)))
        split = max(1, min(want, k // (4 * cfg["bk"])))
    k_per = -(-k // split)
    k_per = -(-k_per // cfg["bk"]) * cfg["bk"]
    return -(-k // k_per), k_per


def _wgrad_chunk(layout: MultiLoraLayout, n_cols: int, cfg: dict, device: torch.device,
                 waves: float = 2.0) -> int:  # fmt: skip
    """Tokens per weight-gradient program: split long segments so >= ~``waves`` waves of
    programs exist."""
    if torch.are_deterministic_algorithms_enabled():
        return max(1, layout.total_tokens)
    if TUNE["wgrad_chunk"] is not None:
        return int(TUNE["wgrad_chunk"])
    n_blocks = -(-n_cols // cfg["bn"])
    want_chunks = max(1, -(-int(waves * _n_sms(device)) // n_blocks))
    # at least 16 token steps per program: shorter chunks cost more in fp32 atomics than they
    # gain in parallelism (dB of 4096->1024 at T = 8192: 256-token chunks 28 us, 1024 10 us)
    chunk = max(layout.total_tokens // want_chunks, 16 * cfg["bt"])
    return -(-chunk // cfg["bt"]) * cfg["bt"]


def _wgrad_plan(layout: MultiLoraLayout, n_cols: int, cfg: dict, device: torch.device,
                reduce: bool = True, rank_rows: int = 0):  # fmt: skip
    """(chunk table, atomic, needs_zero) of a weight-gradient launch over n_cols columns,
    built once per layout (memoised on it under the current tile settings). needs_zero: the
    output must start zeroed, also when its ``rank_rows`` (the adapter tensors' rank extent)
    pass block_r: those rows belong to no program's tile. A reduction
    (``reduce``) splits segments over token chunks only while its unsplit grid would have
    fewer than TUNE["wgrad_waves"] waves of programs: a split costs fp32 atomics, a zeroed
    buffer and a cast. The expand-only launch (no reduction, no atomics) aims at 2 waves."""
    waves = TUNE["wgrad_waves"] if reduce else 2.0

    def build():
        chunk = _wgrad_chunk(layout, n_cols, cfg, device, waves)
        atomic = reduce and layout.max_chunks_per_adapter(chunk) > 1
        return layout.chunks(chunk, device), atomic, atomic or 0 in layout.seg_lens

    chunks, atomic, needs_zero = layout.memo(
        _plan_key(cfg, "wgrad", n_cols, device, waves, reduce), build)
    return chunks, atomic, needs_zero or rank_rows > layout.block_r


# Split-K scratch that is all zeros between launches, per (device, stream): a launch's
# programs add into it and the last one of each tile re-zeroes what it used (see
# multi_lora_triton._shrink_kernel). Keyed on the stream so that launches on concurrent streams
# never share one; grown (never shrunk) to the largest call seen. CUDA graphs captured on one
# stream share that stream's workspace: replay them one at a time (or on one stream), never
# concurrently. An outgrown workspace is kept alive (_RETIRED_WORKSPACES), never freed: a CUDA
# graph captured while it was current replays into its addresses. (Not handled: a workspace
# first created *during* a capture is zeroed only when the graph first replays, so eager calls
# on the capturing stream must not precede that replay.) The Gluon shrink uses only the tickets,
# and the fp32 sums too with TUNE gpu sh_gl_part "atomic".
_WORKSPACES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_RETIRED_WORKSPACES: list[tuple[torch.Tensor, torch.Tensor]] = []  # outgrown, kept alive


def zeroed_workspace(dev: torch.device, n_acc: int, n_tickets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 [>= n_acc], int32 [>= n_tickets]) scratch whose elements are all zero, and which
    every kernel using it leaves all zero again (self-cleaning: no memset per call)."""
    stream = torch.cuda.current_stream(dev).cuda_stream if dev.type == "cuda" else 0
    key = (dev, stream)
    acc, tickets = _WORKSPACES.get(key, (None, None))
    if acc is None or acc.numel() < n_acc or tickets.numel() < n_tickets:
        if acc is not None:  # CUDA graphs captured with it keep its addresses: never free it
            _RETIRED_WORKSPACES.append((acc, tickets))
        n_acc = max(n_acc, 0 if acc is None else acc.numel())
        n_tickets = max(n_tickets, 0 if tickets is None else tickets.numel())
        acc = torch.zeros(n_acc, device=dev, dtype=torch.float32)
        tickets = torch.zeros(n_tickets, device=dev, dtype=torch.int32)
        _WORKSPACES[key] = (acc, tickets)
    return acc, tickets


def _shrink(x, w, w_strides, layout, scale: bool, cfg, out_dtype=torch.float32) -> torch.Tensor:
    """OUT[T, block_r] (out_dtype) = c_i * x_i @ W_iᵀ; w_strides = (adapter, rank, k) strides
    of W. Split over K, the sums meet in fp32 (zeroed_workspace) and are written once."""
    dev, (t, k) = x.device, x.shape
    out = _empty((t, layout.block_r), dev, out_dtype)
    if _shrink_gluon(x, w, w_strides, out, layout, scale, cfg):  # (it plans its own tiles)
        return out
    tiles, split, k_per = layout.memo(_plan_key(cfg, "shrink", k, dev), lambda: (
        (tl := layout.tiles(cfg["sh_bm"], dev)), *_split_k(tl.shape[0], k, cfg, dev)))
    if tiles.shape[0] == 0:
        return out
    acc, tickets = zeroed_workspace(dev, out.numel(), tiles.shape[0]) if split > 1 else (out, out)
    launch(mlt.get_kernels().shrink, (tiles.shape[0], split), (
        x, w, out, acc, tickets, tiles, layout.ranks_tensor(dev), layout.scaling_tensor(dev),
        k, k_per, rank_extent(w, k), x.stride(0), x.stride(1), *w_strides, out.stride(0), out.stride(1),
    ), dict(
        BLOCK_M=cfg["sh_bm"], BLOCK_R=layout.block_r, BLOCK_K=cfg["bk"],
        ATOMIC=split > 1, APPLY_SCALE=scale, DOT_PRECISION=dot_precision(x.dtype), UPCAST=cfg["upcast"],
        GPU_FENCE=not mlt.interpret_mode(), num_warps=cfg["sh_warps"], num_stages=cfg["stages"],
    ))
    return out


@functools.cache
def _gluon_launchers():
    """The modules of the Gluon launchers (launch_gemm, launch_shrink_gluon,
    launch_wgrad_gluon), imported on first use: they import this module, so it cannot import
    them at its top. Cached because a function-level import costs 0.6 µs of host time on
    every call, and the launch path asked 4-6 times per layer fwd+bwd. Modules, not their
    functions, so that patches of their attributes (tests) are seen."""
    from . import launch_gemm, launch_shrink_gluon, launch_wgrad_gluon

    return launch_gemm, launch_shrink_gluon, launch_wgrad_gluon


def _shrink_gluon(x, w, w_strides, out, layout, scale: bool, cfg) -> bool:
    """Run the shrink through the Gluon kernel (kernels/launch_shrink_gluon.py) where it can
    run; False (nothing launched, or a Gluon failure: launch_gemm.try_gluon) elsewhere."""
    if w_strides[2] != 1 and w_strides[1] != 1:
        return False  # W_i is neither k- nor rank-contiguous: not a plain lora_a / lora_b
    lg, lsg, _ = _gluon_launchers()
    kmajor = w_strides[2] == 1
    if not lsg.shrink_gluon_ok(x, w, kmajor, layout, cfg):
        return False
    return lg.try_gluon("shrink", lsg.shrink_gluon, x, w, kmajor, out, layout, scale, cfg) is not None


def _expand(s, v, v_strides, out, layout, scale: bool, add: bool, cfg) -> None:
    """out[T, n] (+)= c_i * S_i @ V_iᵀ in place; v_strides = (adapter, n, rank) strides of V.

    Each program covers cfg["ex_cols"] output columns (whole BLOCK_N blocks) of one row tile.
    """
    dev, n_out = out.device, out.shape[1]
    tiles = layout.tiles(cfg["bm"], dev)
    if tiles.shape[0] == 0:
        return
    n_per = max(cfg["bn"], cfg["ex_cols"] // cfg["bn"] * cfg["bn"])
    grid = (tiles.shape[0], -(-n_out // n_per))
    launch(mlt.get_kernels().expand, grid, (
        s, v, out, tiles, layout.ranks_tensor(dev), layout.scaling_tensor(dev),
        n_out, n_per, s.stride(0), s.stride(1), *v_strides, out.stride(0), out.stride(1),
    ), dict(
        BLOCK_M=cfg["bm"], BLOCK_N=cfg["bn"], BLOCK_R=layout.block_r,
        ADD=add, APPLY_SCALE=scale, DOT_PRECISION=dot_precision(out.dtype), UPCAST=cfg["upcast"],
        num_warps=cfg["warps"], num_stages=cfg["ex_stages"],
    ))


def _wgrad(p, q, like, transpose_out: bool, layout, scale: bool, cfg,
           expand: tuple | None = None, tables_only: bool = False) -> torch.Tensor | None:  # fmt: skip
    """Per-adapter sum over the segment's tokens of p[t, r] q[t, n] -> grad shaped like ``like``.

    ``like`` is lora_a [N, r_max, n] (transpose_out False) or lora_b [N, n, r_max] (True).
    ``expand = (v, v_strides, y, add)`` also writes y[T, n] (+)= p_i @ V_i in the same launch,
    v_strides = (adapter, rank, n) strides of V (the backward's dX delta: p = dS, V_i = A_i).
    ``tables_only``: only build the layout's device tables this call reads (each is copied
    on first use, on the current stream) and return None. The backward does this for dB on
    its main stream before dB runs on the side stream while dA stays on the main one, so that
    no table is first copied on one stream and read on the other before they synchronise
    (kernels/side_stream.py).
    """
    if expand is None:  # Hopper, TUNE gpu wg_gluon (off): kernels/launch_wgrad_gluon.py
        lg, _, lwg = _gluon_launchers()
        if lwg.wgrad_gluon_ok(p, q, layout, cfg):
            if tables_only:  # (and the Triton kernel's below: a Gluon failure falls back to it)
                lwg.wgrad_gluon_tables(layout, q.device)
            else:
                out = lg.try_gluon("weight gradient", lwg.wgrad_gluon, p, q, like, transpose_out,
                                   layout, scale, cfg)  # fmt: skip
                if out is not None:
                    return out
    dev, n_cols = q.device, q.shape[1]
    r_ext = rank_extent(like, n_cols)
    chunks, atomic, needs_zero = _wgrad_plan(layout, n_cols, cfg, dev, rank_rows=r_ext)
    if tables_only:
        layout.ranks_tensor(dev), layout.scaling_tensor(dev)  # (what _row_stream reads)
        return None
    buf_dtype = torch.float32 if atomic else like.dtype
    out = (torch.zeros if needs_zero else _empty)(like.shape, device=dev, dtype=buf_dtype)
    s_a, s_r, s_n = (out.stride(0), out.stride(2), out.stride(1)) if transpose_out else out.stride()
    _row_stream(p, q, out, (s_a, s_r, s_n), r_ext, chunks, atomic, scale, expand, layout, cfg)
    return out if out.dtype == like.dtype else out.to(like.dtype)


def _stream_expand(p, v, v_strides, y, add: bool, layout, cfg) -> None:
    """y[T, n] (+)= p_i @ V_i in place, by the weight-gradient kernel with its reduction off:
    programs own (token chunk, column block), load V_i's block once and stream the chunk's rows.
    v_strides = (adapter, rank, n) strides of V."""
    dev, n_cols = y.device, y.shape[1]
    cfg = dict(cfg, bn=cfg["sx_bn"], warps=cfg["sx_warps"])  # its own column block and warps
    chunks = _wgrad_plan(layout, n_cols, cfg, dev, reduce=False)[0]
    _row_stream(p, None, None, (0, 0, 0), rank_extent(v, n_cols), chunks, False, False,
                (v, v_strides, y, add), layout, cfg)  # fmt: skip


def _row_stream(p, q, out, out_strides, r_ext, chunks, atomic, scale, expand, layout, cfg) -> None:
    """Launch the weight-gradient kernel (reduction into ``out`` unless q is None, expand into
    y if ``expand``) over (token chunks) x (column blocks of q or y). ``r_ext``: the adapter
    weights' rank extent (rows of ``out`` written, rows of V that exist)."""
    if chunks.shape[0] == 0:
        return
    dev = p.device
    v, v_strides, y, add = expand if expand is not None else (p, (0, 0, 0), p, False)
    reduce = q is not None
    q, out = (q, out) if reduce else (y, y)  # (dummies are never dereferenced)
    n_cols = q.shape[1]
    grid = (chunks.shape[0], -(-n_cols // cfg["bn"]))
    launch(mlt.get_kernels().wgrad, grid, (
        p, q, out, chunks, layout.ranks_tensor(dev), layout.scaling_tensor(dev), v, y,
        n_cols, r_ext, p.stride(0), p.stride(1), q.stride(0), q.stride(1), *out_strides,
        *v_strides, y.stride(0), y.stride(1),
    ), dict(
        BLOCK_T=cfg["bt"], BLOCK_R=layout.block_r, BLOCK_N=cfg["bn"],
        ATOMIC=atomic, APPLY_SCALE=scale, DOT_PRECISION=dot_precision(q.dtype), UPCAST=cfg["upcast"],
        EXPAND=expand is not None, ADD=add, REDUCE=reduce,
        num_warps=cfg["warps"], num_stages=cfg["wg_stages"],
    ))  # fmt: skip
