"""Differentiable multi-adapter LoRA linear: ``fused_multi_lora`` (public API + autograd Function).

For adapter i owning rows [o_i, o_i + seg_lens[i]) of the token axis::

    y[rows] = x[rows] @ weight.T + scaling[i] * (x[rows] @ lora_a[i, :r_i].T) @ lora_b[i, :, :r_i].T

Shapes: x [T, d_in]; weight [d_out, d_in] (frozen, nn.Linear layout); lora_a [N, r_max, d_in];
lora_b [N, d_out, r_max] (PEFT lora_A / lora_B weights stacked); y [T, d_out], dtype of x.

Execution (CUDA, or CPU with TRITON_INTERPRET=1): per layer, independent of N,
forward  = shrink (Triton) + expand (Triton) + one cuBLAS GEMM over all T tokens;
backward = shrink of dY (Triton) + expand into dX (Triton) + one cuBLAS GEMM for dX
           + two grouped weight-gradient reductions (Triton)  [+ small memsets / casts].
By default the expand kernels write the LoRA delta and the base GEMM adds it in cuBLAS's
epilogue (``delta.addmm_(x, W.T)``, beta=1); ``TUNE["fuse_add"] = "kernel"`` instead runs the
GEMM first and fuses the add into the expand kernel's store (the paper's expand-and-add).
CPU without the interpreter falls back to :func:`kernels.reference.fused_multi_lora_reference`.

Gradients: x, lora_a, lora_b. Rank columns >= r_i get exactly zero gradient. ``weight`` never
gets a gradient, even with ``requires_grad=True`` (it is treated as the frozen base).
The intermediate S = x @ A_iᵀ is cached in fp32 from the forward pass (T x block_r floats).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import multi_lora_triton as mlt
from .layout import MultiLoraLayout, make_layout
from .reference import fused_multi_lora_reference

__all__ = ["fused_multi_lora", "TUNE"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Launch parameters; tests and the benchmark override entries (None = heuristic).
TUNE: dict = {
    "fuse_add": "addmm",  # "addmm" (delta + cuBLAS epilogue) or "kernel" (expand-and-add)
    "split_k": None,  # shrink split over K; None = fill ~2 waves of SMs
    "wgrad_chunk": None,  # tokens per weight-gradient program; None = heuristic
    "gpu": dict(bm=64, bk=64, bn=128, bt=64, warps=4, stages=3),
    "interp": dict(bm=32, bk=32, bn=64, bt=32, warps=4, stages=1),
    "poison": False,  # tests: fill every internally allocated output with NaN first
}

_SM_COUNT: dict[int, int] = {}


def _empty(shape, device, dtype) -> torch.Tensor:
    """torch.empty, or NaN-filled when TUNE["poison"] (so unwritten elements show up in tests)."""
    if TUNE["poison"]:
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(shape, device=device, dtype=dtype)


def _n_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def _upcast(device: torch.device) -> bool:
    """Interpreter runs: give tl.dot fp32 operands (its bf16 dot is broken, see multi_lora_triton)."""
    return device.type != "cuda" or mlt.interpret_mode()


def _cfg(device: torch.device) -> dict:
    return TUNE["interp"] if device.type != "cuda" or mlt.interpret_mode() else TUNE["gpu"]


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


def _wgrad_chunk(layout: MultiLoraLayout, n_cols: int, cfg: dict, device: torch.device) -> int:
    """Tokens per weight-gradient program: split long segments so >= ~2 waves of programs exist."""
    if torch.are_deterministic_algorithms_enabled():
        return max(1, layout.total_tokens)
    if TUNE["wgrad_chunk"] is not None:
        return int(TUNE["wgrad_chunk"])
    n_blocks = -(-n_cols // cfg["bn"])
    want_chunks = max(1, -(-2 * _n_sms(device) // n_blocks))
    chunk = max(layout.total_tokens // want_chunks, 4 * cfg["bt"])
    return -(-chunk // cfg["bt"]) * cfg["bt"]


def _shrink(x, w, w_strides, layout, scale: bool, cfg) -> torch.Tensor:
    """OUT[T, block_r] fp32 = c_i * x_i @ W_iᵀ; w_strides = (adapter, rank, k) strides of W."""
    dev, (t, k) = x.device, x.shape
    tiles = layout.tiles(cfg["bm"], dev)
    split, k_per = _split_k(tiles.shape[0], k, cfg, dev)
    alloc = torch.zeros if split > 1 else _empty
    out = alloc((t, layout.block_r), device=dev, dtype=torch.float32)
    if tiles.shape[0] == 0:
        return out
    mlt.get_kernels().shrink[(tiles.shape[0], split)](
        x, w, out, tiles, layout.ranks_tensor(dev), layout.scaling_tensor(dev),
        k, k_per, x.stride(0), x.stride(1), *w_strides, out.stride(0), out.stride(1),
        BLOCK_M=cfg["bm"], BLOCK_R=layout.block_r, BLOCK_K=cfg["bk"],
        ATOMIC=split > 1, APPLY_SCALE=scale, IEEE=x.dtype == torch.float32, UPCAST=_upcast(dev),
        num_warps=cfg["warps"], num_stages=cfg["stages"],
    )
    return out


def _expand(s, v, v_strides, out, layout, scale: bool, add: bool, cfg) -> None:
    """out[T, n] (+)= c_i * S_i @ V_iᵀ in place; v_strides = (adapter, n, rank) strides of V."""
    dev, n_out = out.device, out.shape[1]
    tiles = layout.tiles(cfg["bm"], dev)
    if tiles.shape[0] == 0:
        return
    grid = (tiles.shape[0], -(-n_out // cfg["bn"]))
    mlt.get_kernels().expand[grid](
        s, v, out, tiles, layout.ranks_tensor(dev), layout.scaling_tensor(dev),
        n_out, s.stride(0), s.stride(1), *v_strides, out.stride(0), out.stride(1),
        BLOCK_M=cfg["bm"], BLOCK_N=cfg["bn"], BLOCK_R=layout.block_r,
        ADD=add, APPLY_SCALE=scale, IEEE=out.dtype == torch.float32, UPCAST=_upcast(dev),
        num_warps=cfg["warps"], num_stages=1,
    )


def _wgrad(p, q, like, transpose_out: bool, layout, scale: bool, cfg) -> torch.Tensor:
    """Per-adapter sum over the segment's tokens of p[t, r] q[t, n] -> grad shaped like ``like``.

    ``like`` is lora_a [N, r_max, n] (transpose_out False) or lora_b [N, n, r_max] (True).
    """
    dev, n_cols = q.device, q.shape[1]
    chunk = _wgrad_chunk(layout, n_cols, cfg, dev)
    atomic = layout.max_chunks_per_adapter(chunk) > 1
    needs_zero = atomic or any(n == 0 for n in layout.seg_lens)
    buf_dtype = torch.float32 if atomic else like.dtype
    out = (torch.zeros if needs_zero else _empty)(like.shape, device=dev, dtype=buf_dtype)
    chunks = layout.chunks(chunk, dev)
    if chunks.shape[0] > 0:
        s_a, s_r, s_n = (out.stride(0), out.stride(2), out.stride(1)) if transpose_out else out.stride()
        grid = (chunks.shape[0], -(-n_cols // cfg["bn"]))
        mlt.get_kernels().wgrad[grid](
            p, q, out, chunks, layout.ranks_tensor(dev), layout.scaling_tensor(dev),
            n_cols, layout.r_max, p.stride(0), p.stride(1), q.stride(0), q.stride(1), s_a, s_r, s_n,
            BLOCK_T=cfg["bt"], BLOCK_R=layout.block_r, BLOCK_N=cfg["bn"],
            ATOMIC=atomic, APPLY_SCALE=scale, IEEE=q.dtype == torch.float32, UPCAST=_upcast(dev),
            num_warps=cfg["warps"], num_stages=cfg["stages"],
        )
    return out if out.dtype == like.dtype else out.to(like.dtype)


class _FusedMultiLora(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, lora_a, lora_b, layout):
        cfg = _cfg(x.device)
        a_str = (lora_a.stride(0), lora_a.stride(1), lora_a.stride(2))  # W_i[r, k] = A_i[r, k]
        s = _shrink(x, lora_a, a_str, layout, False, cfg)  # [T, block_r] fp32
        b_str = (lora_b.stride(0), lora_b.stride(1), lora_b.stride(2))  # V_i[n, r] = B_i[n, r]
        if TUNE["fuse_add"] == "kernel":
            y = x @ weight.t()
            _expand(s, lora_b, b_str, y, layout, True, True, cfg)
        else:
            y = _empty((x.shape[0], weight.shape[0]), x.device, x.dtype)
            _expand(s, lora_b, b_str, y, layout, True, False, cfg)
            y.addmm_(x, weight.t())  # cuBLAS: y = 1 * delta + x @ W.T
        ctx.save_for_backward(x, weight, lora_a, lora_b, s)
        ctx.layout = layout
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, lora_a, lora_b, s = ctx.saved_tensors
        layout, cfg = ctx.layout, _cfg(dy.device)
        dy = dy.contiguous()
        need_x, _, need_a, need_b, _ = ctx.needs_input_grad
        dx = da = db = None
        ds = None
        if need_x or need_a:
            # dS_i = s_i * dY_i @ B_i : W_i[r, k] = B_i[k, r]  (adapter, rank, k) strides
            b_str = (lora_b.stride(0), lora_b.stride(2), lora_b.stride(1))
            ds = _shrink(dy, lora_b, b_str, layout, True, cfg)
        if need_x:
            a_str = (lora_a.stride(0), lora_a.stride(2), lora_a.stride(1))  # V_i[n, r] = A_i[r, n]
            if TUNE["fuse_add"] == "kernel":
                dx = dy @ weight
                _expand(ds, lora_a, a_str, dx, layout, False, True, cfg)
            else:
                dx = _empty(x.shape, x.device, x.dtype)
                _expand(ds, lora_a, a_str, dx, layout, False, False, cfg)
                dx.addmm_(dy, weight)
        if need_a:
            da = _wgrad(ds, x, lora_a, False, layout, False, cfg)
        if need_b:
            db = _wgrad(s, dy, lora_b, True, layout, True, cfg)
        return dx, None, da, db, None


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
    _validate(x, weight, lora_a, lora_b, layout)
    if x.device.type != "cuda" and not (x.device.type == "cpu" and mlt.interpret_mode()):
        return fused_multi_lora_reference(x, weight, lora_a, lora_b, layout)
    return _FusedMultiLora.apply(x, weight, lora_a, lora_b, layout)
