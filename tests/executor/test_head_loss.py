"""head_cross_entropy == per-token F.cross_entropy over h @ Wᵀ, in value and in dL/dh."""

from __future__ import annotations

import pytest
import torch

from alto.executor.head_loss import head_cross_entropy


def _case(dtype, n=37, d=24, v=101, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, d, generator=g)).to(dtype)
    w = (torch.randn(v, d, generator=g) * 0.3).to(dtype)
    t = torch.randint(0, v, (n,), generator=g)
    up = torch.rand(n, generator=g)  # per-token upstream weights (like 1/count per adapter)
    return h, w, t, up


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("chunk", [8, 37, 4096])
def test_matches_cross_entropy(dtype, tol, chunk):
    h, w, t, up = _case(dtype)
    h1 = h.clone().requires_grad_(True)
    loss = head_cross_entropy(h1, w, t, chunk)
    (loss * up).sum().backward()
    h2 = h.clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy((h2 @ w.t()).float(), t, reduction="none")
    (ref * up).sum().backward()
    assert loss.dtype == torch.float32 and h1.grad.dtype == dtype
    torch.testing.assert_close(loss, ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(h1.grad, h2.grad, rtol=tol, atol=tol * 0.1)


def test_hand_computed_two_classes():
    """Logits [0, ln 3], target 0, W = I: softmax = [1/4, 3/4], loss = ln 4,
    dL/dh = softmax - onehot = [-3/4, 3/4]."""
    h = torch.tensor([[0.0, float(torch.log(torch.tensor(3.0)))]], requires_grad=True)
    loss = head_cross_entropy(h, torch.eye(2), torch.tensor([0]), 4)
    torch.testing.assert_close(loss, torch.log(torch.tensor([4.0])))
    loss.sum().backward()
    torch.testing.assert_close(h.grad, torch.tensor([[-0.75, 0.75]]))


def test_eval_and_frozen_head():
    h, w, t, _ = _case(torch.float32)
    with torch.no_grad():
        got = head_cross_entropy(h, w, t, 8)
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(h @ w.t(), t, reduction="none"))
    with pytest.raises(ValueError, match="frozen"):
        head_cross_entropy(h, w.requires_grad_(True), t)
