"""Launcher of the "gemm" path: the base GEMM in Triton with the LoRA expand folded in.

See kernels/gemm_lora_triton.py for what the kernel computes. Per layer: forward = the split-K
shrink (S scaled by s_i) + this GEMM; backward = the shrink of dY + this GEMM for dX + the two
weight-gradient reductions. 2 Triton launches forward, 4 backward, and no cuBLAS call.
"""

from __future__ import annotations

import functools
import warnings

import torch

from . import multi_lora_triton as mlt
from .descriptors import cached_descriptor, triton_desc
from .fast_launch import launch
from .launch import _cuda_props, _empty, _n_sms, _tma_ok, dot_precision, tma_rows_ok
from .layout import MultiLoraLayout


def gemm_ok(x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
            layout: MultiLoraLayout) -> bool:  # fmt: skip
    """Whether the gemm path can run this layer: every operand can back a TMA descriptor (a
    Hopper-class GPU or the interpreter; contiguous, rows 16-byte aligned: d_in, d_out and r_max
    multiples of 8 in bf16), on CUDA a 16-bit dtype (an exact fp32 dot is not an MMA), and
    ranks up to 64 (block_r 128 needs 64 KB more shared memory for the S and V tiles than the
    128 x 256 tile's pipeline leaves: 295 KB at 2 stages, compiled for sm_90 on 2026-11-29)."""
    el = x.element_size()
    if layout.block_r > 64 or (x.device.type == "cuda" and el > 2):
        return False
    if not (lora_a.is_contiguous() and lora_b.is_contiguous()):
        return False  # the kernel views them 2-D: rows of d_in (lora_a) and r_max (lora_b)
    if not _tma_ok(x):  # (also: a Hopper-class GPU or the interpreter)
        return False
    # the weight, and the adapters' contiguous 2-D views (rows of d_in and r_max) checked
    # without building them: this runs on every forward, and a flatten costs 1 µs of host time
    return (tma_rows_ok(weight.data_ptr(), weight.stride(0), weight.stride(1), el)
            and tma_rows_ok(lora_a.data_ptr(), lora_a.shape[2], 1, el)
            and tma_rows_ok(lora_b.data_ptr(), lora_b.shape[2], 1, el)
            and weight.shape[0] * el % 16 == 0)  # fmt: skip  (y's rows; dX's are x's)


