"""Differentiable multi-adapter LoRA linear: ``fused_multi_lora`` (public API + autograd Function).

For adapter i owning rows [o_i, o_i + seg_lens[i]) of the token axis::

    y[rows] = x[rows] @ weight.T + scaling[i] * (x[rows] @ lora_a[i, :r_i].T) @ lora_b[i, :, :r_i].T

Shapes: x [T, d_in]; weight [d_out, d_in] (frozen, nn.Linear layout); lora_a [N, r_max, d_in];
lora_b [N, d_out, r_max] (PEFT lora_A / lora_B weights stacked); y [T, d_out], dtype of x.

Execution (CUDA, or CPU with TRITON_INTERPRET=1): a constant number of launches per layer,
independent of N (kernels/launch.py). By default the path is chosen per call from the layer's
shape (launch.auto_path, measured on the H200: "gemm" for narrow outputs such as the k/v
projections, "stream" otherwise). The "split" path:
forward  = shrink (Triton) + expand (Triton) + one cuBLAS GEMM over all T tokens;
backward = shrink of dY (dS = s_i dY_i B_i) + expand into dX (dS_i A_i) + one cuBLAS GEMM for dX
           + wgrad x2 (dA_i = dS_iᵀ X_i, dB_i = s_i dY_iᵀ S_i)  [+ memsets / casts for atomics].
TUNE["path"] = "fused" uses shrink_expand (shrink and expand in ONE launch) instead: fwd 1
Triton launch, bwd 3 (see kernels/launch_fused.py).
TUNE["path"] = "stream": forward = shrink (S scaled by s_i) + a row-streaming expand (programs
own a token chunk x column block and load B_i's block once); backward = shrink of dY + ONE
weight-gradient launch that computes dA and writes the dX delta from the same dS tiles + dB.
TUNE["path"] = "gemm": the stream path's shrinks and reductions, but the base GEMM
runs in Triton (kernels/launch_gemm.py) and adds S_i B_iᵀ (forward) / dS_i A_i (backward) to
each output tile itself: no delta buffer, no cuBLAS; the stream path where TMA cannot run it.
Its backward runs dB and dA on a second CUDA stream, beside the shrink of dY and the dX GEMM
(TUNE["bwd_side"], kernels/side_stream.py).
By default the kernels write the LoRA delta and the base GEMM adds it in cuBLAS's epilogue
(``delta.addmm_(x, W.T)``, beta=1); ``TUNE["fuse_add"] = "kernel"`` instead runs the GEMM first
and fuses the add into the expand's store (the paper's expand-and-add).
CPU without the interpreter falls back to :func:`kernels.reference.fused_multi_lora_reference`.

Gradients: x, lora_a, lora_b. Rank columns >= r_i get exactly zero gradient. ``weight`` never
gets a gradient, even with ``requires_grad=True`` (it is treated as the frozen base).
On the gemm path, non-finite values inside an adapter's first r_i ranks of lora_a / lora_b
reach the other adapters' rows of its 128-row tiles (0 x NaN in the shared accumulator); the
other paths isolate them (docs/kernels.md §0, "Known limit").
The intermediate S = x @ A_iᵀ is cached from the forward pass (T x block_r; x.dtype on the
fused, stream and gemm paths, fp32 on the split path).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from . import multi_lora_triton as mlt
from .layout import MultiLoraLayout, make_layout
from .reference import fused_multi_lora_reference

__all__ = ["fused_multi_lora", "TUNE"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

from .launch import (  # noqa: E402,F401
    TUNE,
    _cfg,
    _empty,
    _expand,
    _shrink,
    _split_k,
    _stream_expand,
    _wgrad,
    choose_path,
    fitting_path,
    max_block_r,
)
from .launch_fused import shrink_expand, wgrad_pair  # noqa: E402
from .launch_gemm import gemm_lora, gemm_ok  # noqa: E402
from .side_stream import backward_enqueued, fork, join, side_stream, worth_forking  # noqa: E402


def _s_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the stream / gemm paths keep S (and dS) in: the activations' when
    TUNE["narrow_s"] (written so by the shrink itself), else fp32. The weight-gradient kernels
    re-read S once per column block, and in fp32 that doubled their P traffic (ncu in the real
    step, 4096², T = 8192: dB 47.8 µs from fp32 S against 31.6 from the fused path's bf16 S).
    The fused path caches S in x.dtype too."""
    return dtype if TUNE["narrow_s"] else torch.float32


