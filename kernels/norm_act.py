"""Fused RMSNorm (frozen weight) and SwiGLU for the decoder layers around the LoRA linears.

HF's eager Llama/Qwen2/Mistral layers run RMSNorm as ~7 separate kernels in fp32 and keep fp32
copies of the hidden state for backward (~40 KB per token per norm at d = 4096); the MLP keeps
silu(gate) as well as gate and up. These two autograd Functions do each in one kernel forward
and one backward, and save only what backward needs:

* ``rms_norm(x, weight, eps)``: y = weight * bf16(x * rsqrt(mean(x²) + eps)), HF's rounding
  (normalise in fp32, round to x.dtype, then scale). Saves x and rstd [T] fp32. The weight is
  frozen (LoRA training): no weight gradient; callers keep the eager path when it needs one.
  dx = rstd * (g - x̂ · mean(g · x̂)), g = round(dy · weight), x̂ = x · rstd.
* ``silu_mul(gate, up)``: h = round(silu(gate)) * up, HF's SwiGLU rounding. Saves gate and up
  (not silu(gate)); backward recomputes the sigmoid.
  dgate = round(dh · up) · σ(g)(1 + g(1 − σ(g))), dup = dh · round(silu(g)).

Shapes: x [..., D] (any leading dims, contiguous last dim); weight [D]; gate, up same shape.
Where they run: the Triton kernels on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1;
otherwise the pure-torch reference below (identical math, the same ops as HF's modules).
Only core Triton builtins are used (tl.reduce with the standard sum combiner, tl.exp), so the
kernels also run in the interpreter when triton was imported without the flag.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import _empty
from .multi_lora_triton import jit_helper, kernels_take, lazy_jit

__all__ = ["rms_norm", "silu_mul", "rms_norm_reference", "silu_mul_reference"]


@jit_helper
def _load_rows(X, T, D, stride_x, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's BLOCK_M rows of X [T, D] as fp32 (0 outside), with the rows, the
    columns, the row and column masks and the [BLOCK_M, BLOCK_D] mask."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    r_mask, c_mask = rows < T, cols < D
    mask = r_mask[:, None] & c_mask[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return x, rows, cols, r_mask, c_mask, mask


def _rms_fwd_kernel(X, W, Y, RSTD, T, D, stride_x, stride_y, eps,
                    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    x, rows, cols, r_mask, c_mask, mask = _load_rows(X, T, D, stride_x, BLOCK_M, BLOCK_D)
    ms = tl.reduce(x * x, 1, tl.standard._sum_combine, keep_dims=True) / D
    rstd = tl.math.rsqrt(ms + eps)  # [BLOCK_M, 1]
    x_hat = (x * rstd).to(X.dtype.element_ty).to(tl.float32)  # HF rounds before the scale
    w = tl.load(W + cols, mask=c_mask, other=0.0).to(tl.float32)
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], (x_hat * w[None, :]).to(Y.dtype.element_ty),
             mask=mask)
    tl.store(RSTD + rows[:, None], rstd, mask=r_mask[:, None])


def _rms_bwd_kernel(DY, X, W, RSTD, DX, T, D, stride_dy, stride_x, stride_dx,
                    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    x, rows, cols, r_mask, c_mask, mask = _load_rows(X, T, D, stride_x, BLOCK_M, BLOCK_D)
    dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=c_mask, other=0.0).to(tl.float32)
    g = (dy * w[None, :]).to(X.dtype.element_ty).to(tl.float32)  # HF: dy * w in x's dtype
    rstd = tl.load(RSTD + rows[:, None], mask=r_mask[:, None], other=0.0)
    x_hat = x * rstd
    mean_gx = tl.reduce(g * x_hat, 1, tl.standard._sum_combine, keep_dims=True) / D
    dx = rstd * (g - x_hat * mean_gx)
    tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)


def _silu_mul_fwd_kernel(G, U, H, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    g = tl.load(G + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=m, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(G.dtype.element_ty).to(tl.float32)  # HF: silu in x's dtype
    tl.store(H + offs, (act * u).to(H.dtype.element_ty), mask=m)


def _silu_mul_bwd_kernel(DH, G, U, DG, DU, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    dh = tl.load(DH + offs, mask=m, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=m, other=0.0).to(tl.float32)
    sig = 1.0 / (1.0 + tl.exp(-g))
    act = (g * sig).to(G.dtype.element_ty).to(tl.float32)
    d_act = (dh * u).to(G.dtype.element_ty).to(tl.float32)
    tl.store(DG + offs, (d_act * sig * (1.0 + g * (1.0 - sig))).to(DG.dtype.element_ty), mask=m)
    tl.store(DU + offs, (dh * act).to(DU.dtype.element_ty), mask=m)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's LlamaRMSNorm.forward, op for op."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def silu_mul_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """HF's SwiGLU: act_fn(gate_proj(x)) * up_proj(x) with act_fn = SiLU."""
    return torch.nn.functional.silu(gate) * up


