"""kernels.descriptors (CPU): a descriptor copied from the shape-class table must equal the one
Triton builds, never skip a check that depends on the tensor, and never keep a tensor alive."""

import gc
import weakref

import pytest
import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels import descriptors
from kernels.launch_gemm import _gluon_from_tensor, gluon_desc


def _fields(d) -> dict:
    return {k: v for k, v in d.__dict__.items() if k != "base"}


@pytest.mark.parametrize("kind", ["triton", "gluon"])
def test_copied_descriptor_equals_tritons(kind):
    make = descriptors.triton_desc if kind == "triton" else gluon_desc
    fresh = TensorDescriptor.from_tensor if kind == "triton" else _gluon_from_tensor
    descriptors._FIELDS.clear()
    x1, x2 = torch.randn(256, 128, dtype=torch.bfloat16), torch.randn(256, 128, dtype=torch.bfloat16)
    make(x1, [64, 64])  # the first one goes through Triton and fills the table
    got, want = make(x2, [64, 64]), fresh(x2, [64, 64])
    assert type(got) is type(want)
    assert got.base is x2
    assert _fields(got) == _fields(want)
    # a different box or dtype is another shape class, with its own fields
    assert list(make(x2, [128, 64]).block_shape) == [128, 64]
    assert make(x2.half(), [64, 64]).base.dtype == torch.float16


@pytest.mark.parametrize("kind", ["triton", "gluon"])
def test_misaligned_start_is_rejected_like_triton(kind):
    make = descriptors.triton_desc if kind == "triton" else gluon_desc
    flat = torch.randn(64 * 65, dtype=torch.bfloat16)
    make(flat[: 64 * 64].view(64, 64), [64, 64])  # shape class known, aligned
    with pytest.raises(AssertionError, match="16-byte aligned"):
        make(flat[1 : 1 + 64 * 64].view(64, 64), [64, 64])  # 2-byte offset


def test_table_holds_no_tensor_and_stays_bounded(monkeypatch):
    descriptors._FIELDS.clear()
    x = torch.randn(64, 64, dtype=torch.bfloat16)
    alive = weakref.ref(x)
    d = gluon_desc(x, [64, 64])
    del x, d
    gc.collect()
    assert alive() is None  # only the descriptor held it
    monkeypatch.setattr(descriptors, "MAX_SHAPES", 3)
    for rows in (64, 128, 192, 256):
        gluon_desc(torch.randn(rows, 64, dtype=torch.bfloat16), [64, 64])
    assert len(descriptors._FIELDS) <= 3
