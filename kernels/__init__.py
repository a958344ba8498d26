"""Triton kernels of ALTO.

Public API (stable; the executor relies on it):

* :func:`fused_multi_lora` (x, weight, lora_a, lora_b, seg_lens, ranks, scaling, *, layout=None)
  -> y: differentiable multi-adapter LoRA linear over one frozen weight (Triton on CUDA, or on
  CPU under TRITON_INTERPRET=1; pure-torch reference on CPU otherwise).
* :func:`fused_multi_lora_reference`: the pure-torch per-adapter loop with the same semantics.
* :func:`make_layout` (seg_lens, ranks, scaling, device=None) -> :class:`MultiLoraLayout`:
  build once per batch layout, pass to every layer (``layout=`` or in place of seg_lens).
* :data:`TUNE`: launch settings; ``TUNE["path"]`` = "auto" (default: per layer shape, see
  :func:`kernels.launch.auto_path`: "gemm" where the harmonic mean of d_in and d_out is at
  most 4096, as for the k/v and square projections of Llama-3.1-8B, else "stream"), "split",
  "fused", "stream" or "gemm" (the base GEMM in Triton with the LoRA expand folded in,
  kernels/launch_gemm.py).
"""

from .launch import TUNE
from .layout import MultiLoraLayout, make_layout
from .multi_lora import fused_multi_lora
from .reference import fused_multi_lora_reference

SegmentLayout = MultiLoraLayout  # alias used in the issue text

__all__ = [
    "fused_multi_lora",
    "fused_multi_lora_reference",
    "make_layout",
    "MultiLoraLayout",
    "SegmentLayout",
    "TUNE",
]
