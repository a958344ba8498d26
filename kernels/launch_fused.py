"""Launchers of the default ("fused") path: ``shrink_expand`` and ``wgrad_pair``.

See kernels/multi_lora_fused_triton.py for what each kernel computes.
"""

from __future__ import annotations

import warnings

import torch

from . import multi_lora_triton as mlt
from .descriptors import triton_desc
from .fast_launch import launch
from .launch import (
    TUNE,
    _empty,
    _n_sms,
    _plan_key,
    _tma_ok,
    _wgrad,
    _wgrad_plan,
    dot_precision,
    rank_extent,
)
from .layout import MultiLoraLayout

# If the one-launch wgrad_pair kernel ever fails to build on a Triton version (it selects
# pointers in a runtime branch), the reason lands here and the two-launch wgrad is used instead.
# tests/kernels/test_multi_lora_gpu.py asserts this stays empty.
PAIR_FAILED: list[str] = []


def _pick_bm(layout: MultiLoraLayout, cfg: dict, device: torch.device) -> int:
    """Rows per shrink_expand program: the largest of 64/32/16 that still gives >= 1 wave.

    The grid is one program per row tile (no split-K), so small T needs smaller tiles to fill
    the SMs; larger tiles re-read A_i/B_i from L2 less often.
    """
    if cfg.get("bm_fused"):
        return int(cfg["bm_fused"])
    sms = _n_sms(device)
    for bm in (64, 32):
        if layout.tiles(bm, device).shape[0] >= sms:
            return bm
    return 16


