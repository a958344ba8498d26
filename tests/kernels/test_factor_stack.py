"""kernels.factor_stack: per-adapter factors gathered into a rank-padded stack, and the
stack's gradient added back, through a table of buffer addresses (the executor's FactorTable).

CPU: under the interpreter (conftest); GPU (``-m gpu``): compiled, Llama-3.1-8B widths with
64 adapters. The stack starts as NaN (TUNE["poison"]), so an element left unwritten fails.
Oracle: the adapters' factors sliced out of their buffers with torch, padded and cast.
fp32 is compared exactly; bf16 exactly on the GPU and within one bf16 step (2^-7 relative)
on the CPU, where Triton's interpreter casts fp32 to bf16 by truncation (tests/kernels/
test_norm_act.py says the same).
"""

from __future__ import annotations

import pytest
import torch

from kernels.factor_stack import gather_factors, scatter_add_factors

GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])


def _buffers(ranks, shapes, device, seed=0):
    """One flat fp32 buffer per adapter: per module A [r, d_in] then B [d_out, r]."""
    g = torch.Generator().manual_seed(seed)
    per = sum(d_in + d_out for d_in, d_out in shapes)
    return [torch.randn(r * per, generator=g).to(device) for r in ranks]


def _factor(buf, r, shapes, module, which):
    o = r * sum(d_in + d_out for d_in, d_out in shapes[:module])
    d_in, d_out = shapes[module]
    return buf[o:o + r * d_in].view(r, d_in) if which == 0 else buf[o + r * d_in:o + r * (d_in + d_out)].view(d_out, r)


def _unit(shapes, module, which):
    return sum(d_in + d_out for d_in, d_out in shapes[:module]) + (shapes[module][0] if which else 0)


def _check(device, ranks, shapes, dtype):
    bufs = _buffers(ranks, shapes, device)
    grads = _buffers(ranks, shapes, device, seed=1)
    bases = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64, device=device)
    gbases = torch.tensor([b.data_ptr() for b in grads], dtype=torch.int64, device=device)
    rk = torch.tensor(ranks, dtype=torch.int32, device=device)
    r_max = max(ranks)
    exact = dtype == torch.float32 or device != "cpu"
    g = torch.Generator().manual_seed(2)
    for m, (d_in, d_out) in enumerate(shapes):
        for which, width in ((0, d_in), (1, d_out)):
            stack = gather_factors(bases, rk, _unit(shapes, m, which), width, r_max, which, dtype)
            assert stack.shape == ((len(ranks), r_max, width) if which == 0 else (len(ranks), width, r_max))
            assert stack.dtype == dtype
            up = torch.randn(stack.shape, generator=g).to(device=device, dtype=dtype)
            before = [_factor(b, r, shapes, m, which).clone() for b, r in zip(grads, ranks, strict=True)]
            scatter_add_factors(up, gbases, rk, _unit(shapes, m, which), which)
            for i, r in enumerate(ranks):
                want = _factor(bufs[i], r, shapes, m, which)
                got, pad = (stack[i, :r], stack[i, r:]) if which == 0 else (stack[i, :, :r], stack[i, :, r:])
                assert not pad.isnan().any() and not pad.any()  # written, as zeros
                if exact:
                    assert torch.equal(got, want.to(dtype))
                else:
                    torch.testing.assert_close(got.float(), want, rtol=2**-7, atol=0)
                blk = up[i, :r] if which == 0 else up[i, :, :r]
                assert torch.equal(_factor(grads[i], r, shapes, m, which), before[i] + blk.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("ranks", [(8, 16, 64, 128), (3,), (16, 16, 8)], ids=["mixed", "one", "unsorted"])
def test_gather_and_scatter_match_sliced_factors(ranks, dtype):
    _check("cpu", list(ranks), [(33, 7), (5, 1030)], dtype)


def test_scatter_adds_each_element_once_and_touches_nothing_else():
    """Two adapters whose buffers sit back to back in one allocation: a scatter of ones into
    one module leaves every other element of both buffers as it was."""
    shapes, ranks = [(6, 4), (3, 5)], [2, 3]
    per = sum(a + b for a, b in shapes)
    whole = torch.zeros(sum(r * per for r in ranks))
    bases = torch.tensor([whole.data_ptr(), whole[ranks[0] * per:].data_ptr()], dtype=torch.int64)
    rk = torch.tensor(ranks, dtype=torch.int32)
    g = torch.ones(2, 4, max(ranks))  # B of module 0: [N, d_out, r_max]
    scatter_add_factors(g, bases, rk, _unit(shapes, 0, 1), 1)
    expect = torch.zeros_like(whole)
    for i, r in enumerate(ranks):
        o = (0 if i == 0 else ranks[0] * per) + r * 6
        expect[o:o + 4 * r] = 1.0
    assert torch.equal(whole, expect)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gather_and_scatter_full_size(dtype):
    """Llama-3.1-8B's four projection shapes, 64 adapters of ranks 16 / 32 / 64."""
    _check("cuda", [(16, 32, 64)[i % 3] for i in range(64)],
           [(4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)], dtype)