def _row_block(d: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M rows per program, BLOCK_D, num_warps): one row per program on the GPU (rows are
    4–16 KB), 16 under the interpreter (fewer Python-level programs)."""
    block_d = triton.next_power_of_2(d)
    if device.type != "cuda":
        return 16, block_d, 4
    return 1, block_d, 8 if block_d >= 4096 else 4


class _RmsNorm(torch.autograd.Function):
    """x2 [T, D] (unit column stride) -> y [T, D]; rms_norm reshapes around it."""

    @staticmethod
    def forward(ctx, x2, weight, eps):
        t, d = x2.shape
        y = _empty((t, d), x2.device, torch.promote_types(x2.dtype, weight.dtype))  # NaN in tests
        rstd = torch.empty(t, device=x2.device, dtype=torch.float32)
        bm, bd, warps = _row_block(d, x2.device)
        if t:
            lazy_jit(_rms_fwd_kernel)[(triton.cdiv(t, bm),)](
                x2, weight, y, rstd, t, d, x2.stride(0), y.stride(0), float(eps),
                BLOCK_M=bm, BLOCK_D=bd, num_warps=warps)
        ctx.save_for_backward(x2, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        t, d = x2.shape
        if dy.stride(1) != 1 or dy.stride(0) != d:  # (e.g. an expanded gradient)
            dy = dy.contiguous()
        dx = _empty((t, d), x2.device, x2.dtype)
        bm, bd, warps = _row_block(d, x2.device)
        if t:
            lazy_jit(_rms_bwd_kernel)[(triton.cdiv(t, bm),)](
                dy, x2, weight, rstd, dx, t, d, dy.stride(0), x2.stride(0), dx.stride(0),
                BLOCK_M=bm, BLOCK_D=bd, num_warps=warps)
        return dx, None, None


_ELEM_BLOCK = 1024


class _SiluMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        g, u = gate.contiguous(), up.contiguous()
        h = _empty(g.shape, g.device, g.dtype)
        n = g.numel()
        if n:
            lazy_jit(_silu_mul_fwd_kernel)[(triton.cdiv(n, _ELEM_BLOCK),)](g, u, h, n, BLOCK=_ELEM_BLOCK)
        ctx.save_for_backward(g, u)
        return h

    @staticmethod
    def backward(ctx, dh):
        g, u = ctx.saved_tensors
        dh = dh.contiguous()
        dg, du = _empty(g.shape, g.device, g.dtype), _empty(u.shape, u.device, u.dtype)
        n = g.numel()
        if n:
            lazy_jit(_silu_mul_bwd_kernel)[(triton.cdiv(n, _ELEM_BLOCK),)](
                dh, g, u, dg, du, n, BLOCK=_ELEM_BLOCK)
        return dg, du


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with a frozen weight; HF LlamaRMSNorm semantics (see the module docstring).
    x [..., D], weight [D] -> [..., D] in promote(x.dtype, weight.dtype). No weight gradient."""
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 1:
        raise ValueError(f"weight must be [{x.shape[-1]}], got {tuple(weight.shape)}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device}, x is on {x.device}")
    if weight.requires_grad and torch.is_grad_enabled():
        raise ValueError("weight requires grad: rms_norm is for a frozen weight (use the eager norm)")
    d = x.shape[-1]
    x2 = x.reshape(-1, d)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    span = (x2.shape[0] - 1) * x2.stride(0) + d if x2.shape[0] else 0  # elements the kernel reaches
    if not kernels_take(x2, max(span, x2.numel())):
        return rms_norm_reference(x, weight.detach(), eps)
    return _RmsNorm.apply(x2, weight, eps).view(x.shape)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in one kernel forward and one backward; gate, up same shape and dtype."""
    if gate.shape != up.shape or gate.dtype != up.dtype or gate.device != up.device:
        raise ValueError(f"gate {tuple(gate.shape)} {gate.dtype} {gate.device} and up "
                         f"{tuple(up.shape)} {up.dtype} {up.device} must match")
    if not kernels_take(gate, gate.numel()):
        return silu_mul_reference(gate, up)
    return _SiluMul.apply(gate, up)