def _se_plan(layout: MultiLoraLayout, n_out: int, backward: bool, cfg: dict,
             device: torch.device):  # fmt: skip
    """(rows per program, tile table, column splits, columns per split) of a shrink_expand.

    Column splits (TUNE["se_split"], None = this rule): in the forward, 2 programs per row tile
    when the tiles alone give under 2 waves of SMs; in the backward, none. Measured on the H200
    (lora_tiles.csv, rounds 2 and 3, N = 32): the split sped up the forward at every
    under-filled case (4096² T = 8192: 114 -> 92 us; 4096->14336: 316 -> 224 us) but slowed the
    backward at 4096² (T = 8192: 101 -> 116 us; T = 4096: 90 -> 147 us) and 4096->14336.
    """
    bm = _pick_bm(layout, cfg, device)
    tiles = layout.tiles(bm, device)
    bn = cfg["bn_fused"]
    split = TUNE["se_split"]
    if split is None:
        few = tiles.shape[0] < 2 * _n_sms(device)
        split = 2 if few and not backward and device.type == "cuda" else 1
    split = max(1, min(int(split), -(-n_out // bn)))
    n_per = -(-n_out // (split * bn)) * bn  # whole column blocks per split
    return bm, tiles, (-(-n_out // n_per) if n_out else 1), n_per


def shrink_expand(x, w, w_strides, v, v_strides, y, n_out: int, layout, scale_s: bool,
                  scale_y: bool, add: bool, cfg: dict) -> torch.Tensor:  # fmt: skip
    """S = c1·x_i W_iᵀ (returned, [T, block_r], x.dtype) and y (+)= c2·S V_iᵀ in place.

    w_strides = (adapter, rank, k) strides of W; v_strides = (adapter, n, rank) strides of V.
    ``y`` may be None with n_out = 0 (shrink only).
    """
    dev, (t, k) = x.device, x.shape
    backward = scale_s  # only the backward scales S (dS = s_i dY B_i)
    bm, tiles, split, n_per = layout.memo(_plan_key(cfg, "shrink_expand", n_out, backward, dev),
                                          lambda: _se_plan(layout, n_out, backward, cfg, dev))
    step = "se_bwd_" if backward else "se_fwd_"
    s = _empty((t, layout.block_r), dev, x.dtype)
    if tiles.shape[0] == 0:
        return s
    yy = s if y is None else y
    bk, bn = cfg[step + "bk"], cfg["bn_fused"]
    x_tma = "x" in cfg["se_tma"] and _tma_ok(x)
    y_tma = "y" in cfg["se_tma"] and y is not None and _tma_ok(y)
    launch(mlt.get_kernels().shrink_expand, (tiles.shape[0], split), (
        triton_desc(x, [bm, bk]) if x_tma else x, w, v, s, yy,
        triton_desc(y, [bm, bn]) if y_tma else None,
        tiles, layout.ranks_tensor(dev), layout.scaling_tensor(dev),
        k, n_out, n_per, rank_extent(w, k), x.stride(0), x.stride(1), *w_strides, *v_strides,
        s.stride(0), s.stride(1), yy.stride(0), yy.stride(1),
    ), dict(
        BLOCK_M=bm, BLOCK_R=layout.block_r, BLOCK_K=bk, BLOCK_N=bn,
        SCALE_S=scale_s, SCALE_Y=scale_y, ADD=add,
        # load each adapter operand along its contiguous axis (see _shrink_expand_kernel)
        W_ROWS=cfg["se_rows"] and w_strides[2] == 1,
        V_ROWS=cfg["se_rows"] and v_strides[2] == 1,
        DOT_PRECISION=dot_precision(x.dtype), UPCAST=cfg["upcast"], X_TMA=x_tma, Y_TMA=y_tma,
        num_warps=cfg["warps"], num_stages=cfg[step + "stages"],
    ))  # fmt: skip
    return s


def wgrad_pair(ds, x, s, dy, lora_a, lora_b, layout, cfg, need_a: bool, need_b: bool):
    """(grad lora_a or None, grad lora_b or None) in one launch; see _wgrad_pair_kernel."""
    dev = dy.device
    if PAIR_FAILED:
        da = _wgrad(ds, x, lora_a, False, layout, False, cfg) if need_a else None
        db = _wgrad(s, dy, lora_b, True, layout, True, cfg) if need_b else None
        return da, db
    n, r_max = lora_a.shape[0], lora_a.shape[1]
    d_in, d_out = lora_a.shape[2], lora_b.shape[1]
    n1, n2 = (d_in if need_a else 0), (d_out if need_b else 0)
    nb1, nb2 = -(-n1 // cfg["bn"]), -(-n2 // cfg["bn"])
    chunks, atomic, needs_zero = _wgrad_plan(layout, n1 + n2, cfg, dev, rank_rows=r_max)
    size_a, size_b = n * r_max * n1, n * r_max * n2
    buf_dtype = torch.float32 if atomic else lora_a.dtype
    flat = (torch.zeros if needs_zero else _empty)((size_a + size_b,), device=dev, dtype=buf_dtype)
    ga = flat[:size_a].view(n, r_max, n1)  # [N, r_max, d_in]
    gb = flat[size_a:].view(n, n2, r_max)  # [N, d_out, r_max]
    if chunks.shape[0] > 0 and nb1 + nb2 > 0:
        try:
            _launch_pair(chunks, nb1, nb2, ds, x, s, dy, ga, gb, layout, cfg, need_a, need_b,
                         n1, n2, r_max, atomic)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - fall back, but record why
            if mlt.interpret_mode():
                raise
            PAIR_FAILED.append(repr(exc)[:500])
            warnings.warn(f"wgrad_pair failed, using two wgrad launches: {exc!r}", stacklevel=2)
            return wgrad_pair(ds, x, s, dy, lora_a, lora_b, layout, cfg, need_a, need_b)
    if flat.dtype != lora_a.dtype:
        flat = flat.to(lora_a.dtype)
        ga = flat[:size_a].view(n, r_max, n1)
        gb = flat[size_a:].view(n, n2, r_max)
    return (ga if need_a else None), (gb if need_b else None)


def _launch_pair(chunks, nb1, nb2, ds, x, s, dy, ga, gb, layout, cfg, need_a, need_b,
                 n1, n2, r_max, atomic) -> None:  # fmt: skip
    dev = dy.device
    p1, q1 = (ds, x) if need_a else (s, dy)  # dummies are never dereferenced (NB1 = 0)
    p2, q2 = (s, dy) if need_b else (ds, x)
    launch(mlt.get_kernels().wgrad_pair, (chunks.shape[0], nb1 + nb2), (
        p1, q1, ga, p2, q2, gb, chunks, layout.ranks_tensor(dev), layout.scaling_tensor(dev),
        n1, n2, nb1, r_max,
        p1.stride(0), p1.stride(1), q1.stride(0), q1.stride(1),
        ga.stride(0), ga.stride(1), ga.stride(2),
        p2.stride(0), p2.stride(1), q2.stride(0), q2.stride(1),
        gb.stride(0), gb.stride(2), gb.stride(1),
    ), dict(
        BLOCK_T=cfg["bt"], BLOCK_R=layout.block_r, BLOCK_N=cfg["bn"],
        ATOMIC=atomic, DOT_PRECISION=dot_precision(dy.dtype), UPCAST=cfg["upcast"],
        num_warps=cfg["warps"], num_stages=cfg["wg_stages"],
    ))  # fmt: skip
