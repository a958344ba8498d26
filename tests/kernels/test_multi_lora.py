"""Correctness of kernels.fused_multi_lora (Triton kernels under TRITON_INTERPRET=1 on CPU).

Oracle: the per-adapter loop in fp64. Tolerances (relative Frobenius error, mlora_cases.TOL):
fp32 2e-5 (the interpreter computes fp32 exactly; on GPU fp32 dots run as IEEE), bf16 2e-2
(operands and the cached S rounded to bf16, as PEFT does). Every internal output buffer is
NaN-poisoned before its launch (conftest), and rank padding of lora_a/lora_b holds NaN, so
unwritten outputs and reads of padded ranks both fail the finiteness check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlora_cases import SPREADS, TOL, fp64_oracle, make_case, rel, run_and_compare

import kernels
from kernels import multi_lora as ml
from kernels import multi_lora_triton as mlt

SMALL = dict(t=133, d_in=96, d_out=80)

# (N, spread): N=1 needs only one spread; N=3 sweeps all of them; N=32 the interesting ones.
FP32, BF16 = torch.float32, torch.bfloat16
CASES = (
    [(1, "identical", FP32), (1, "identical", BF16)]
    + [(3, s, dt) for s in SPREADS for dt in (FP32, BF16)]
    + [(32, s, FP32) for s in ("zipf", "single", "skewed")]
    + [(32, "zero", BF16)]
)


@pytest.mark.parametrize("path", ["fused", "split", "stream", "gemm"])  # auto = stream here
@pytest.mark.parametrize(
    "n,spread,dtype", CASES, ids=[f"{n}-{s}-{str(d)[6:]}" for n, s, d in CASES]
)
def test_matches_reference(n, spread, dtype, path):
    ml.TUNE["path"] = path
    # r_max <= 64 and narrow features for N=32 keep the interpreter fast (~1 s per case)
    pool, shape = ((8, 16), dict(t=133, d_in=48, d_out=40)) if n == 32 else ((8, 16, 64), SMALL)
    tensors, seg, ranks, scaling = make_case(
        n, spread, rank_pool=pool, dtype=dtype, seed=n, **shape
    )
    run_and_compare(tensors, seg, ranks, scaling, dtype)


@pytest.mark.parametrize(
    "tune",
    [
        dict(path="split", split_k=3, wgrad_chunk=32),  # split-K shrink + token-split wgrad (atomics)
        dict(path="split", fuse_add="kernel"),  # paper's expand-and-add, not the cuBLAS epilogue
        dict(path="split", split_k=2, wgrad_chunk=64, fuse_add="kernel"),
        dict(path="fused"),  # shrink_expand (one launch) + wgrad
        dict(path="fused", wgrad_chunk=32, fuse_add="kernel"),
        dict(path="fused", wgrad_pair=True),  # ... + dA/dB in one launch
        dict(path="fused", wgrad_pair=True, wgrad_chunk=32),
        dict(path="fused", se_split=3),  # expand columns shared by 3 programs per row tile
        dict(path="fused", se_split=2, fuse_add="kernel"),
        dict(path="stream"),  # row-streaming expand; dX delta written by the dA kernel
        dict(path="stream", wgrad_chunk=32, fuse_add="kernel"),  # ... token-split, added
    ],
    ids=["atomics", "kadd", "atomics-kadd", "fused", "fused-atomics-kadd", "pair", "pair-atomics",
         "col-split", "col-split-kadd", "stream", "stream-atomics-kadd"],  # fmt: skip
)
def test_launch_variants(tune):
    dtype = torch.bfloat16 if "fuse_add" in tune else torch.float32
    ml.TUNE.update(tune)
    # the fused path takes fp32 ranks up to 64 (launch.MAX_BLOCK_R); above, it hands over
    pool = (8, 16, 64) if tune["path"] == "fused" and dtype == torch.float32 else (8, 16, 64, 128)
    tensors, seg, ranks, scaling = make_case(5, "zipf", rank_pool=pool, dtype=dtype, seed=7,
                                             **SMALL)  # fmt: skip
    run_and_compare(tensors, seg, ranks, scaling, dtype)


@pytest.mark.parametrize("path", ["fused", "split", "stream", "gemm"])
@pytest.mark.parametrize("spread", ["zipf", "single"])
def test_fp16(path, spread):
    """fp16 operands (accepted by the API like bf16) on every path, tolerance 5e-3."""
    ml.TUNE["path"] = path
    tensors, seg, ranks, scaling = make_case(3, spread, rank_pool=(8, 16, 64),
                                             dtype=torch.float16, seed=4, **SMALL)  # fmt: skip
    run_and_compare(tensors, seg, ranks, scaling, torch.float16)


@pytest.mark.parametrize("spread", SPREADS)
def test_stream_path_spreads(spread):
    """The stream path's expands (y, and dX by the dA kernel) cover every row exactly once
    (NaN-poisoned buffers): zero-token adapters own no chunks, single-token segments one-row
    chunks, long segments several 32-token chunks."""
    ml.TUNE.update(path="stream", wgrad_chunk=32)
    tensors, seg, ranks, scaling = make_case(3, spread, dtype=BF16, seed=2, **SMALL)
    run_and_compare(tensors, seg, ranks, scaling, BF16)


@pytest.mark.parametrize("spread", SPREADS)
@pytest.mark.parametrize("persist", [0, 1], ids=["tile-per-program", "persistent"])
def test_gemm_path_spreads(spread, persist, monkeypatch):
    """The gemm path (Triton base GEMM with the LoRA term per output tile) at every spread: row
    tiles holding several adapters (zipf, single-token segments), adapters with no rows, T = 133
    not a multiple of the 32-row tile (TMA zero fill and clipped stores); with one program per
    tile and with a persistent grid of 4 programs walking all 5 x 3 tiles (the interpreter
    reports 4 SMs)."""
    ml.TUNE.update(path="gemm", wgrad_chunk=32)
    ml.TUNE["interp"]["gm_persist"] = persist
    counted = _count_launches(monkeypatch)
    tensors, seg, ranks, scaling = make_case(3, spread, rank_pool=(8, 16, 64), dtype=BF16,
                                             seed=2, **SMALL)  # fmt: skip
    run_and_compare(tensors, seg, ranks, scaling, BF16)
    assert counted["gemm_lora"].n == 2  # y and dX (not a fallback to another path)


def test_gluon_gemm_only_on_compiled_cuda(monkeypatch):
    """The Gluon GEMM (Hopper only, no interpreter) is never chosen for CPU tensors, even when
    asked for: the interpreted Triton GEMM runs and matches the reference."""
    from kernels.launch_gemm import gluon_ok

    ml.TUNE.update(path="gemm")
    ml.TUNE["interp"]["gm_gluon"] = True
    x = torch.zeros(8, 64, dtype=BF16)
    assert not gluon_ok(x, x, dict(ml.TUNE["interp"]))
    assert not gluon_ok(x, None, dict(ml.TUNE["interp"], gm_gluon=False))
    counted = _count_launches(monkeypatch)
    tensors, seg, ranks, scaling = make_case(3, "zipf", rank_pool=(8, 16, 64), dtype=BF16,
                                             seed=2, **SMALL)  # fmt: skip
    run_and_compare(tensors, seg, ranks, scaling, BF16)
    assert counted["gemm_lora"].n == 2


def _assert_gluon_failure_falls_back(monkeypatch, module, launcher: str, ok: str, what: str,
                                     path: str, kernel: str, launches: int) -> None:
    """Make ``module.launcher`` (a Gluon kernel's launcher) raise and ``module.ok`` say yes
    until a failure is recorded; then the ``path`` layer step must warn "Gluon <what>
    failed", match the reference through the Triton ``kernel`` (``launches`` times) and leave
    exactly one record in launch_gemm.GLUON_FAILED."""
    import kernels.launch_gemm as lg

    def broken(*args, **kw):
        raise RuntimeError("no such Gluon op")

    monkeypatch.setattr(lg, "GLUON_FAILED", [])
    monkeypatch.setattr(module, launcher, broken)
    monkeypatch.setattr(module, ok, lambda *a: not lg.GLUON_FAILED)
    ml.TUNE.update(path=path)
    counted = _count_launches(monkeypatch)
    tensors, seg, ranks, scaling = make_case(3, "zipf", rank_pool=(8, 16, 64), dtype=BF16,
                                             seed=2, **SMALL)  # fmt: skip
    with pytest.warns(UserWarning, match=f"Gluon {what} failed"):
        run_and_compare(tensors, seg, ranks, scaling, BF16)
    assert counted[kernel].n == launches
    assert len(lg.GLUON_FAILED) == 1 and "no such Gluon op" in lg.GLUON_FAILED[0]


def test_gluon_gemm_failure_falls_back_to_triton(monkeypatch):
    """If the Gluon GEMM cannot build or launch (e.g. another Triton's Gluon API), the call
    runs the Triton GEMM instead (y and dX), warns, and records why (gluon_ok is False from
    then on)."""
    import kernels.launch_gemm as lg

    _assert_gluon_failure_falls_back(monkeypatch, lg, "_gemm_lora_gluon", "gluon_ok", "GEMM",
                                     "gemm", "gemm_lora", 2)  # fmt: skip


def test_gemm_path_needs_ranks_up_to_64(monkeypatch):
    """A rank-128 adapter (block_r 128) takes the stream path: the S and V tiles would not fit
    next to the GEMM's pipeline in shared memory."""
    ml.TUNE["path"] = "gemm"
    counted = _count_launches(monkeypatch)
    tensors, seg, ranks, scaling = make_case(3, "zipf", ranks=[8, 128, 16], seed=2, **SMALL)
    run_and_compare(tensors, seg, ranks, scaling, FP32)
    assert counted["gemm_lora"].n == 0 and counted["wgrad"].n == 3


def test_gemm_path_needs_aligned_rows(monkeypatch):
    """d_in = 100 bf16 (200-byte rows) cannot back TMA descriptors: the call takes the stream
    path instead (no gemm_lora launch) and still matches the reference."""
    ml.TUNE["path"] = "gemm"
    counted = _count_launches(monkeypatch)
    tensors, seg, ranks, scaling = make_case(3, "zipf", 133, 100, 80, rank_pool=(8, 16, 64),
                                             dtype=BF16, seed=3)  # fmt: skip
    run_and_compare(tensors, seg, ranks, scaling, BF16)
    assert counted["gemm_lora"].n == 0 and counted["wgrad"].n == 3  # stream: expand, dA+dX, dB


@pytest.mark.parametrize("spread", ["zipf", "zero", "single"])
@pytest.mark.parametrize("tune", [dict(), dict(se_split=2), dict(fuse_add="kernel")],
                         ids=["tma", "tma-col-split", "tma-kadd"])  # fmt: skip
def test_tma_shrink_expand(spread, tune, monkeypatch):
    """shrink_expand with x read and y stored through TMA descriptors (se_tma): whole-box stores
    only on full row tiles, masked stores on a segment's last one, zero fill past T and past
    d_in = 104 (not a multiple of the 32-wide K step); 168 columns in 2 splits of 96 / 72."""
    from kernels import launch_fused

    made = []
    real = launch_fused.triton_desc
    monkeypatch.setattr(launch_fused, "triton_desc",
                        lambda t, box: made.append(tuple(box)) or real(t, box))  # fmt: skip
    ml.TUNE.update(path="fused", **tune)
    ml.TUNE["interp"]["se_tma"] = "xy"
    tensors, seg, ranks, scaling = make_case(5, spread, 133, 104, 168, dtype=BF16, seed=3)
    run_and_compare(tensors, seg, ranks, scaling, BF16)
    # forward: x and y boxes; backward: dY and dX boxes (bm = bk = bn = 32 under the interpreter)
    assert made == [(32, 32)] * 4


def test_tma_only_where_rows_are_16_byte_aligned(monkeypatch):
    """d_in = 100 bf16 (200-byte rows) cannot back a TMA descriptor: x and dX take the pointer
    path while y and dY (168 columns, 336-byte rows) still use TMA; results unchanged."""
    from kernels import launch_fused

    made = []
    real = launch_fused.triton_desc
    monkeypatch.setattr(launch_fused, "triton_desc",
                        lambda t, box: made.append(t.shape[1]) or real(t, box))  # fmt: skip
    ml.TUNE.update(path="fused")
    ml.TUNE["interp"]["se_tma"] = "xy"
    tensors, seg, ranks, scaling = make_case(3, "zipf", 77, 100, 168, dtype=BF16, seed=4)
    run_and_compare(tensors, seg, ranks, scaling, BF16)
    assert made == [168, 168]  # forward y, backward dY


@pytest.mark.parametrize("ex_cols", [128, 1000])  # 2 blocks per program; one program per tile
def test_split_expand_column_chunks(ex_cols):
    """The split path's expand with several 64-column blocks per program (interpreter bn = 64):
    d_out = 300 gives programs of [0, 128), [128, 256), [256, 300) with ex_cols = 128, and the
    backward's d_in = 200 gives [0, 128), [128, 200)."""
    ml.TUNE.update(path="split")
    ml.TUNE["interp"]["ex_cols"] = ex_cols
    tensors, seg, ranks, scaling = make_case(5, "zipf", 61, 200, 300, dtype=torch.float32, seed=11)
    run_and_compare(tensors, seg, ranks, scaling, torch.float32)


def test_rank_128_mixed():
    """The full rank pool {8,16,64,128} (block_r = 128), two tiles per segment at most."""
    tensors, seg, ranks, scaling = make_case(
        4, "uniform", 61, 48, 40, seed=3, ranks=[8, 128, 64, 16]
    )
    run_and_compare(tensors, seg, ranks, scaling, torch.float32)


@pytest.mark.parametrize("path", ["fused", "pair", "split", "stream", "gemm"])
@pytest.mark.parametrize("tensor_r_max", [40, 64])
def test_rank_extent_beyond_the_largest_rank(path, tensor_r_max, monkeypatch):
    """Adapters stacked at a rank extent above every adapter's rank (ranks 8 / 16 in tensors
    of 40 or 64 rank rows: padding block_r = 16 covers fewer rows than the tensors have) still
    get exactly zero gradient in every row past r_i (found unwritten, 2026-11-29)."""
    monkeypatch.setitem(ml.TUNE, "path", "fused" if path == "pair" else path)
    monkeypatch.setitem(ml.TUNE, "wgrad_pair", path == "pair")
    tensors, seg, ranks, scaling = make_case(3, "zipf", rank_pool=(8, 16), seed=5,
                                             tensor_r_max=tensor_r_max, **SMALL)  # fmt: skip
    run_and_compare(tensors, seg, ranks, scaling, FP32)


@pytest.mark.parametrize("path", ["split", "stream", "gemm"])
def test_split_k_workspace_is_left_zero(path, monkeypatch):
    """The split-K shrink's sums meet in a persistent fp32 workspace that is never memset:
    the last program of each row tile re-zeroes it. After forward and backward (3 K-splits,
    two calls, the second one smaller) every workspace element and ticket is zero again."""
    from kernels import launch

    monkeypatch.setitem(ml.TUNE, "path", path)
    monkeypatch.setitem(ml.TUNE, "split_k", 3)
    monkeypatch.setattr(launch, "_WORKSPACES", {})
    for t in (133, 61):
        tensors, seg, ranks, scaling = make_case(3, "zipf", rank_pool=(8, 16), seed=t,
                                                 **dict(SMALL, t=t))  # fmt: skip
        run_and_compare(tensors, seg, ranks, scaling, BF16)
        assert launch._WORKSPACES, "the split-K shrink did not run"
        for acc, tickets in launch._WORKSPACES.values():
            assert not acc.any() and not tickets.any()


def test_odd_wide_feature_dim():
    """d = 2049 (odd, not a multiple of any block) on a tiny token count."""
    tensors, seg, ranks, scaling = make_case(3, "zipf", 19, 2049, 33, rank_pool=(8, 16), seed=5)
    run_and_compare(tensors, seg, ranks, scaling, torch.float32)
    tensors, seg, ranks, scaling = make_case(2, "uniform", 7, 31, 2049, rank_pool=(16,), seed=6)
    run_and_compare(tensors, seg, ranks, scaling, torch.float32)


def test_layout_reuse_forms_agree():
    """7-arg call, layout in place of seg_lens, and layout= give identical results (y, dX, dA,
    dB), each matching the fp64 reference within the fp32 tolerance (run_and_compare)."""
    tensors, seg, ranks, scaling = make_case(3, "uniform", seed=11, **SMALL)
    lay = kernels.make_layout(seg, ranks, scaling, device="cpu")
    assert kernels.make_layout(tuple(seg), torch.tensor(ranks), scaling) is lay  # cached
    forms = (
        kernels.fused_multi_lora,
        lambda x, w, a, b, *_: kernels.fused_multi_lora(x, w, a, b, lay),
        lambda x, w, a, b, *_: kernels.fused_multi_lora(x, w, a, b, layout=lay),
    )
    (y1, g1), *rest = [run_and_compare(tensors, seg, ranks, scaling, FP32, call=f) for f in forms]
    for y, g in rest:
        assert torch.equal(y1, y)
        assert all(torch.equal(p, q) for p, q in zip(g1, g, strict=True))


def test_a_layout_beside_lists_that_describe_another_is_refused():
    """Lists passed beside layout= used to be ignored silently; the same values are allowed."""
    tensors, seg, ranks, scaling = make_case(3, "uniform", seed=11, **SMALL)
    lay = kernels.make_layout(seg, ranks, scaling)
    t = [tensors[k] for k in ("x", "weight", "lora_a", "lora_b")]
    y = kernels.fused_multi_lora(*t, seg, ranks, scaling, layout=lay)  # the same layout: fine
    assert torch.equal(y, kernels.fused_multi_lora(*t, layout=lay))
    for bad in ((seg, ranks, [2 * s for s in scaling]), (seg, None, None), (None, ranks, scaling)):
        with pytest.raises(ValueError, match="describe another layout"):
            kernels.fused_multi_lora(*t, *bad, layout=lay)


@pytest.mark.parametrize("frozen", ["x", "lora_a", "lora_b"])
@pytest.mark.parametrize("path", ["fused", "split", "stream", "gemm"])
def test_partial_gradients(path, frozen):
    """One input without requires_grad: the others' gradients still match the reference (the
    stream path then writes dX with the expand-only kernel, or dA without a dX job)."""
    ml.TUNE["path"] = path
    pool = (8, 16, 64)  # (the gemm path takes ranks up to 64)
    tensors, seg, ranks, scaling = make_case(3, "zipf", rank_pool=pool, seed=6, **SMALL)
    names = ["x", "lora_a", "lora_b"]
    ins = {k: tensors[k].clone().requires_grad_(k != frozen) for k in names}
    y = kernels.fused_multi_lora(ins["x"], tensors["weight"], ins["lora_a"], ins["lora_b"],
                                 seg, ranks, scaling)  # fmt: skip
    dy = torch.linspace(-1, 1, y.numel()).view_as(y)
    y.backward(dy)
    yr, *grads_r = fp64_oracle(ins["x"], tensors["weight"], ins["lora_a"], ins["lora_b"], seg,
                               ranks, scaling, dy)  # fmt: skip
    tol = TOL[FP32]
    assert torch.isfinite(y).all() and rel(y, yr) < tol, f"y: rel err {rel(y, yr):.3e} > {tol:.1e}"
    for k, r in zip(names, grads_r, strict=True):
        g = ins[k].grad
        if k == frozen:
            assert g is None, k
        else:
            assert g is not None and torch.isfinite(g).all(), k
            assert rel(g, r) < tol, f"{k}: rel err {rel(g, r):.3e} > {tol:.1e}"


def test_seg_lens_tensor_and_no_x_grad():
    """seg_lens / ranks given as tensors, only lora_a requiring grad: y and dA match the fp64
    reference (fp32 tolerance), dA is exactly 0 in the rank padding, W gets no gradient."""
    tensors, seg, ranks, scaling = make_case(3, "skewed", seed=2, **SMALL)
    x, b = tensors["x"], tensors["lora_b"]
    a = tensors["lora_a"].clone().requires_grad_()
    w = tensors["weight"].clone().requires_grad_()  # frozen base: no grad even if requested
    y = kernels.fused_multi_lora(x, w, a, b, torch.tensor(seg), torch.tensor(ranks), scaling)
    y.sum().backward()
    assert w.grad is None and x.grad is None and b.grad is None
    assert a.grad is not None and torch.isfinite(a.grad).all() and torch.isfinite(y).all()
    yr, _, dar, _ = fp64_oracle(x, w, a, b, seg, ranks, scaling, torch.ones_like(y))
    tol = TOL[FP32]
    assert rel(y, yr) < tol, f"y: rel err {rel(y, yr):.3e} > {tol:.1e}"
    assert rel(a.grad, dar) < tol, f"dA: rel err {rel(a.grad, dar):.3e} > {tol:.1e}"
    for i, r in enumerate(ranks):
        assert (a.grad[i, r:] == 0).all(), f"adapter {i}: pad grad != 0"


def test_cpu_without_interpreter_uses_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    calls = []
    monkeypatch.setattr(mlt, "get_kernels", lambda: calls.append(1))
    tensors, seg, ranks, scaling = make_case(3, "zero", seed=4, **SMALL)
    run_and_compare(tensors, seg, ranks, scaling, torch.float32)
    assert calls == []


def test_past_int32_row_offsets_uses_reference(monkeypatch):
    """T x width beyond the kernels' int32 indexing falls back to the reference (same result)."""
    monkeypatch.setattr(mlt, "MAX_KERNEL_ELEMENTS", 64)
    calls = []
    monkeypatch.setattr(mlt, "get_kernels", lambda: calls.append(1))
    tensors, seg, ranks, scaling = make_case(3, "zero", seed=4, **SMALL)
    run_and_compare(tensors, seg, ranks, scaling, torch.float32)
    assert calls == []


def test_interpreter_is_used():
    ks = mlt.get_kernels()
    assert type(ks.shrink).__name__ == "InterpretedFunction"


def test_jit_helpers_follow_the_kernel_mode():
    """A kernel's jit_helper callees are decorated in the kernel's own TRITON_INTERPRET mode,
    in a copy of its globals: the module keeps the plain helper (so the other mode can still
    decorate it), and the interpreted kernel sees an interpreted helper."""
    ks = mlt.get_kernels()
    assert getattr(mlt._table_row, "_lazy_jit_helper", False)
    assert not hasattr(mlt._table_row, "run")  # still the plain function in the module
    seen = ks.shrink.fn.__globals__["_table_row"]
    assert type(seen).__name__ == "InterpretedFunction"
    assert seen is mlt.lazy_jit(mlt._table_row)  # decorated once per mode
    assert ks.shrink.fn.__code__ is mlt._shrink_kernel.__code__


def test_compiled_kernels_keep_their_constexpr_parameters(monkeypatch):
    """Compiled (not interpreted) kernels built by lazy_jit, helpers rebound, still mark every
    parameter annotated tl.constexpr as one. The globals copy once dropped the annotations:
    on the GPU every launch then failed ("failed to specialize argument of type: str"), while
    the interpreter tests passed."""
    from kernels import gemm_lora_triton as gl
    from kernels import multi_lora_fused_triton as mf
    from kernels import norm_act as na

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kernels_py = [mlt._shrink_kernel, mlt._expand_kernel, mlt._wgrad_kernel, gl._gemm_lora_kernel,
                  mf._shrink_expand_kernel, mf._wgrad_pair_kernel, na._rms_fwd_kernel,
                  na._rms_bwd_kernel, na._silu_mul_fwd_kernel, na._silu_mul_bwd_kernel]  # fmt: skip
    for fn in kernels_py:
        k = mlt.lazy_jit(fn)
        assert type(k).__name__ == "JITFunction"
        want = {n for n, a in fn.__annotations__.items() if "constexpr" in str(a)}
        assert want, fn.__name__
        assert {p.name for p in k.params if p.is_constexpr} == want, fn.__name__


class _Counter:
    def __init__(self, inner):
        self.inner, self.n = inner, 0

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.n += 1
            return self.inner[grid](*args, **kw)

        return launch


def _count_launches(monkeypatch) -> dict:
    """Wrap every kernel in a launch counter (kernel name -> _Counter) for this test."""
    ks = mlt.get_kernels()
    counted = {k: _Counter(v) for k, v in vars(ks).items()}
    monkeypatch.setattr(mlt, "get_kernels", lambda: type(ks)(**counted))
    return counted


LAUNCHES = {  # Triton launches per fwd / total, by construction, whatever N is
    "fused": ({"shrink_expand": 1}, {"shrink_expand": 2, "wgrad": 2}),
    "pair": ({"shrink_expand": 1}, {"shrink_expand": 2, "wgrad_pair": 1}),
    "split": ({"shrink": 1, "expand": 1}, {"shrink": 2, "expand": 2, "wgrad": 2}),
    "stream": ({"shrink": 1, "wgrad": 1}, {"shrink": 2, "wgrad": 3}),  # wgrad: expand, dA+dX, dB
    "gemm": ({"shrink": 1, "gemm_lora": 1}, {"shrink": 2, "gemm_lora": 2, "wgrad": 2}),
}


@pytest.mark.parametrize("path", ["fused", "pair", "split", "stream", "gemm"])
@pytest.mark.parametrize("n", [1, 32])
def test_triton_launches_constant_in_n(n, path, monkeypatch):
    ml.TUNE["path"] = "fused" if path == "pair" else path
    ml.TUNE["wgrad_pair"] = path == "pair"
    counted = _count_launches(monkeypatch)
    tensors, seg, ranks, scaling = make_case(n, "uniform", 64, 32, 32, rank_pool=(8, 16), seed=n)
    x = tensors["x"].requires_grad_()
    a = tensors["lora_a"].requires_grad_()
    b = tensors["lora_b"].requires_grad_()
    y = kernels.fused_multi_lora(x, tensors["weight"], a, b, seg, ranks, scaling)
    fwd, total = LAUNCHES[path]
    assert {k: c.n for k, c in counted.items() if c.n} == fwd
    y.backward(torch.ones_like(y))
    assert {k: c.n for k, c in counted.items() if c.n} == total


@pytest.mark.parametrize(("path", "dtype", "max_rank", "runs"), [
    ("fused", torch.float32, 64, "fused"),  # block_r 64: the fused tiles fit
    ("fused", torch.float32, 128, "stream"),  # 128 fp32: shrink_expand over 227 KB
    ("fused", BF16, 128, "fused"),
    ("stream", BF16, 200, "stream"),  # block_r 256 in 16 bits: the stream tiles fit
    ("fused", BF16, 200, "stream"),  # 256 in 16 bits: the fused backward is over
    ("gemm", BF16, 128, "stream"),  # the gemm path stops at 64 (gemm_ok)
], ids=["fused-fp32-64", "fused-fp32-128", "fused-bf16-128", "stream-bf16-256",
        "fused-bf16-256", "gemm-bf16-128"])  # fmt: skip
def test_path_hands_over_where_its_tiles_would_not_fit(path, dtype, max_rank, runs, monkeypatch):
    """A path whose tiles would exceed sm_90's shared memory at this rank padding and dtype
    (launch.MAX_BLOCK_R, from the compile metadata) hands the call to one that fits, and that
    path is right at the large padding (here block_r 256 runs under the interpreter)."""
    ml.TUNE["path"] = path
    counted = _count_launches(monkeypatch)
    tensors, seg, ranks, scaling = make_case(3, "uniform", 40, 48, 40, rank_pool=(8, 16),
                                             dtype=dtype, seed=4)  # fmt: skip
    ranks[0] = max_rank  # lora_a / lora_b were drawn with r_max = 16: widen them
    for name, dim in (("lora_a", 1), ("lora_b", 2)):
        t = tensors[name]
        shape = list(t.shape)
        shape[dim] = max_rank
        wide = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=dtype) * 0.1
        tensors[name] = wide
    run_and_compare(tensors, seg, ranks, scaling, dtype)
    ran = {k for k, c in counted.items() if c.n}
    assert ran == {k for k in LAUNCHES[runs][1]}, ran


@pytest.mark.parametrize(("dtype", "rank"), [(torch.float32, 200), (BF16, 300)],
                         ids=["fp32-256", "bf16-512"])  # fmt: skip
def test_ranks_no_kernel_tile_fits_run_the_reference(dtype, rank, monkeypatch):
    """Rank padding 256 in fp32, 512 in any dtype: no path's tiles are known to fit, so the
    call warns and runs the pure-torch reference (no kernel launch), same results and grads."""
    counted = _count_launches(monkeypatch)
    tensors, seg, ranks, scaling = make_case(2, "uniform", 24, 32, 24, rank_pool=(8,),
                                             dtype=dtype, seed=6)  # fmt: skip
    ranks[1] = rank
    tensors["lora_a"] = (torch.randn(2, rank, 32) * 0.1).to(dtype)
    tensors["lora_b"] = (torch.randn(2, 24, rank) * 0.1).to(dtype)
    with pytest.warns(UserWarning, match="pure-torch reference"):
        run_and_compare(tensors, seg, ranks, scaling, dtype)
    assert not any(c.n for c in counted.values())


def test_deterministic_mode_is_bitwise_repeatable():
    tensors, seg, ranks, scaling = make_case(3, "uniform", seed=9, **SMALL)
    ml.TUNE.update(path="split", split_k=3, wgrad_chunk=32)  # would use atomics...
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert ml._split_k(10, 4096, ml._cfg(torch.device("cpu")), torch.device("cpu"))[0] == 1
        outs = [run_and_compare(tensors, seg, ranks, scaling, torch.float32) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(prev)
    (y1, g1), (y2, g2) = outs
    assert torch.equal(y1, y2) and all(torch.equal(p, q) for p, q in zip(g1, g2, strict=True))


def test_gluon_shrink_row_tile_rule():
    """sh_gl_bm "auto" (launch_shrink_gluon.auto_row_tile, gluon_plan): 64-row tiles when they
    fill more than half of the programs and at most all; else 128. Tile counts of the
    benchmark's layouts (bench_multi_lora.make_inputs, seed 0), hand-checked: T = 2048 N = 8
    has 20 / 36 tiles of 128 / 64 rows, T = 4096 N = 8 37 / 69, T = 8192 N = 8 69 / 133."""
    from kernels import launch_shrink_gluon as lsg

    assert lsg.auto_row_tile(36, 132) == 128  # T = 2048: stream-K over 128-row tiles instead
    assert lsg.auto_row_tile(66, 132) == 128 and lsg.auto_row_tile(67, 132) == 64
    assert lsg.auto_row_tile(69, 132) == 64 and lsg.auto_row_tile(132, 132) == 64
    assert lsg.auto_row_tile(133, 132) == 128  # T = 8192: a second wave of 64-row tiles
    rng = np.random.default_rng(0)
    ranks = [int(r) for r in rng.choice([16, 32, 64], size=8)]
    seg = rng.multinomial(4096, [1.0 / 8] * 8).tolist()
    lay = kernels.MultiLoraLayout(seg, ranks, [2.0] * 8)
    cfg = dict(sh_gl_bm="auto", sh_gl_stream_k=True, sh_gl_min_steps=16)
    bm, tiles, units = lsg.gluon_plan(lay, 64, 132, cfg, torch.device("cpu"))
    assert (bm, tiles.shape[0], units) == (64, 69, 64)  # 69 whole tiles, 64 K steps each
    bm, tiles, units = lsg.gluon_plan(lay, 64, 200, cfg, torch.device("cpu"))
    # 69 <= 200 / 2: 128-row tiles, and 37 <= 200 / 3 of them: stream-K, >= 16 steps each
    assert (bm, tiles.shape[0], units) == (128, 37, 16)


def test_gluon_shrink_stream_k_rule():
    """The Gluon shrink's work split (kernels/launch_shrink_gluon.gluon_units): while the row
    tiles fill at most a third of the programs, their K steps shared evenly, >= 16 steps each;
    else, with stream-K off, in deterministic mode or with TUNE split_k = 1, whole tiles; TUNE
    split_k = s: ranges of cdiv(K steps, s). Hand-computed (H200: 132 SMs)."""
    from kernels import launch_shrink_gluon as lsg

    cfg = dict(sh_gl_stream_k=True, sh_gl_min_steps=16)
    assert lsg.gluon_units(32, 64, 132, cfg) == 16  # 4096², T = 2048: 2048 steps / 132 = 15.5
    assert lsg.gluon_units(44, 64, 132, cfg) == 22  # 44 = 132 / 3 tiles: still stream-K
    assert lsg.gluon_units(45, 64, 132, cfg) == 64  # T = 4096, N = 32: whole tiles
    assert lsg.gluon_units(80, 64, 132, cfg) == 64  # T = 8192
    assert lsg.gluon_units(160, 64, 132, cfg) == 128  # T = 16384: two tiles per program
    assert lsg.gluon_units(20, 16, 132, cfg) == 16  # dY of k/v: >= 16 steps = whole tiles
    assert lsg.gluon_units(3, 10, 132, cfg) == 10  # a tile shorter than 16 steps: whole
    assert lsg.gluon_part_slots(64, 39) == 3  # e.g. tile [64, 128) meets [39, 78), [78, 117), [117, 156)
    assert lsg.gluon_part_slots(64, 64) == 2 and lsg.gluon_part_slots(64, 128) == 2
    assert lsg.gluon_units(32, 64, 132, dict(cfg, sh_gl_stream_k=False)) == 64
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ml.TUNE, "split_k", 3)
        assert lsg.gluon_units(80, 64, 132, cfg) == 22
        mp.setitem(ml.TUNE, "split_k", 1)
        assert lsg.gluon_units(32, 64, 132, cfg) == 64
    torch.use_deterministic_algorithms(True)
    try:
        assert lsg.gluon_units(32, 64, 132, cfg) == 64
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("seed", range(3))
def test_gluon_shrink_stream_k_covers_every_step_once(seed):
    """Property: for random tile counts, K steps and SM counts, the programs the launcher
    starts (cdiv(units total, units per program)) cover every (tile, K step) exactly once,
    each has work, and for every tile the kernel's own arithmetic (first program
    (t·K) // U, n_parts ((t+1)·K - 1) // U - first + 1) names exactly the programs that cover
    it, with slots below gluon_part_slots: what PART and the tickets rely on."""
    import random

    from kernels import launch_shrink_gluon as lsg

    rng = random.Random(seed)
    cfg = dict(sh_gl_stream_k=True, sh_gl_min_steps=16)
    for _ in range(300):
        n_tiles, k, progs = rng.randint(1, 200), rng.randint(1, 230), rng.randint(1, 140)
        forced = rng.choice([None, None, 1, 2, 5])
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(ml.TUNE, "split_k", forced)
            units = lsg.gluon_units(n_tiles, k, progs, cfg)
        total = n_tiles * k
        grid = -(-total // units)
        assert grid <= progs or (forced or 0) > 1  # one wave unless a test forces splits
        covered = [0] * total
        for p in range(grid):
            lo, hi = p * units, min((p + 1) * units, total)
            assert lo < hi  # every program has work
            for u in range(lo, hi):
                covered[u] += 1
        assert covered == [1] * total
        for t in range(n_tiles):
            owners = [p for p in range(grid) if p * units < (t + 1) * k and (p + 1) * units > t * k]
            first = (t * k) // units
            n_parts = ((t + 1) * k - 1) // units - first + 1
            assert owners == list(range(first, first + n_parts))
            assert n_parts <= lsg.gluon_part_slots(k, units)
            assert (n_parts > 1) <= (units % k != 0)  # shared tiles only when the kernel splits


def test_gluon_shrink_only_on_compiled_cuda(monkeypatch):
    """The Gluon shrink is never chosen for CPU tensors even when asked for, and a failure of
    it falls back to the Triton shrink (x and dY) with a warning and a record in GLUON_FAILED."""
    import kernels.launch_shrink_gluon as lsg

    x = torch.zeros(8, 64, dtype=BF16)
    tensors, seg, ranks, scaling = make_case(3, "zipf", rank_pool=(8, 16, 64), dtype=BF16,
                                             seed=2, **SMALL)  # fmt: skip
    layout = kernels.MultiLoraLayout(seg, ranks, scaling)
    assert not lsg.shrink_gluon_ok(x, tensors["lora_a"], True, layout,
                                   dict(ml.TUNE["interp"], sh_gluon=True))  # fmt: skip
    _assert_gluon_failure_falls_back(monkeypatch, lsg, "shrink_gluon", "shrink_gluon_ok",
                                     "shrink", "stream", "shrink", 2)  # fmt: skip


def test_gluon_shrink_refuses_configs_it_cannot_run():
    """The Gluon shrink's own requirements (launch_shrink_gluon.shrink_gluon_fits, checked
    after the device ones): one ring stage (the first wait would never return), more warps
    than 16-row MMA slices of the row tile, K = 0, a backward K that is no multiple of 64, fp32,
    ranks above 64."""
    from kernels.launch_shrink_gluon import shrink_gluon_fits as fits

    lay = kernels.MultiLoraLayout([4, 4], [8, 16], [1.0, 1.0])
    cfg = dict(sh_gl_bm=128, sh_gl_warps=4, sh_gl_stages=8)
    x, w = torch.zeros(8, 128, dtype=BF16), torch.zeros(2, 16, 128, dtype=BF16)
    assert fits(x, w, True, lay, cfg)
    assert not fits(x, w, True, lay, dict(cfg, sh_gl_stages=1))
    assert not fits(x, w, True, lay, dict(cfg, sh_gl_bm=64, sh_gl_warps=8))
    assert fits(x, w, True, lay, dict(cfg, sh_gl_warps=8))
    assert not fits(x[:, :0], w[:, :, :0], True, lay, cfg)
    assert fits(torch.zeros(8, 72, dtype=BF16), torch.zeros(2, 16, 72, dtype=BF16), True, lay, cfg)
    assert not fits(torch.zeros(8, 72, dtype=BF16), torch.zeros(2, 72, 16, dtype=BF16), False, lay, cfg)
    assert not fits(x.float(), w.float(), True, lay, cfg)
    wide = kernels.MultiLoraLayout([4, 4], [8, 128], [1.0, 1.0])
    assert not fits(x, torch.zeros(2, 128, 128, dtype=BF16), True, wide, cfg)


def test_gluon_wgrad_requirements_and_balance():
    """The Gluon weight-gradient reduction's own requirements (wgrad_gluon_fits: 16-bit P and
    Q of one dtype, ranks <= 64, >= 2 stages, 64 / 128 / 256 columns, the ring within one
    program's shared memory) and when its items (segments x column blocks, no token splits)
    fill and balance the SMs (wgrad_balanced), hand-computed."""
    from kernels.launch_wgrad_gluon import wgrad_balanced as balanced
    from kernels.launch_wgrad_gluon import wgrad_gluon_fits as fits

    lay = kernels.MultiLoraLayout([5, 0, 7], [8, 16, 64], [1.0] * 3)
    cfg = dict(wg_gl_stages=8, wg_gl_bn=128)
    p, q = torch.zeros(12, 64, dtype=BF16), torch.zeros(12, 300, dtype=BF16)
    assert fits(p, q, lay, cfg)
    assert not fits(p.float(), q.float(), lay, cfg)
    assert not fits(p, q.half(), lay, cfg)
    assert not fits(p, q, lay, dict(cfg, wg_gl_stages=1))
    assert not fits(p, q, lay, dict(cfg, wg_gl_bn=96))
    assert not fits(p, q, kernels.MultiLoraLayout([6, 6], [8, 128], [1.0, 1.0]), cfg)
    # ring bytes: stages x (64 x 64 + 64 x bn) x 2 + 1024 <= 232448
    assert fits(p, q, lay, dict(cfg, wg_gl_stages=9)) and not fits(p, q, lay, dict(cfg, wg_gl_stages=10))
    assert fits(p, q, lay, dict(cfg, wg_gl_bn=256, wg_gl_stages=5))
    assert not fits(p, q, lay, dict(cfg, wg_gl_bn=256, wg_gl_stages=6))
    # 2 non-empty segments (1 step each) x cdiv(300, 128) = 6 items
    assert balanced(lay, 300, cfg, n_sms=6) and not balanced(lay, 300, cfg, n_sms=7)
    # 4 segments of 640, 64, 64, 64 tokens (10, 1, 1, 1 steps) x 8 column blocks = 32 items on
    # 8 SMs: mean share 13 x 8 / 8 = 13 steps >= 10 / 2; with 8 more short segments it is not
    skew = kernels.MultiLoraLayout([640, 64, 64, 64], [8] * 4, [1.0] * 4)
    assert balanced(skew, 1024, cfg, n_sms=8)
    skew2 = kernels.MultiLoraLayout([1280] + [64] * 3, [8] * 4, [1.0] * 4)
    assert not balanced(skew2, 1024, cfg, n_sms=32)  # 20 steps > 2 x 23 x 8 / 32 = 11.5
    table = skew2.segments_longest_first(torch.device("cpu"))
    assert table[:, 0].tolist() == [0, 1, 2, 3] and table[0, 2].item() == 1280


def test_gluon_wgrad_failure_falls_back_to_triton(monkeypatch):
    """If the Gluon weight-gradient reduction cannot build or launch, the Triton kernel runs
    instead (dA and dB, same gradients as the reference), with a warning and a record in
    GLUON_FAILED; on CPU tensors it is never chosen, even when asked for."""
    import kernels.launch_wgrad_gluon as lwg

    tensors, seg, ranks, scaling = make_case(3, "zipf", rank_pool=(8, 16, 64), dtype=BF16,
                                             seed=2, **SMALL)  # fmt: skip
    layout = kernels.MultiLoraLayout(seg, ranks, scaling)
    x = tensors["x"]
    assert not lwg.wgrad_gluon_ok(x, x, layout, dict(ml.TUNE["interp"], wg_gluon=True))
    _assert_gluon_failure_falls_back(monkeypatch, lwg, "wgrad_gluon", "wgrad_gluon_ok",
                                     "weight gradient", "gemm", "wgrad", 2)  # fmt: skip


def test_gluon_success_results_are_used(monkeypatch):
    """When a Gluon launcher returns, its result is what the layer uses and the Triton kernel
    does not run (launch_gemm.try_gluon passes results through: a launcher returning None
    would read as a failure and run the Triton kernel as well). Fakes stand in for the three
    Gluon launchers, each filling its output with a sentinel."""
    import kernels.launch_gemm as lg
    import kernels.launch_shrink_gluon as lsg
    import kernels.launch_wgrad_gluon as lwg
    from kernels import launch

    def fake_shrink(x, w, kmajor, out, layout, scale, cfg):
        return out.fill_(3.0)

    def fake_wgrad(p, q, like, transpose_out, layout, scale, cfg):
        return torch.full_like(like, 5.0)

    def fake_gemm(a, w, w_kmajor, layout, s, v, cfg, out):
        return out.fill_(7.0)

    monkeypatch.setattr(lg, "GLUON_FAILED", [])
    for module, name, fake in ((lsg, "shrink_gluon", fake_shrink), (lwg, "wgrad_gluon", fake_wgrad),
                               (lg, "_gemm_lora_gluon", fake_gemm)):  # fmt: skip
        monkeypatch.setattr(module, name, fake)
    monkeypatch.setattr(lsg, "shrink_gluon_ok", lambda *a: True)
    monkeypatch.setattr(lwg, "wgrad_gluon_ok", lambda *a: True)
    monkeypatch.setattr(lg, "gluon_ok", lambda *a: True)
    counted = _count_launches(monkeypatch)
    tensors, seg, ranks, scaling = make_case(3, "zipf", rank_pool=(8, 16, 64), dtype=BF16,
                                             seed=2, **SMALL)  # fmt: skip
    layout = kernels.MultiLoraLayout(seg, ranks, scaling)
    x, a, b = tensors["x"], tensors["lora_a"], tensors["lora_b"]
    cfg = launch._cfg(x.device)
    s = launch._shrink(x, a, a.stride(), layout, True, cfg, BF16)
    assert (s == 3.0).all()
    da = launch._wgrad(s, x, a, False, layout, False, cfg)
    assert da.shape == a.shape and (da == 5.0).all()
    y = lg.gemm_lora(x, tensors["weight"], True, layout, s, b, cfg)
    assert (y == 7.0).all()
    assert counted["shrink"].n == counted["wgrad"].n == counted["gemm_lora"].n == 0
    assert lg.GLUON_FAILED == []