class _FusedMultiLora(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, lora_a, lora_b, layout):
        cfg, kadd = _cfg(x.device), TUNE["fuse_add"] == "kernel"
        a_str = (lora_a.stride(0), lora_a.stride(1), lora_a.stride(2))  # W_i[r, k] = A_i[r, k]
        b_str = (lora_b.stride(0), lora_b.stride(1), lora_b.stride(2))  # V_i[n, r] = B_i[n, r]
        path, pair = choose_path(x.shape[0], x.shape[1], weight.shape[0], x.device)
        if path == "gemm" and not gemm_ok(x, weight, lora_a, lora_b, layout):
            path = "stream"  # (gemm_ok: TMA-able rows, Hopper, 16-bit on CUDA, ranks <= 64)
        # a path whose tiles would not fit in shared memory at this rank padding hands over
        # (fused_multi_lora has already sent ranks no path fits to the reference)
        path = fitting_path(path, layout.block_r, x.element_size())
        if path in ("stream", "gemm"):  # S carries s_i here (their expands have no scale)
            s = _shrink(x, lora_a, a_str, layout, True, cfg, _s_dtype(x.dtype))  # s_i x_i A_iᵀ
        if path == "gemm":  # the Triton base GEMM adds S B_iᵀ itself: no delta, no cuBLAS
            y = gemm_lora(x, weight, True, layout, s, lora_b, cfg)
        else:
            # kadd: base GEMM first, kernel adds into y; else kernel writes delta, cuBLAS adds
            y = x @ weight.t() if kadd else _empty((x.shape[0], weight.shape[0]), x.device, x.dtype)
            if path == "split":
                s = _shrink(x, lora_a, a_str, layout, False, cfg)  # [T, block_r] fp32
                _expand(s, lora_b, b_str, y, layout, True, kadd, cfg)
            elif path == "stream":
                b_rn = (lora_b.stride(0), lora_b.stride(2), lora_b.stride(1))  # V_i[r, n] = B_i[n, r]
                _stream_expand(s, lora_b, b_rn, y, kadd, layout, cfg)
            else:
                s = shrink_expand(x, lora_a, a_str, lora_b, b_str, y, y.shape[1], layout,
                                  False, True, kadd, cfg)  # fmt: skip
            if not kadd:
                y.addmm_(x, weight.t())  # cuBLAS: y = 1 * delta + x @ W.T (epilogue add)
        ctx.save_for_backward(x, weight, lora_a, lora_b, s)
        ctx.layout, ctx.path, ctx.pair = layout, path, pair  # backward reads S as written here
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, lora_a, lora_b, s = ctx.saved_tensors
        layout, cfg = ctx.layout, _cfg(dy.device)
        kadd = TUNE["fuse_add"] == "kernel"
        dy = dy.contiguous()
        need_x, _, need_a, need_b, _ = ctx.needs_input_grad
        dx = da = db = ds = None
        b_str = (lora_b.stride(0), lora_b.stride(2), lora_b.stride(1))  # W_i[r, k] = B_i[k, r]
        a_str = (lora_a.stride(0), lora_a.stride(2), lora_a.stride(1))  # V_i[n, r] = A_i[r, n]
        gemm = ctx.path == "gemm"  # dX = dY W + dS_i A_i in one Triton GEMM (no cuBLAS)
        if need_x and not gemm:
            dx = dy @ weight if kadd else _empty(x.shape, x.device, x.dtype)
        if ctx.path in ("stream", "gemm"):
            # TUNE["bwd_side"]: dB (and with "db+da", dA) on a second stream (side_stream.py)
            on_side = ctx.path in TUNE["bwd_side_paths"] and dy.is_cuda and not mlt.interpret_mode()
            side = TUNE["bwd_side"] if on_side else None
            main = torch.cuda.current_stream(dy.device) if side else None
            # (this backward's end is recorded for the next one's worth_forking)
            paced = side is not None and TUNE["bwd_side_when"] == "gpu_bound"
            if side and not worth_forking(main, TUNE["bwd_side_when"]):
                side = None  # host-bound eager step: the fork would cost more than it hides
            a_rn = lora_a.stride()  # V_i[r, n] = A_i[r, n]
            dx_job = (lora_a, a_rn, dx, kadd) if need_x and not gemm else None
            # dA beside the dX GEMM, waiting for dS alone; enqueued after the GEMM ("db+da") or
            # before it ("db+da_before", which takes the SMs first)
            da_side = need_a and side in ("db+da", "db+da_before") and dx_job is None
            if need_b and side:  # S = s_i x_i A_iᵀ already carries the scale
                if not da_side:  # the main stream's own dA / expand may read tables dB would
                    # first copy on the side stream: copy them here, before the fork
                    _wgrad(s, dy, lora_b, True, layout, False, cfg, tables_only=True)
                with torch.cuda.stream(fork(main)):  # beside the shrink of dY
                    db = _wgrad(s, dy, lora_b, True, layout, False, cfg)
            # dS by the split-K shrink. Stream: the dX delta is written by the dA kernel as it
            # streams dS (or, with lora_a frozen, by the same kernel as an expand only)
            if need_x or need_a:  # dS_i = s_i dY_i B_i
                ds = _shrink(dy, lora_b, b_str, layout, True, cfg, _s_dtype(dy.dtype))
            ds_ready = main.record_event() if da_side else None

            def da_on_side():
                with torch.cuda.stream(fork(main, ds_ready)):
                    return _wgrad(ds, x, lora_a, False, layout, False, cfg)

            if da_side and side == "db+da_before":
                da = da_on_side()
            if need_x and gemm:
                beside = da_side and side == "db+da"  # dA enqueued after it, on the side
                macs = dy.shape[0] * weight.shape[0] * weight.shape[1]
                dx = gemm_lora(dy, weight, False, layout, ds, lora_a,
                               _side_fit(cfg, macs) if beside else cfg)  # fmt: skip
            if da_side and side == "db+da":
                da = da_on_side()
            if need_a and not da_side:
                da = _wgrad(ds, x, lora_a, False, layout, False, cfg, expand=dx_job)
            elif dx_job:
                _stream_expand(ds, *dx_job, layout, cfg)
            if need_b and not side:
                db = _wgrad(s, dy, lora_b, True, layout, False, cfg)
            if side and (need_b or da_side):  # (a join with nothing forked would, in a CUDA
                # graph capture, wait on an event of a stream outside the capture: illegal)
                join(main, side_stream(main), db, da if da_side else None)
            if paced:
                backward_enqueued(main)
        elif ctx.path == "split":
            if need_x or need_a:
                ds = _shrink(dy, lora_b, b_str, layout, True, cfg)  # dS_i = s_i dY_i B_i
            if need_x:
                _expand(ds, lora_a, a_str, dx, layout, False, kadd, cfg)  # dX += dS_i A_i
            if need_a:
                da = _wgrad(ds, x, lora_a, False, layout, False, cfg)
            if need_b:
                db = _wgrad(s, dy, lora_b, True, layout, True, cfg)
        else:
            if need_x or need_a:  # dS_i = s_i dY_i B_i, and dX (+)= dS_i A_i in the same launch
                n_out = x.shape[1] if need_x else 0
                ds = shrink_expand(dy, lora_b, b_str, lora_a, a_str, dx, n_out, layout,
                                   True, False, kadd, cfg)  # fmt: skip
            if (need_a or need_b) and ctx.pair:
                da, db = wgrad_pair(ds, x, s, dy, lora_a, lora_b, layout, cfg, need_a, need_b)
            else:
                da = _wgrad(ds, x, lora_a, False, layout, False, cfg) if need_a else None
                db = _wgrad(s, dy, lora_b, True, layout, True, cfg) if need_b else None
        if need_x and not kadd and not gemm:
            dx.addmm_(dy, weight)  # cuBLAS: dX = 1 * delta + dY W
        return dx, None, da, db, None


