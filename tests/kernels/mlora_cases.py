"""Input generators and the fp64 oracle shared by the CPU-interpreter and GPU kernel tests."""

from __future__ import annotations

import numpy as np
import torch

from kernels import fused_multi_lora, fused_multi_lora_reference

SPREADS = ("identical", "uniform", "zipf", "skewed", "zero", "single")
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}  # rel. Frobenius error


def seg_lens_for(spread: str, n: int, t: int, rng: np.random.Generator) -> list[int]:
    """N non-negative ints summing to T with the named distribution over adapters."""
    if spread == "identical":
        base = [t // n] * n
        base[-1] += t - sum(base)
        return base
    if spread == "uniform":
        return rng.multinomial(t, [1.0 / n] * n).tolist()
    if spread == "zipf":
        w = 1.0 / np.arange(1, n + 1) ** 1.2
        return rng.multinomial(t, w / w.sum()).tolist()
    if spread == "skewed":  # one adapter owns ~90 %, the rest share the remainder
        lens = [0] * n
        lens[n // 2] = t - (n - 1) * max(1, t // (10 * n)) if n > 1 else t
        for i in range(n):
            if i != n // 2:
                lens[i] = max(1, t // (10 * n))
        lens[n // 2] = t - sum(lens[i] for i in range(n) if i != n // 2)
        return lens
    if spread == "zero":  # every other adapter has no tokens (adapter 0 included)
        live = [i for i in range(n) if i % 2 == 1] or [0]
        lens = [0] * n
        for j, i in enumerate(live):
            lens[i] = t // len(live) + (1 if j < t % len(live) else 0)
        return lens
    if spread == "single":  # single-token segments, the last adapter takes the rest
        lens = [1] * n
        lens[-1] = t - (n - 1)
        return lens
    raise ValueError(spread)


def make_case(
    n: int,
    spread: str,
    t: int,
    d_in: int,
    d_out: int,
    rank_pool=(8, 16, 64, 128),
    dtype=torch.float32,
    device="cpu",
    seed: int = 0,
    nan_pad: bool = True,
    ranks: list[int] | None = None,
    tensor_r_max: int | None = None,
):
    """Random inputs; rank columns >= r_i hold NaN (nan_pad) to prove they are never read.
    ``tensor_r_max``: the adapters' rank extent (lora_a [N, r, d_in]) when it should exceed
    max(ranks), as for adapters stacked at a fixed maximum rank."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    seg = seg_lens_for(spread, n, t, rng)
    assert sum(seg) == t and min(seg) >= 0
    if ranks is None:
        ranks = [int(r) for r in rng.choice(rank_pool, size=n)]
    r_max = max(ranks) if tensor_r_max is None else tensor_r_max
    assert r_max >= max(ranks)
    scaling = [float(2 * r) / r for r in ranks]  # alpha = 2r, as in the paper's search spaces
    scaling = [s * (0.5 + i % 3) for i, s in enumerate(scaling)]  # make them differ per adapter
    x = torch.randn(t, d_in, generator=g)
    w = torch.randn(d_out, d_in, generator=g) / d_in**0.5
    a = torch.randn(n, r_max, d_in, generator=g) / d_in**0.5
    b = torch.randn(n, d_out, r_max, generator=g) / r_max**0.5
    if nan_pad:
        for i, r in enumerate(ranks):
            a[i, r:] = float("nan")
            b[i, :, r:] = float("nan")
    cast = lambda v: v.to(device=device, dtype=dtype)
    return dict(x=cast(x), weight=cast(w), lora_a=cast(a), lora_b=cast(b)), seg, ranks, scaling


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def fp64_oracle(x, w, a, b, seg, ranks, scaling, dy) -> tuple:
    """(y, dx, dA, dB) of the pure-torch reference in fp64 on the tensors' device; NaN rank
    padding replaced by 0 there (the reference slices it away anyway, but 0 keeps the grads of
    the slices clean)."""
    xr = x.detach().double().requires_grad_()
    ar = torch.nan_to_num(a.detach().double()).requires_grad_()
    br = torch.nan_to_num(b.detach().double()).requires_grad_()
    yr = fused_multi_lora_reference(xr, w.double(), ar, br, seg, ranks, scaling)
    return (yr, *torch.autograd.grad(yr, (xr, ar, br), dy.double()))


def assert_close(got, ref, dtype) -> None:
    """Each of got (y, dx[, dA, dB]) finite and within TOL[dtype] (relative Frobenius) of ref."""
    tol = TOL[dtype]
    for name, g, r in zip(("y", "dx", "dA", "dB")[: len(got)], got, ref, strict=True):
        assert torch.isfinite(g).all(), f"{name} has non-finite entries (unwritten or NaN leak)"
        err = rel(g, r)
        assert err < tol, f"{name}: rel err {err:.3e} > {tol:.1e}"


def run_and_compare(tensors, seg, ranks, scaling, dtype, seed: int = 1, call=fused_multi_lora):
    """fwd + bwd through ``call`` vs the fp64 reference; asserts closeness and the zero-grad rules."""
    x = tensors["x"].clone().requires_grad_()
    a = tensors["lora_a"].clone().requires_grad_()
    b = tensors["lora_b"].clone().requires_grad_()
    w = tensors["weight"]
    y = call(x, w, a, b, seg, ranks, scaling)
    gen = torch.Generator().manual_seed(seed)
    dy = torch.randn(y.shape, generator=gen).to(y.device, y.dtype)
    gx, ga, gb = torch.autograd.grad(y, (x, a, b), dy)

    assert_close((y, gx, ga, gb), fp64_oracle(x, w, a, b, seg, ranks, scaling, dy), dtype)
    for i, (n, r) in enumerate(zip(seg, ranks, strict=True)):
        assert (ga[i, r:] == 0).all() and (gb[i, :, r:] == 0).all(), f"adapter {i}: pad grad != 0"
        if n == 0:
            assert (ga[i] == 0).all() and (gb[i] == 0).all(), f"adapter {i}: no tokens, grad != 0"
    return y, (gx, ga, gb)
