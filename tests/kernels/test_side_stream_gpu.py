"""The backward's second stream (TUNE["bwd_side"], kernels/side_stream.py) on a CUDA device:
``python3 -m pytest -m gpu tests/kernels/test_side_stream_gpu.py``.

Races are baited: the main stream sleeps before dY is written, so a side-stream launch that
did not wait for the main stream reads dY (or dS) before it exists; and after the backward the
main stream overwrites fresh allocations, so a gradient whose block went back to the
allocator early would be clobbered before it is compared.
"""

from __future__ import annotations

import pytest
import torch
from mlora_cases import assert_close, fp64_oracle, make_case

import kernels
from kernels import multi_lora as ml
from kernels import side_stream

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
BF16 = torch.bfloat16
SLEEP_CYCLES = 20_000_000  # ~10 ms at the H200's clock: far longer than any launch here


def _reference(tensors, seg, ranks, scaling, dy):
    t = tensors
    return fp64_oracle(t["x"], t["weight"], t["lora_a"], t["lora_b"], seg, ranks, scaling, dy)


def _assert_close(got, ref):
    assert_close(got, ref, BF16)


def _count_forks(monkeypatch) -> list:
    """A list that gains one item per side-stream fork the backward makes (the real fork
    still runs)."""
    forks = []
    real_fork = side_stream.fork
    monkeypatch.setattr(ml, "fork", lambda main, *after: forks.append(1) or real_fork(main, *after))
    return forks


@pytest.mark.parametrize(("path", "mode"), [("stream", "db"), ("gemm", "db"), ("gemm", "db+da"),
                                            ("gemm", "db+da_before"), ("stream", "db+da")])  # fmt: skip
@pytest.mark.parametrize("shape", [(4096, 4096), (4096, 1024)])
def test_side_stream_backward_matches_oracle(path, mode, shape, monkeypatch):
    """dB (and on the gemm path dA, enqueued after or before the dX GEMM) on the side stream:
    same results as the oracle, the side stream really used (its fork called once per
    reduction moved there; the stream path keeps dA on the main stream, where it also writes
    the dX delta). With dA enqueued after it ("db+da"), the dX GEMM is the one built to leave
    room for a dA program per SM (TUNE gpu gm_side_fit: 3 stages, 200 registers); the
    forward's GEMM, and the dX GEMM in the other modes, keep the shipped settings."""
    gemm_cfgs = []  # (direction, ring stages, register cap) of each gemm_lora call
    real_gemm = ml.gemm_lora
    monkeypatch.setattr(ml, "gemm_lora", lambda a, w, kmajor, lay, s, v, cfg: gemm_cfgs.append(
        ("fwd" if kmajor else "dx", cfg["gm_gl_stages"], cfg.get("gm_maxnreg")))
        or real_gemm(a, w, kmajor, lay, s, v, cfg))  # fmt: skip
    monkeypatch.setitem(ml.TUNE, "path", path)
    monkeypatch.setitem(ml.TUNE, "bwd_side", mode)
    monkeypatch.setitem(ml.TUNE, "bwd_side_paths", ("stream", "gemm"))
    monkeypatch.setitem(ml.TUNE, "bwd_side_when", "always")
    forks = _count_forks(monkeypatch)
    tensors, seg, ranks, scaling = make_case(32, "zipf", 4096, *shape, rank_pool=(16, 32, 64),
                                             dtype=BF16, device="cuda", seed=7)  # fmt: skip
    x = tensors["x"].clone().requires_grad_()
    a = tensors["lora_a"].clone().requires_grad_()
    b = tensors["lora_b"].clone().requires_grad_()
    y = kernels.fused_multi_lora(x, tensors["weight"], a, b, seg, ranks, scaling)
    torch.cuda._sleep(SLEEP_CYCLES)  # the main stream is busy before dY exists
    dy = torch.randn(y.shape, device="cuda", dtype=BF16, generator=torch.Generator("cuda").manual_seed(3))
    gx, ga, gb = torch.autograd.grad(y, (x, a, b), dy)
    clobber = [torch.full_like(t, float("nan")) for t in (ga, gb)]  # reuse of a freed block
    torch.cuda.synchronize()
    del clobber
    assert len(forks) == (2 if mode.startswith("db+da") and path == "gemm" else 1)
    _assert_close((y, gx, ga, gb), _reference(tensors, seg, ranks, scaling, dy))
    stages = ml.TUNE["gpu"]["gm_gl_stages"]
    fit = (3, 200) if mode == "db+da" else (stages, None)
    assert gemm_cfgs == ([("fwd", stages, None), ("dx", *fit)] if path == "gemm" else [])