def _side_fit(cfg: dict, macs: int) -> dict:
    """The settings of a dX GEMM of ``macs`` = T·d_out·d_in multiply-adds while dA runs beside
    it on the side stream. TUNE gpu gm_side_fit = (ring stages, registers per thread): a GEMM
    program small enough that one dA program (4 warps, 96 registers, 48 KB) fits on each SM
    beside it, so dA streams x while the GEMM computes instead of waiting for its last pass
    (benchmarks/diag_coresidency.py); only up to gm_side_fit_max_macs (None: any size), since
    on longer GEMMs the stage it gives up costs as much as dA hides. cfg as it is when
    gm_side_fit is None or the GEMM is larger."""
    fit, most = cfg.get("gm_side_fit"), cfg.get("gm_side_fit_max_macs")
    if fit is None or (most is not None and macs > most):
        return cfg
    return dict(cfg, gm_gl_stages=fit[0], gm_maxnreg=fit[1])


def _validate(x, weight, lora_a, lora_b, layout: MultiLoraLayout) -> None:
    for name, t in (("x", x), ("weight", weight), ("lora_a", lora_a), ("lora_b", lora_b)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [T, d_in], got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"x dtype {x.dtype} unsupported (use bf16, fp16 or fp32)")
    t, d_in = x.shape
    if weight.dim() != 2 or weight.shape[1] != d_in:
        raise ValueError(f"weight must be [d_out, {d_in}], got {tuple(weight.shape)}")
    d_out = weight.shape[0]
    n = layout.num_adapters
    if lora_a.dim() != 3 or lora_a.shape[0] != n or lora_a.shape[2] != d_in:
        raise ValueError(f"lora_a must be [{n}, r_max, {d_in}], got {tuple(lora_a.shape)}")
    r_max = lora_a.shape[1]
    if lora_b.dim() != 3 or tuple(lora_b.shape) != (n, d_out, r_max):
        raise ValueError(f"lora_b must be [{n}, {d_out}, {r_max}], got {tuple(lora_b.shape)}")
    for name, tt in (("weight", weight), ("lora_a", lora_a), ("lora_b", lora_b)):
        if tt.dtype != x.dtype:
            raise ValueError(f"{name} dtype {tt.dtype} differs from x dtype {x.dtype}")
        if tt.device != x.device:
            raise ValueError(f"{name} is on {tt.device}, x is on {x.device}")
    if layout.total_tokens != t:
        raise ValueError(f"seg_lens sum to {layout.total_tokens}, but x has T={t} rows")
    if layout.r_max > r_max:
        raise ValueError(f"ranks: max rank {layout.r_max} exceeds lora_a's r_max={r_max}")


