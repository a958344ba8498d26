"""Launcher of the Gluon shrink (kernels/shrink_gluon.py): the split-K shrink of the stream and
gemm paths on Hopper. ``launch._shrink`` calls :func:`shrink_gluon` when :func:`shrink_gluon_ok`;
anywhere else (and after any Gluon failure, launch_gemm.GLUON_FAILED) the Triton shrink runs."""

from __future__ import annotations

import torch

from .fast_launch import launch
from .launch import TUNE, _n_sms, _plan_key, _tma_ok, zeroed_workspace
from .launch_gemm import _smem_layout, gluon_device_ok
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
    bm, k = cfg["sh_bm"], x.shape[1]
    if bm not in (64, 128) or 16 * cfg["sh_gl_warps"] > bm or cfg["sh_gl_stages"] < 2:
        return False
    return k > 0 and (kmajor or k % BOX == 0)


def gluon_split(n_tiles: int, k_steps: int, cfg: dict) -> tuple[int, int]:
    """(split, steps per split): K splits per row tile. One program per item, and splits only
    while there are fewer than cfg sh_gl_items row tiles, keeping >= sh_gl_min_steps K steps per
    item. Measured on the H200 (sweep round 8, lora_tiles.csv, N = 32): every split costs
    time (x of 4096², T = 8192, 80 row tiles: 24.3 µs unsplit, 37.0 / 46.7 / 97.7 at 2 / 4 / 8
    splits), and 45 row tiles unsplit (T = 4096) beat 2 splits (17.7 against 18.6-18.9 µs): a
    program streaming one long K range moves about 40-60 GB/s, while each item's end (a
    drained pipeline, the partial-sum store, a GPU-scope fence and the ticket) costs
    microseconds; why so many was not found. TUNE split_k
    overrides; deterministic mode: 1 (the sum's order then never varies)."""
    split = TUNE["split_k"]
    if torch.are_deterministic_algorithms_enabled():
        split = 1
    if split is None:
        want = -(-cfg["sh_gl_items"] // max(n_tiles, 1))
        split = max(1, min(want, k_steps // cfg["sh_gl_min_steps"]))
    per = -(-k_steps // split)
    return -(-k_steps // per), per


def shrink_gluon(x, w, kmajor: bool, out, layout: MultiLoraLayout, scale: bool,
                 cfg) -> torch.Tensor:  # fmt: skip
    """OUT[T, block_r] = c_i x_i W_iᵀ (c_i when ``scale``) through the Gluon kernel; w is lora_a
    [N, r_max, K] (``kmajor``: W_i = A_i) or lora_b [N, K, r_max] (W_i = B_iᵀ). Returns out."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    from .shrink_gluon import shrink_gluon_kernel

    if not out.is_contiguous():  # OUT and PART share one row stride (out.stride(0))
        raise ValueError("shrink_gluon: out must be contiguous")
    dev, k = x.device, x.shape[1]
    bm, k_steps = cfg["sh_bm"], -(-k // BOX)
    tiles, split, per = layout.memo(_plan_key(cfg, "shrink_gluon", k, dev), lambda: (
        (tl := layout.tiles(bm, dev)), *gluon_split(tl.shape[0], k_steps, cfg)))  # fmt: skip
    n_tiles = tiles.shape[0]
    if n_tiles == 0:
        return out
    n_items = n_tiles * split
    if split > 1:  # partial sums (no zeros needed) and the tiles' tickets (all zeros)
        part = torch.empty((split, *out.shape), device=dev, dtype=torch.float32)
        tickets = zeroed_workspace(dev, 1, n_tiles)[1]
    else:
        part = tickets = out  # never read
    desc = GluonDescriptor.from_tensor
    x_desc = desc(x, [bm, BOX], _smem_layout((bm, BOX), x.dtype))
    w_desc = desc(w.flatten(0, 1), [BOX, BOX], _smem_layout((BOX, BOX), x.dtype))
    grid = min(n_items, cfg["sh_gl_progs"] * _n_sms(dev))  # (persistent beyond that)
    launch(shrink_gluon_kernel, (grid,), (
        x_desc, w_desc, out, part, tickets, tiles, layout.ranks_tensor(dev),
        layout.scaling_tensor(dev), n_items, split, per, k_steps, w.shape[1], out.shape[1],
        out.stride(0), out.numel(),
    ), dict(
        W_KMAJOR=kmajor, APPLY_SCALE=scale, SPLIT_K=split > 1, STAGES=cfg["sh_gl_stages"],
        num_warps=cfg["sh_gl_warps"],
    ))  # fmt: skip
    return out
