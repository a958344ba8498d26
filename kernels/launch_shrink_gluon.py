"""Launcher of the Gluon shrink (kernels/shrink_gluon.py): the split-K shrink of the stream and
gemm paths on Hopper. ``launch._shrink`` calls :func:`shrink_gluon` when :func:`shrink_gluon_ok`;
anywhere else (and after any Gluon failure, launch_gemm.GLUON_FAILED) the Triton shrink runs."""

from __future__ import annotations

import torch

from .fast_launch import launch
from .launch import TUNE, _n_sms, _plan_key, _tma_ok, zeroed_workspace
from .launch_gemm import _gluon_kernel, gluon_desc, gluon_device_ok
from .layout import MultiLoraLayout

BOX = 64  # K per step and ranks per W box (kernels/shrink_gluon.py BOX_K)


def shrink_gluon_ok(x: torch.Tensor, w: torch.Tensor, kmajor: bool, layout: MultiLoraLayout,
                    cfg: dict) -> bool:  # fmt: skip
    """Whether ``launch._shrink`` runs the Gluon shrink: launch_gemm.gluon_device_ok (cfg
    sh_gluon), :func:`shrink_gluon_fits` and TMA-able x and w."""
    if not gluon_device_ok(x, cfg, "sh_gluon"):
        return False
    return shrink_gluon_fits(x, w, kmajor, layout, cfg) and _tma_ok(x) and _tma_ok(w.flatten(0, 1))


def shrink_gluon_fits(x: torch.Tensor, w: torch.Tensor, kmajor: bool, layout: MultiLoraLayout,
                      cfg: dict) -> bool:  # fmt: skip
    """The kernel's own requirements, whatever the device: 16-bit x and w of one dtype, ranks
    <= 64, w contiguous (viewed 2-D), K > 0 and in the backward (w = lora_b, rank-contiguous)
    a multiple of 64 (see the kernel's docstring), a ring of >= 2 stages (the producer runs
    STAGES - 1 steps ahead: with 1 the first wait never returns) and no more warps than the
    row tile has 16-row MMA slices."""
    if x.dtype not in (torch.bfloat16, torch.float16) or w.dtype != x.dtype:
        return False
    if layout.block_r > BOX or not w.is_contiguous():
        return False
    # ("auto" may pick 64 rows: the warps must fit the smaller tile)
    bm, k = (64 if cfg["sh_gl_bm"] == "auto" else cfg["sh_gl_bm"]), x.shape[1]
    if bm not in (64, 128) or 16 * cfg["sh_gl_warps"] > bm or cfg["sh_gl_stages"] < 2:
        return False
    return k > 0 and (kmajor or k % BOX == 0)


def auto_row_tile(n_tiles_64: int, n_progs: int) -> int:
    """The row tile (TUNE gpu sh_gl_bm "auto"): 64 rows when 64-row tiles would fill more than
    half of the programs and at most all of them (whole tiles, one wave), else 128 (whole
    tiles, or stream-K while they are few: gluon_units). n_tiles_64: the layout's 64-row tile
    count. Evidence (sweep rounds 11-12, session 13, H200, N = 8 / 32, each shrink alone, µs,
    64-row whole tiles against the 128-row kernel as shipped before): 69-91 tiles of 64 rows
    (T = 4096) 15.3-16.7 against 17.7-18.9 for the 4096-deep shrinks and 47.6-49.5 against
    51.6-53.1 for the 14336-deep ones; at 36-45 (T = 2048) 15.1 against stream-K's 12.1-12.4;
    at 133-158 (T = 8192) 29.5-32.4 against 21.9-26.7 (two waves)."""
    return 64 if n_progs / 2 < n_tiles_64 <= n_progs else 128


STREAM_K_MAX_TILES = 1 / 3  # stream-K only while the row tiles fill at most this share of programs