def fused_multi_lora(
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    seg_lens: Sequence[int] | torch.Tensor | MultiLoraLayout | None = None,
    ranks: Sequence[int] | torch.Tensor | None = None,
    scaling: Sequence[float] | torch.Tensor | None = None,
    *,
    layout: MultiLoraLayout | None = None,
) -> torch.Tensor:
    """Multi-adapter LoRA linear over one frozen weight; see the module docstring for semantics.

    Pass either (seg_lens, ranks, scaling) or a prebuilt layout — as ``layout=`` or in place of
    ``seg_lens`` — from :func:`kernels.make_layout` (reuse it across all layers of a step).
    Raises ValueError (naming the argument) on bad shapes, dtypes, devices, ranks or lengths.
    """
    if isinstance(seg_lens, MultiLoraLayout):
        if layout is not None and layout is not seg_lens:
            raise ValueError("layout given twice (seg_lens and layout=) with different values")
        layout = seg_lens
    if layout is None:
        if seg_lens is None or ranks is None or scaling is None:
            raise ValueError("seg_lens, ranks and scaling are required when no layout is given")
        layout = make_layout(seg_lens, ranks, scaling)
    elif not isinstance(layout, MultiLoraLayout):
        raise ValueError("layout must be a MultiLoraLayout from kernels.make_layout")
    elif any(v is not None for v in (ranks, scaling)) or (seg_lens is not None and seg_lens is not layout):
        # (lists beside a layout were ignored: the same layout or none, never two descriptions)
        other = None if seg_lens is None or ranks is None or scaling is None else make_layout(seg_lens, ranks, scaling)
        if other is None or (other.seg_lens, other.ranks, other.scaling) != (layout.seg_lens, layout.ranks, layout.scaling):
            raise ValueError("layout= given with seg_lens / ranks / scaling that describe another layout; "
                             "pass one or the other")
    _validate(x, weight, lora_a, lora_b, layout)
    if x.shape[1] == 0 or weight.shape[0] == 0:  # empty features: no tile to launch
        return fused_multi_lora_reference(x, weight, lora_a, lora_b, layout)
    # rows of x and of y / dY (d_out wide) are indexed in int32 (mlt.MAX_KERNEL_ELEMENTS)
    if not mlt.kernels_take(x, x.shape[0] * max(x.stride(0), weight.shape[0], x.shape[1])):
        return fused_multi_lora_reference(x, weight, lora_a, lora_b, layout)
    if layout.block_r > (limit := max_block_r(x.element_size())):
        warnings.warn(f"fused_multi_lora: ranks up to {layout.r_max} (padded to {layout.block_r}) "
                      f"exceed what the kernels' tiles fit in shared memory for {x.dtype} "
                      f"(rank padding {limit} at most); this call runs the pure-torch reference "
                      "instead", stacklevel=2)  # fmt: skip
        return fused_multi_lora_reference(x, weight, lora_a, lora_b, layout)
    if x.device.type == "cuda" and x.device.index != torch.cuda.current_device():
        # Triton compiles and launches on the current device: make it x's (cuda:N, N != current)
        with torch.cuda.device(x.device):
            return _FusedMultiLora.apply(x, weight, lora_a, lora_b, layout)
    return _FusedMultiLora.apply(x, weight, lora_a, lora_b, layout)