def gemm_lora(a: torch.Tensor, w: torch.Tensor, w_kmajor: bool, layout: MultiLoraLayout | None,
              s: torch.Tensor | None, v: torch.Tensor | None, cfg: dict) -> torch.Tensor:
    """C = a @ B (+ the LoRA term when ``layout`` is given), a new [M, N] tensor of a's dtype.

    a [M, K]; w is the base weight: B = wᵀ when ``w_kmajor`` (w [N, K], the forward) else B = w
    (w [K, N], the backward's dY W). s [M, block_r], contiguous, a's dtype or fp32 (scale
    applied); v the adapters' weight, contiguous: lora_b [N_ad, N, r_max] in the forward
    (V_a = B_aᵀ), lora_a [N_ad, r_max, N] in the backward (V_a = A_a).
    """
    m, k = a.shape
    n = w.shape[0] if w_kmajor else w.shape[1]
    dtype, dev = a.dtype, a.device
    out = _empty((m, n), dev, dtype)
    if m == 0:
        return out
    if gluon_ok(a, s, cfg):
        done = try_gluon("GEMM", _gemm_lora_gluon, a, w, w_kmajor, layout, s, v, cfg, out)
        if done is not None:
            return done
    # TMA boxes: keep a box row at 128 bytes (64 bf16, 32 fp32 elements) along K
    bm, bn = cfg["gm_bm"], cfg["gm_bn"]
    bk = cfg["gm_bk"] * 2 // a.element_size()
    desc = triton_desc
    if layout is not None:
        block_r = layout.block_r
        row_ad, ranks = layout.row_adapters(dev), layout.ranks_tensor(dev)
        s_desc = desc(s, [bm, block_r])
        v2 = v.flatten(0, 1)  # [N_ad * N, r_max] (forward) or [N_ad * r_max, N] (backward)
        v_desc = desc(v2, [bn, block_r] if w_kmajor else [block_r, bn])
        rows_per_ad = v.shape[1]
    else:  # dummies, never read (LORA is a constexpr)
        block_r, row_ad, ranks, rows_per_ad = 16, a, a, 0
        s_desc = v_desc = None
    tiles = -(-m // bm) * -(-n // bn)
    grid = min(tiles, cfg["gm_persist"] * _n_sms(dev)) if cfg["gm_persist"] else tiles
    launch(mlt.get_kernels().gemm_lora, (grid,), (
        desc(a, [bm, bk]), desc(w, [bn, bk] if w_kmajor else [bk, bn]), desc(out, [bm, bn]),
        s_desc, v_desc, row_ad, ranks, m, n, k, grid, rows_per_ad,
    ), dict(
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=block_r, GROUP_M=cfg["gm_group"],
        B_KMAJOR=w_kmajor, LORA=layout is not None,
        DOT_PRECISION=dot_precision(dtype), UPCAST=cfg["upcast"],
        num_warps=cfg["gm_warps"], num_stages=cfg["gm_stages"],
    ))  # fmt: skip
    return out


# If a Gluon kernel (this GEMM, the shrink, the weight-gradient reduction) ever fails to build
# or launch (Gluon is experimental; its API moves between Triton versions), the reason lands
# here and every later call runs the Triton kernels. tests/kernels/test_multi_lora_gpu.py
# asserts this stays empty on the H200.
GLUON_FAILED: list[str] = []


def try_gluon(what: str, fn, *args):
    """fn(*args), a Gluon kernel's launcher; None if it failed to build or launch, after a
    warning and a record in GLUON_FAILED (which turns every Gluon kernel off). Running out of
    memory is no Gluon failure: re-raised."""
    try:
        return fn(*args)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a Triton without this Gluon API: fall back
        GLUON_FAILED.append(repr(exc)[:500])
        warnings.warn(f"Gluon {what} failed, using the Triton {what}: {exc!r}", stacklevel=3)
        return None


def gluon_device_ok(t: torch.Tensor, cfg: dict, flag: str) -> bool:
    """What every Gluon kernel needs before its own checks: asked for (cfg ``flag``), no
    earlier Gluon failure (GLUON_FAILED), and compiled CUDA on a Hopper GPU (their wgmma and
    TMA code is sm_90's; Gluon has no interpreter)."""
    return (bool(cfg.get(flag)) and not GLUON_FAILED and t.is_cuda
            and not mlt.interpret_mode() and _cuda_props(t.device).major == 9)  # fmt: skip


def gluon_ok(a: torch.Tensor, s: torch.Tensor | None, cfg: dict) -> bool:
    """Whether gemm_lora runs the Gluon GEMM: gluon_device_ok (cfg gm_gluon), 64-wide K steps
    and S in a's dtype."""
    return (gluon_device_ok(a, cfg, "gm_gluon") and cfg["gm_bk"] == 64
            and (s is None or s.dtype == a.dtype))  # fmt: skip


def _gemm_lora_gluon(a, w, w_kmajor, layout, s, v, cfg, out):
    """gemm_lora through kernels/gemm_lora_gluon.py (CUDA, Hopper): same operands and result."""
    gemm_lora_gluon_kernel = _gluon_kernel("gemm_lora_gluon", "gemm_lora_gluon_kernel")
    m, k = a.shape
    n = out.shape[1]
    bm, bn, bk = cfg["gm_bm"], cfg["gm_bn"], 64  # a LoRA step's S / V boxes are 64 ranks wide
    b_box = [bn, bk] if w_kmajor else [bk, bn]
    if layout is not None:  # (s and v have a's dtype: gluon_ok, _validate)
        s_desc, v_desc = gluon_desc(s, [bm, bk]), gluon_desc(v.flatten(0, 1), b_box)
        row_ad, ranks, rows_per_ad = layout.row_adapters(a.device), layout.ranks_tensor(a.device), v.shape[1]
        plan = layout.row_tile_plan(bm, a.device)
    else:
        s_desc = v_desc = None
        row_ad = ranks = plan = out  # never read (LORA is a constexpr)
        rows_per_ad = 0
    a_desc, b_desc = gluon_desc(a, [bm, bk]), gluon_desc(w, b_box)
    diag = cfg.get("gm_diag", 0)  # timing diagnostics (benchmarks/diag_gemm_lora.py); 0 = off
    if layout is not None and diag >= 2:  # 2: every LoRA step reads adapter 0's V (L2-hot)
        rows_per_ad = 0
        if diag == 3:  # 3: LoRA steps read base tiles (x / dY and W at K = 0) instead
            s_desc, v_desc = a_desc, b_desc
    tiles = -(-m // bm) * -(-n // bn)
    grid = (min(tiles, _n_sms(a.device)),)
    halves = bool(cfg.get("gm_epi_halves"))
    launch(gemm_lora_gluon_kernel, grid, (
        a_desc, b_desc, gluon_desc(out, [bm, bn // 2 if halves else bn]), s_desc, v_desc,
        row_ad, ranks, plan, m, n, k, rows_per_ad,
    ), dict(
        B_KMAJOR=w_kmajor, LORA=layout is not None, STAGES=cfg["gm_gl_stages"],
        GROUP_M=cfg["gm_group"], LORA_MASK=diag == 0, PEEL_BASE=bool(cfg.get("gm_peel")),
        RANK_K=bool(cfg.get("gm_rank_k")),
        S_REGS=bool(cfg.get("gm_rank_k") and cfg.get("gm_s_regs")),
        EPI_HALVES=halves, num_warps=cfg["gm_warps"],
        **({"maxnreg": cfg["gm_maxnreg"]} if cfg.get("gm_maxnreg") else {}),
    ))  # fmt: skip
    return out


def gluon_desc(t: torch.Tensor, box: list):
    """A Gluon TMA descriptor over ``t`` with this box, in the box's NVMMA shared layout
    (_smem_layout), as every Gluon launcher builds them (through descriptors.cached_descriptor)."""
    return cached_descriptor("gluon", _gluon_from_tensor, t, box)


def _gluon_from_tensor(t: torch.Tensor, box: list):
    return _gluon_descriptor_type().from_tensor(t, box, _smem_layout(tuple(box), t.dtype))


@functools.cache
def _gluon_descriptor_type():
    """Gluon's host TMA descriptor class, imported on first use (Gluon is experimental: CPU
    paths must not need it) and then kept: the import statement alone cost 0.6 µs of host
    time per descriptor, 14 descriptors per layer fwd+bwd."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    return TensorDescriptor


@functools.cache
def _gluon_kernel(module: str, name: str):
    """kernels.<module>.<name>, a Gluon kernel, imported on first launch and then kept (as
    _gluon_descriptor_type; the kernel modules import Gluon at their top)."""
    import importlib

    return getattr(importlib.import_module(f".{module}", __package__), name)


@functools.lru_cache(maxsize=64)
def _smem_layout(box: tuple, dtype: torch.dtype):
    """The NVMMA shared-memory layout (widest swizzle) of a TMA box, built once per box."""
    from triton.experimental.gluon import language as gl

    el = gl.float16 if dtype == torch.float16 else gl.bfloat16
    return gl.NVMMASharedLayout.get_default_for(list(box), el)