def gluon_units(n_tiles: int, k_steps: int, n_progs: int, cfg: dict) -> int:
    """K steps (units) per program of the Gluon shrink. While the row tiles are few (at most
    STREAM_K_MAX_TILES of the ``n_progs`` programs), stream-K: their n_tiles · k_steps units
    shared evenly by the programs, each taking at least cfg sh_gl_min_steps (or one whole tile
    if shorter), so that a piece's epilogue is not paid for a handful of steps. Otherwise, or
    with cfg sh_gl_stream_k off, in deterministic mode or with TUNE split_k == 1: whole tiles,
    as evenly as whole tiles allow (no partial sums). TUNE split_k = s > 1 (tests): ranges of
    cdiv(k_steps, s) units, so most tiles are shared by s or s + 1 programs.

    Why the gate (sweep round 10 and the layer step, session 12, H200, 132 programs): a tile
    shared by programs costs each of them about 5 µs more (partial store, fence, ticket, sum;
    the cause inside that was not profiled), which the idle SMs repay only when most are idle:
    x of 4096², N = 32 alone at 32 tiles (T = 2048) 12.3 µs stream-K against 16.0 whole; 45
    tiles (T = 4096) 22.7 against 18.0; 80 tiles (T = 8192) 35.2 against 25.6. In the layer
    step 37 tiles (T = 4096, N = 8): 0.450 against 0.472 ms; at 69-157 tiles whole tiles were
    as fast or faster (up to 3 %)."""
    split = TUNE["split_k"]
    if split is not None and split > 1 and cfg.get("sh_gl_stream_k"):
        return -(-k_steps // split)
    few = n_tiles <= STREAM_K_MAX_TILES * n_progs
    if (not few or not cfg.get("sh_gl_stream_k") or split == 1
            or torch.are_deterministic_algorithms_enabled()):  # fmt: skip
        return k_steps * -(-n_tiles // n_progs)
    per = -(-(n_tiles * k_steps) // n_progs)
    return max(per, min(cfg["sh_gl_min_steps"], k_steps))


def gluon_plan(layout: MultiLoraLayout, k_steps: int, n_progs: int, cfg: dict,
               dev: torch.device) -> tuple[int, torch.Tensor, int]:  # fmt: skip
    """(row tile, the layout's device tile table at it, K steps per program) of one shrink."""
    bm = cfg["sh_gl_bm"]
    if bm == "auto":
        bm = auto_row_tile(len(layout.tile_array(64)), n_progs)
    tiles = layout.tiles(bm, dev)
    return bm, tiles, gluon_units(tiles.shape[0], k_steps, n_progs, cfg)


def gluon_part_slots(k_steps: int, units: int) -> int:
    """The most programs that can share one tile: a tile's k_steps consecutive units meet at
    most ceil((k_steps - 1) / units) + 1 ranges of ``units``."""
    return -(-(k_steps - 1) // units) + 1


def shrink_gluon(x, w, kmajor: bool, out, layout: MultiLoraLayout, scale: bool,
                 cfg) -> torch.Tensor:  # fmt: skip
    """OUT[T, block_r] = c_i x_i W_iᵀ (c_i when ``scale``) through the Gluon kernel; w is lora_a
    [N, r_max, K] (``kmajor``: W_i = A_i) or lora_b [N, K, r_max] (W_i = B_iᵀ). Returns out."""
    shrink_gluon_kernel = _gluon_kernel("shrink_gluon", "shrink_gluon_kernel")
    if not out.is_contiguous():  # OUT and PART share one row stride (out.stride(0))
        raise ValueError("shrink_gluon: out must be contiguous")
    dev, k = x.device, x.shape[1]
    k_steps = -(-k // BOX)
    progs = cfg["sh_gl_progs"] * _n_sms(dev)
    bm, tiles, units = layout.memo(_plan_key(cfg, "shrink_gluon", k, dev),
                                   lambda: gluon_plan(layout, k_steps, progs, cfg, dev))
    n_tiles = tiles.shape[0]
    if n_tiles == 0:
        return out
    split = units % k_steps != 0  # some tile shared by two or more programs
    atomic = split and cfg.get("sh_gl_part") == "atomic"
    if atomic:  # partial sums reduced into the zeroed workspace, and the tiles' tickets
        part, tickets = zeroed_workspace(dev, out.numel(), n_tiles)
    elif split:  # partial sums in slots (no zeros needed) and the tiles' tickets (all zeros)
        part = torch.empty((gluon_part_slots(k_steps, units), *out.shape), device=dev,
                           dtype=torch.float32)  # fmt: skip
        tickets = zeroed_workspace(dev, 1, n_tiles)[1]
    else:
        part = tickets = out  # never read
    x_desc, w_desc = gluon_desc(x, [bm, BOX]), gluon_desc(w.flatten(0, 1), [BOX, BOX])
    grid = -(-(n_tiles * k_steps) // units)  # every program has work
    launch(shrink_gluon_kernel, (grid,), (
        x_desc, w_desc, out, part, tickets, tiles, layout.ranks_tensor(dev),
        layout.scaling_tensor(dev), n_tiles, k_steps, units, w.shape[1], out.shape[1],
        out.stride(0), out.numel(),
    ), dict(
        W_KMAJOR=kmajor, APPLY_SCALE=scale, SPLIT_K=split, STAGES=cfg["sh_gl_stages"],
        PART_ATOMIC=atomic, num_warps=cfg["sh_gl_warps"],
    ))  # fmt: skip
    return out