def test_side_stream_backward_in_a_cuda_graph(monkeypatch):
    """fwd + bwd with dA and dB on the side stream, captured in one CUDA graph (the fork and
    join become graph edges) and replayed on new inputs copied into the captured buffers:
    every replay matches the oracle of its inputs."""
    monkeypatch.setitem(ml.TUNE, "path", "gemm")
    monkeypatch.setitem(ml.TUNE, "bwd_side", "db+da")
    tensors, seg, ranks, scaling = make_case(32, "uniform", 4096, 4096, 1024, rank_pool=(16, 32, 64),
                                             dtype=BF16, device="cuda", seed=8)  # fmt: skip
    layout = kernels.make_layout(seg, ranks, scaling, device="cuda")
    x = tensors["x"].clone().requires_grad_()
    a, b, w = tensors["lora_a"].clone().requires_grad_(), tensors["lora_b"].clone().requires_grad_(), tensors["weight"]
    dy = torch.zeros(x.shape[0], w.shape[0], device="cuda", dtype=BF16)

    def step():
        y = kernels.fused_multi_lora(x, w, a, b, layout=layout)
        return (y, *torch.autograd.grad(y, (x, a, b), dy))

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # kernels compiled, tables and workspaces built
        step()
        step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        outs = step()
    for seed in (1, 2):
        gen = torch.Generator("cuda").manual_seed(seed)
        with torch.no_grad():
            x.copy_(torch.randn(x.shape, device="cuda", dtype=BF16, generator=gen))
            dy.copy_(torch.randn(dy.shape, device="cuda", dtype=BF16, generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        fresh = dict(tensors, x=x.detach())
        _assert_close(outs, _reference(fresh, seg, ranks, scaling, dy))


@pytest.mark.parametrize("path", ["gemm", "stream"])
def test_side_stream_delayed_with_a_fresh_layout(path, monkeypatch):
    """Race bait on the side stream (written in session 14 after a review, not yet run on a
    GPU when committed): every side-stream reduction starts ≈ 10 ms late, on a layout whose
    device tables do not exist yet, in mode "db", where dA stays on the main stream. A table
    first copied on the side stream and read by the main stream's dA would be read before
    the copy lands; the backward builds them on the main stream first (launch._wgrad
    tables_only), so the results match the oracle."""
    monkeypatch.setitem(ml.TUNE, "path", path)
    monkeypatch.setitem(ml.TUNE, "bwd_side", "db")
    monkeypatch.setitem(ml.TUNE, "bwd_side_paths", ("stream", "gemm"))
    monkeypatch.setitem(ml.TUNE, "bwd_side_when", "always")
    main = torch.cuda.current_stream()
    real = ml._wgrad
    delayed = []

    def late_on_side(*args, **kw):
        if not kw.get("tables_only") and torch.cuda.current_stream() != main:
            delayed.append(1)
            torch.cuda._sleep(SLEEP_CYCLES)
        return real(*args, **kw)

    monkeypatch.setattr(ml, "_wgrad", late_on_side)
    tensors, seg, ranks, scaling = make_case(8, "skewed", 4096, 4096, 1024, rank_pool=(16, 32, 64),
                                             dtype=BF16, device="cuda", seed=1414)  # fmt: skip
    x = tensors["x"].clone().requires_grad_()
    a = tensors["lora_a"].clone().requires_grad_()
    b = tensors["lora_b"].clone().requires_grad_()
    y = kernels.fused_multi_lora(x, tensors["weight"], a, b, seg, ranks, scaling)
    dy = torch.randn(y.shape, device="cuda", dtype=BF16, generator=torch.Generator("cuda").manual_seed(4))
    gx, ga, gb = torch.autograd.grad(y, (x, a, b), dy)
    torch.cuda.synchronize()
    assert delayed == [1]  # dB alone went to the side stream
    _assert_close((y, gx, ga, gb), _reference(tensors, seg, ranks, scaling, dy))


@pytest.mark.parametrize("frozen", [False, True], ids=["adapters-trained", "adapters-frozen"])
def test_side_stream_created_inside_a_capture(frozen, monkeypatch):
    """(Written in session 14 after a review, not yet run on a GPU when committed.) The
    kernels and tables warmed up on the default stream, then fwd + bwd captured on a new
    stream, whose side stream is first created inside the capture; with the adapters frozen
    nothing is forked, and the backward must not join (a wait on an event of a stream outside
    the capture fails the capture). Replays match the oracle (dX; dA, dB when trained)."""
    monkeypatch.setitem(ml.TUNE, "path", "gemm")
    tensors, seg, ranks, scaling = make_case(32, "zipf", 4096, 4096, 1024, rank_pool=(16, 32, 64),
                                             dtype=BF16, device="cuda", seed=1415)  # fmt: skip
    layout = kernels.make_layout(seg, ranks, scaling, device="cuda")
    x = tensors["x"].clone().requires_grad_()
    a = tensors["lora_a"].clone().requires_grad_(not frozen)
    b = tensors["lora_b"].clone().requires_grad_(not frozen)
    w = tensors["weight"]
    dy = torch.randn(x.shape[0], w.shape[0], device="cuda", dtype=BF16,
                     generator=torch.Generator("cuda").manual_seed(5))  # fmt: skip
    inputs = (x,) if frozen else (x, a, b)

    def step():
        y = kernels.fused_multi_lora(x, w, a, b, layout=layout)
        return (y, *torch.autograd.grad(y, inputs, dy))

    step()  # compiled, tables built: on the default stream
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        outs = step()
    graph.replay()
    torch.cuda.synchronize()
    ref = _reference(tensors, seg, ranks, scaling, dy)
    _assert_close(outs, ref[: len(outs)])


@pytest.mark.parametrize("busy", [False, True], ids=["gpu-keeps-up", "gpu-behind"])
def test_side_stream_only_when_the_gpu_bounds_the_step(busy, monkeypatch):
    """The shipped rule (TUNE["bwd_side_when"] = "gpu_bound"): an eager backward forks dB and
    dA only if the previous backward on its stream has not finished on the GPU when it is
    called. Two fwd + bwd steps back to back: with the GPU kept busy (a sleep) before the
    first, the second backward forks; with a synchronise between them, it does not. Results
    match the oracle either way."""
    monkeypatch.setitem(ml.TUNE, "path", "gemm")
    monkeypatch.setitem(ml.TUNE, "bwd_side_when", "gpu_bound")
    forks = _count_forks(monkeypatch)
    tensors, seg, ranks, scaling = make_case(8, "uniform", 4096, 4096, 1024, rank_pool=(16, 32, 64),
                                             dtype=BF16, device="cuda", seed=1416)  # fmt: skip
    x = tensors["x"].clone().requires_grad_()
    a = tensors["lora_a"].clone().requires_grad_()
    b = tensors["lora_b"].clone().requires_grad_()
    dy = torch.randn(x.shape[0], tensors["weight"].shape[0], device="cuda", dtype=BF16,
                     generator=torch.Generator("cuda").manual_seed(6))  # fmt: skip

    def step():
        y = kernels.fused_multi_lora(x, tensors["weight"], a, b, seg, ranks, scaling)
        return (y, *torch.autograd.grad(y, (x, a, b), dy))

    if busy:
        torch.cuda._sleep(SLEEP_CYCLES)  # the first backward ends only after the sleep
    step()
    if not busy:
        torch.cuda.synchronize()
    forks.clear()
    outs = step()  # its backward polls the end of the first one
    torch.cuda.synchronize()
    assert len(forks) == (2 if busy else 0)
    _assert_close(outs, _reference(tensors, seg, ranks, scaling, dy))
