"""Launcher of the Gluon weight-gradient reduction (kernels/wgrad_gluon.py): dA and dB of the
stream and gemm paths on Hopper, when TUNE gpu ``wg_gluon`` asks for it (off: correct on the
H200 but slower than the Triton kernel, docs/kernels_log.md §3k). ``launch._wgrad`` calls
:func:`wgrad_gluon` when :func:`wgrad_gluon_ok`; anywhere else the Triton kernel runs."""

from __future__ import annotations

import torch

from .fast_launch import launch
from .launch import SM90_SHARED_BYTES, _empty, _n_sms, _plan_key, _tma_ok, rank_extent
from .launch_gemm import _gluon_kernel, gluon_desc, gluon_device_ok
from .layout import MultiLoraLayout

BOX = 64  # tokens per step and ranks per P box (kernels/wgrad_gluon.py BOX_T, BOX_R)


def wgrad_gluon_ok(p: torch.Tensor, q: torch.Tensor, layout: MultiLoraLayout, cfg: dict) -> bool:
    """Whether ``launch._wgrad`` runs the Gluon reduction: launch_gemm.gluon_device_ok (cfg
    wg_gluon), :func:`wgrad_gluon_fits`, :func:`wgrad_balanced` (memoised on the layout) and
    TMA-able P and Q."""
    if not (gluon_device_ok(p, cfg, "wg_gluon") and wgrad_gluon_fits(p, q, layout, cfg)):
        return False
    n_cols, sms = q.shape[1], _n_sms(p.device)
    balanced = layout.memo(_plan_key(cfg, "wgrad_gluon_balanced", n_cols, sms),
                           lambda: wgrad_balanced(layout, n_cols, cfg, sms))  # fmt: skip
    return balanced and _tma_ok(p) and _tma_ok(q)


def wgrad_gluon_fits(p: torch.Tensor, q: torch.Tensor, layout: MultiLoraLayout, cfg: dict) -> bool:
    """The kernel's own requirements, whatever the device: 16-bit P and Q of one dtype (P = S
    or dS as the stream, gemm and fused paths keep them), ranks <= 64, a ring of >= 2 stages
    (with 1 the first wait never returns), a column block of 64, 128 or 256, and the ring
    within one program's shared memory (SM90_SHARED_BYTES: at 128 columns 9 stages, at 256
    only 5)."""
    if p.dtype not in (torch.bfloat16, torch.float16) or q.dtype != p.dtype:
        return False
    stages, bn = cfg["wg_gl_stages"], cfg["wg_gl_bn"]
    ring = stages * (BOX * BOX + BOX * bn) * p.element_size() + 1024  # (+ barriers, slack)
    return layout.block_r <= BOX and stages >= 2 and bn in (64, 128, 256) and ring <= SM90_SHARED_BYTES


def wgrad_balanced(layout: MultiLoraLayout, n_cols: int, cfg: dict, n_sms: int) -> bool:
    """Whether the items (non-empty segments x column blocks, no token splits) fill the SMs
    and balance: at least one item per SM, and the longest item at most twice a program's
    mean share of the steps. Elsewhere (few adapters, narrow outputs, one dominant segment)
    the Triton kernel runs: it splits long segments over token chunks."""
    n_cb = -(-n_cols // cfg["wg_gl_bn"])
    steps = [-(-n // BOX) for n in layout.seg_lens if n]
    items = len(steps) * n_cb
    if items < n_sms:
        return False
    return max(steps) <= 2 * sum(steps) * n_cb / min(items, n_sms)


def wgrad_gluon(p, q, like, transpose_out: bool, layout: MultiLoraLayout, scale: bool,
                cfg) -> torch.Tensor:  # fmt: skip
    """Per-adapter sum over the segment's tokens of p[t, r] q[t, n], shaped like ``like``
    (lora_a [N, r_max, n], or lora_b [N, n, r_max] when ``transpose_out``), c_i-scaled when
    ``scale``: what launch._wgrad returns, through the Gluon kernel."""
    wgrad_gluon_kernel = _gluon_kernel("wgrad_gluon", "wgrad_gluon_kernel")
    dev, n_cols, bn = q.device, q.shape[1], cfg["wg_gl_bn"]
    r_ext = rank_extent(like, n_cols)
    # rows of empty segments and ranks past the 64 the kernel computes are never stored
    zero = 0 in layout.seg_lens or r_ext > BOX
    out = (torch.zeros if zero else _empty)(like.shape, device=dev, dtype=like.dtype)
    table, ranks, scaling = wgrad_gluon_tables(layout, dev)
    n_cb = -(-n_cols // bn)
    n_items = table.shape[0] * n_cb
    if n_items == 0:
        return out
    s_a, s_r, s_n = (out.stride(0), out.stride(2), out.stride(1)) if transpose_out else out.stride()
    p_desc, q_desc = gluon_desc(p, [BOX, BOX]), gluon_desc(q, [BOX, bn])
    launch(wgrad_gluon_kernel, (min(n_items, _n_sms(dev)),), (
        p_desc, q_desc, out, table, ranks, scaling, n_items,
        n_cb, n_cols, min(r_ext, BOX), s_a, s_r, s_n,
    ), dict(APPLY_SCALE=scale, STAGES=cfg["wg_gl_stages"], num_warps=4))  # fmt: skip
    return out


def wgrad_gluon_tables(layout: MultiLoraLayout, dev: torch.device) -> tuple:
    """(segments, ranks, scaling): the device tables wgrad_gluon reads, copied on first use on
    the current stream (segments: one row per non-empty segment, longest first)."""
    return layout.segments_longest_first(dev), layout.ranks_tensor(dev), layout.scaling_tensor(dev)
