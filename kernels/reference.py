"""Pure-torch reference for the multi-adapter LoRA linear (the simplest correct per-adapter loop).

Semantics (same as :func:`kernels.fused_multi_lora`), for adapter i owning rows
[o_i, o_i + seg_lens[i])::

    y[o_i:e_i] = x[o_i:e_i] @ weight.T
                 + scaling[i] * (x[o_i:e_i] @ lora_a[i, :r_i].T) @ lora_b[i, :, :r_i].T

Shapes: x [T, d_in], weight [d_out, d_in], lora_a [N, r_max, d_in], lora_b [N, d_out, r_max],
y [T, d_out]. Rank columns >= r_i are sliced away, so autograd gives them exactly zero gradient.
``weight`` is used detached: it never receives a gradient (it is the frozen base).

The loop is differentiable by plain autograd; it is both the CPU fallback of
``fused_multi_lora`` and the oracle of the tests (called on fp32/fp64 copies there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .layout import MultiLoraLayout, make_layout

__all__ = ["fused_multi_lora_reference"]


def fused_multi_lora_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    seg_lens: Sequence[int] | torch.Tensor | MultiLoraLayout,
    ranks: Sequence[int] | torch.Tensor | None = None,
    scaling: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-adapter loop: shared base GEMM + one (shrink, expand) pair per non-empty adapter.

    Computes in the inputs' dtype (cast them to fp32/fp64 first for an oracle). Returns y [T, d_out].
    """
    if isinstance(seg_lens, MultiLoraLayout):
        layout = seg_lens
    else:
        layout = make_layout(seg_lens, ranks, scaling)
    y = x @ weight.detach().t()  # [T, d_out]; the frozen base gets no gradient
    parts = []
    for i, (o, n) in enumerate(zip(layout.offsets[:-1], layout.seg_lens, strict=True)):
        if n == 0:
            continue
        r = layout.ranks[i]
        xi = x[o : o + n]  # [n, d_in]
        s = xi @ lora_a[i, :r].t()  # [n, r]
        parts.append(layout.scaling[i] * (s @ lora_b[i, :, :r].t()))  # [n, d_out]
    if not parts:
        return y
    return y + torch.cat(parts, dim=0)
