"""TMA descriptors for the launchers, built at a fraction of Triton's cost once a shape is known.

Triton's ``TensorDescriptor`` classes (``triton.tools.tensor_descriptor`` for Triton kernels,
``triton.experimental.gluon.nvidia.hopper`` for Gluon ones) are dataclasses that validate every
field in ``__post_init__``: 2.5 µs per descriptor on the CI CPU, about 4 on the H200 host,
14 descriptors per gemm-path layer fwd+bwd. :func:`cached_descriptor` builds the first
descriptor of each (kind, shape, strides, dtype, box) through Triton, with all its checks, and
keeps its fields without the tensor; later descriptors of that shape class copy those fields
with only ``base`` replaced (0.7–1.1 µs), after the one check that depends on the tensor itself
(a 16-byte-aligned start: a misaligned one goes back to Triton, which rejects it).

Shapes vary with the token count, so the table is cleared when it reaches
:data:`MAX_SHAPES`; it never holds a tensor. A descriptor class without ``__dict__`` (a future
Triton with slotted dataclasses) is simply built through Triton every time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

MAX_SHAPES = 4096
_FIELDS: dict[tuple, tuple | None] = {}  # shape class -> (descriptor class, fields) or None


def cached_descriptor(kind: str, make: Callable, t: torch.Tensor, box: Sequence[int]):
    """``make(t, list(box))`` (a Triton ``from_tensor``), or a copy of the validated fields of
    an earlier one of the same shape class with ``base = t``. ``kind`` names ``make``."""
    key = (kind, t.shape, t.stride(), t.dtype, *box)
    entry = _FIELDS.get(key)
    if entry is None or t.data_ptr() % 16:
        desc = make(t, list(box))
        if key not in _FIELDS:
            if len(_FIELDS) >= MAX_SHAPES:
                _FIELDS.clear()
            fields = getattr(desc, "__dict__", None)
            _FIELDS[key] = (type(desc), {**fields, "base": None}) if fields is not None else None
        return desc
    cls, fields = entry
    desc = object.__new__(cls)
    desc.__dict__ = {**fields, "base": t}
    return desc


def triton_desc(t: torch.Tensor, box: Sequence[int]):
    """A Triton kernel's TMA descriptor over ``t`` with this box."""
    return cached_descriptor("triton", TensorDescriptor.from_tensor, t, box)
