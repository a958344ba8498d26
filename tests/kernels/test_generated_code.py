"""Properties of the compiled kernels' sm_90 PTX that the H200 timings depend on.

Compiled on the CPU (no GPU needed) by benchmarks/ptx_fingerprint.py with the shipped tile
sizes. Both properties below were lost once without any numerical test noticing, and each
cost measured time on the H200 (docs/kernels_log.md §3g):

* the split-K and weight-gradient reductions use relaxed fp32 atomics: tl.atomic_add's default
  (acq_rel) compiled every one to a fence, a returning atomic and an L1 invalidate;
* operand tiles whose contiguous axis is the rank axis (the backward shrink's B_i, the
  weight-gradient kernel's S / dS, shrink_expand's W) come in as 16-byte accesses (async
  copies where pipelined): a runtime mask on that axis (``r < r_i``) turned them into
  synchronous 2-byte global loads.

A third property is about launching at all: each path's tiles must fit in the 227 KB of
shared memory one program may use, at every rank padding the dispatcher sends to it
(``launch.MAX_BLOCK_R``); a kernel over it compiles but fails at launch with OutOfResources.

The configurations mark an int argument 16-divisible wherever it is at the Llama-3.1-8B
shapes, as Triton's launcher specialises it there; a kernel whose masks need an alignment the
launch cannot give shows up here.
"""

from __future__ import annotations

import contextlib
import re

import pytest

from benchmarks import ptx_fingerprint

ALL = sorted(ptx_fingerprint._builders())  # every kernel configuration the launchers use
# the stream path's kernels in bf16: shrink (forward A_i, backward B_i), the weight-gradient
# kernel plain (dB), with the dX expand (dA + dX) and as the forward's expand
STREAM = ["shrink_bf16", "shrink_bwd_bf16", "wgrad_plain_bf16", "wgrad_dadx_bf16",
          "wgrad_stream_bf16"]  # fmt: skip
ATOMIC = [n for n in ALL if n.startswith(("shrink_", "wgrad_plain", "wgrad_dadx", "wgrad_pair"))
          and not n.startswith("shrink_expand")]  # fmt: skip


@contextlib.contextmanager
def _compiled_mode():
    """Compiled kernels, not interpreter functions (conftest sets TRITON_INTERPRET per test)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "0")
        yield


@pytest.fixture(scope="module")
def ptx():
    with _compiled_mode():
        return ptx_fingerprint.configurations()  # ~40 s on a CPU with a cold Triton cache


# Known exceptions, off the default paths: the split path's expand and the fused path's forward
# shrink_expand read V = B_i (rank axis contiguous) under the r_i mask, because its padding must
# read as 0 and zeroing it in registers made the rank-128 fp32 tile run out of shared memory.
KNOWN_NARROW = {"expand_bf16", "shrink_expand_fwd_bf16"}


@pytest.mark.parametrize("name", ALL)
def test_no_sub_word_global_accesses(ptx, name):
    """Every global load and store moves 4 bytes or more per instruction (tiles 16); the known
    exceptions still have them (remove one from KNOWN_NARROW once it is fixed)."""
    narrow = re.findall(r"(?:ld|st)\.global(?:\.\w+)*\.(?:b16|u16|s16|b8|u8)\b", ptx[name])
    if name in KNOWN_NARROW:
        assert narrow, f"{name} has no sub-word accesses any more: drop it from KNOWN_NARROW"
    else:
        assert not narrow, f"{name}: {len(narrow)} sub-word global accesses, e.g. {narrow[0]}"


@pytest.mark.parametrize("name", STREAM)
def test_stream_path_tiles_are_async_copies(ptx, name):
    assert len(re.findall(r"cp\.async\.cg\.shared\.global", ptx[name])) >= 2, name


@pytest.mark.parametrize("name", ATOMIC)
def test_reduction_atomics_are_relaxed(ptx, name):
    """The fp32 split reductions: relaxed atomics, never an acquire/release one. The only
    ordered atomic is the split-K shrink's one int32 ticket per program (_last_to_arrive)."""
    atomics = re.findall(r"(?:atom|red)\.global[.\w]*\.add[.\w]*", ptx[name])
    sums = [a for a in atomics if a.endswith("f32")]
    assert sums, f"{name}: no fp32 atomics (ATOMIC=True configuration)"
    assert all(".relaxed." in a for a in sums), f"{name}: {sorted(set(sums))}"
    tickets = [a for a in atomics if not a.endswith("f32")]
    assert tickets == (["atom.global.gpu.acq_rel.add.u32"] if name.startswith("shrink") else [])


@pytest.mark.parametrize("name", [n for n in ATOMIC if n.startswith("shrink_")])
def test_split_k_sum_is_read_before_it_is_zeroed(ptx, name):
    """The last K-split program reads the fp32 sums (ld.global.cg) in the layout of OUT's store
    and re-zeroes them in the atomics' layout: a barrier must separate the two, or one thread
    zeroes what another has not read yet (wrong S for bf16 OUT on the H200, 2026-11-29)."""
    code = ptx[name]
    last_read = code.rfind("ld.global.cg")
    assert last_read > 0, f"{name}: no L2 read of the sums"
    after = code[last_read:]
    barrier, store = after.find("bar.sync"), after.find("st.global")
    assert 0 <= barrier < store, f"{name}: no barrier between reading and zeroing the sums"


def test_forward_expand_fits_two_programs_per_sm():
    """The stream path's forward expand (8 warps) needs <= 128 registers per thread for two
    programs per SM (65,536 registers). Zeroing P's padding in registers before the dot kept
    P out of shared memory and took it to 138 (one program per SM); feeding P untouched gives
    98 with Triton 3.6 and 3.9 (docs/kernels_log.md §3h)."""
    with _compiled_mode():
        regs = ptx_fingerprint.registers(["wgrad_stream_bf16"])
    if not regs:
        pytest.skip("Triton's bundled cuobjdump is missing")
    assert regs["wgrad_stream_bf16"] <= 128, regs


# each path's kernels in ptx_fingerprint's names (the gemm path's own limit is gemm_ok's)
PATH_KERNELS = {"stream": ["shrink", "shrink_bwd", "wgrad_plain", "wgrad_dadx", "wgrad_stream"],
                "split": ["shrink", "shrink_bwd", "expand", "wgrad_plain"],
                "fused": ["shrink_expand_fwd", "shrink_expand_bwd", "wgrad_plain", "wgrad_pair"]}  # fmt: skip
DTYPE_OF_SIZE = {2: "bf16", 4: "fp32"}


@pytest.fixture(scope="module")
def smem():
    """shared_memory(names, block_r) -> {name: bytes per program}, each compiled once."""
    cache: dict = {}

    def get(names, block_r):
        todo = {n for n in names if (n, block_r) not in cache}
        with _compiled_mode():  # called from the tests' bodies
            for n, v in ptx_fingerprint.shared_memory(todo, block_r=block_r).items():
                cache[(n, block_r)] = v
        return {n: cache[(n, block_r)] for n in names}

    return get


@pytest.mark.parametrize("elem", [2, 4], ids=["16-bit", "fp32"])
@pytest.mark.parametrize("path", list(PATH_KERNELS))
def test_max_block_r_table_matches_shared_memory(smem, path, elem):
    """launch.MAX_BLOCK_R, which routes calls away from paths whose tiles would not fit
    (OutOfResources at launch), is safe: at the listed rank padding every kernel of the path
    fits in sm_90's 227 KB per program. For 16-bit operands it is also tight where the next
    padding is at most 256 (some kernel does not fit there); fp32 compiles of large tiles take
    minutes on a CPU, so fp32's tightness is only in docs/kernels_log.md §3g."""
    from kernels.launch import MAX_BLOCK_R

    limit = MAX_BLOCK_R[path][elem]
    names = [f"{k}_{DTYPE_OF_SIZE[elem]}" for k in PATH_KERNELS[path]]
    got = smem(names, limit)
    over = {n: b for n, b in got.items() if b > ptx_fingerprint.SM90_SHARED_BYTES}
    assert not over, f"{path} at block_r {limit}: {over}"
    if elem == 2 and 2 * limit <= 256:
        worst = max(smem(names, 2 * limit).values())
        assert worst > ptx_fingerprint.SM90_SHARED_BYTES, f"{path} fits at {2 * limit} too: raise it"


@pytest.mark.parametrize("peel", [False, True], ids=["shipped", "peeled"])
@pytest.mark.parametrize("kmajor", [True, False], ids=["forward", "backward"])
def test_gluon_gemm_builds_for_sm90(kmajor, peel):
    """The Gluon GEMM (kernels/gemm_lora_gluon.py; GPU-only, no interpreter) compiles with this
    Triton for sm_90 at the launcher's tile (128 x 256, 3 stages, 8 warps): its shared memory
    fits one program (4 stages do not: OutOfResources on the H200, 2026-11-29), its MMAs are
    wgmma, its operand loads TMA copies completing on mbarriers, the output a TMA store, and
    the LoRA steps add loads (S, V_a) without a second MMA shape, their MMA cut to the rank
    (1, 2 or 4 k16 steps) unless gm_rank_k is off. "peeled": the opt-in base
    loop without the producer's tile-switch and LoRA branches (TUNE gpu gm_peel)."""
    plain = ptx_fingerprint.compile_gluon_gemm(kmajor, lora=False, peel=peel)
    lora = ptx_fingerprint.compile_gluon_gemm(kmajor, lora=True, peel=peel)
    assert lora.metadata.shared <= ptx_fingerprint.SM90_SHARED_BYTES
    four = ptx_fingerprint.compile_gluon_gemm(kmajor, lora=True, stages=4, peel=peel)
    assert four.metadata.shared > ptx_fingerprint.SM90_SHARED_BYTES
    for kernel in (plain, lora):
        code = kernel.asm["ptx"]
        assert set(re.findall(r"wgmma\.mma_async\.[\w.]+", code)) == {
            "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16"}
        assert re.search(r"cp\.async\.bulk\.tensor\.2d\.shared::\w+\.global\.mbarrier", code)
        assert re.search(r"cp\.async\.bulk\.tensor\.2d\.global\.shared::cta", code)  # store
    count = lambda k: len(re.findall(r"cp\.async\.bulk\.tensor\.2d\.shared", k.asm["ptx"]))  # noqa: E731
    assert count(lora) > count(plain)
    # the LoRA MMA cut to the adapter's rank (gm_rank_k, shipped): one wgmma branch per width,
    # 16 / 32 / 64 ranks = 1 / 2 / 4 k16 instructions, against the full 64 ranks' 4
    full_k = ptx_fingerprint.compile_gluon_gemm(kmajor, lora=True, peel=peel, rank_k=False)
    wgmma = lambda k: len(re.findall(r"wgmma\.mma_async", k.asm["ptx"]))  # noqa: E731
    assert wgmma(full_k) == wgmma(plain) + 4 and wgmma(lora) == wgmma(plain) + 1 + 2 + 4
    # S's rows masked in registers (gm_s_regs, shipped): 7 more, with S as a register operand
    s_regs = ptx_fingerprint.compile_gluon_gemm(kmajor, lora=True, peel=peel, s_regs=True)
    reg_a = r"wgmma\.mma_async[^\n]*\n?\s*\{[^}]*\},\s*\{%r"
    assert wgmma(s_regs) == wgmma(lora) + 7 and len(re.findall(reg_a, s_regs.asm["ptx"])) == 7
    assert not re.findall(reg_a, lora.asm["ptx"])
    # C stored in two halves (gm_epi_halves, off): a fourth ring stage fits, two TMA stores
    halves = ptx_fingerprint.compile_gluon_gemm(kmajor, lora=True, peel=peel, stages=4,
                                                halves=True)  # fmt: skip
    assert halves.metadata.shared <= ptx_fingerprint.SM90_SHARED_BYTES
    store = r"cp\.async\.bulk\.tensor\.2d\.global\.shared::cta"
    assert len(re.findall(store, halves.asm["ptx"])) == 2 == 2 * len(re.findall(store, lora.asm["ptx"]))


def test_dx_gemm_beside_da_leaves_room_for_one_da_program():
    """TUNE gpu gm_side_fit: the gemm path's dX GEMM, compiled as it runs while dA is on the
    side stream (3 ring stages, C in halves, at most 200 registers per thread), and one
    program of the dA reduction (the Triton weight-gradient kernel, 4 warps) fit on one SM
    together: registers (allocated per warp in units of 256) and shared memory (plus 1 KB
    the hardware reserves per program). Without the cap the GEMM takes 232 registers per thread
    (Triton 3.9; 234 with 3.6), too many for a dA program beside it."""
    with _compiled_mode():
        gemm = ptx_fingerprint.compile_gluon_gemm(False, lora=True, stages=3, halves=True,
                                                  s_regs=True, maxnreg=200)  # fmt: skip
        uncapped = ptx_fingerprint.compile_gluon_gemm(False, lora=True, stages=3, halves=True,
                                                      s_regs=True)  # fmt: skip
        da = ptx_fingerprint.compiled(["wgrad_plain_bf16"])["wgrad_plain_bf16"]
        if not ptx_fingerprint.registers(["wgrad_stream_bf16"]):
            pytest.skip("Triton's bundled cuobjdump is missing")
        usage = {k: ptx_fingerprint.cubin_usage(v) for k, v in
                 dict(gemm=gemm, uncapped=uncapped, da=da).items()}  # fmt: skip

    def regs(name, warps):  # registers one program holds
        return -(-usage[name]["REG"] * 32 // 256) * 256 * warps

    assert usage["gemm"]["REG"] <= 200 and usage["gemm"]["LOCAL"] == 0, usage["gemm"]
    assert regs("gemm", 8) + regs("da", da.metadata.num_warps) <= 65536, usage
    assert regs("uncapped", 8) > 65536 - regs("da", da.metadata.num_warps), usage
    reserved = 1024  # per program
    assert gemm.metadata.shared + da.metadata.shared + 2 * reserved <= 233472, (
        gemm.metadata.shared, da.metadata.shared)


@pytest.mark.parametrize("split_k", [True, False], ids=["split-k", "one-split"])
@pytest.mark.parametrize("kmajor", [True, False], ids=["forward", "backward"])
def test_gluon_shrink_builds_for_sm90(kmajor, split_k):
    """The Gluon shrink (kernels/shrink_gluon.py; GPU-only) compiles with this Triton for sm_90
    at the launcher's shapes (x box 128 x 64, W box 64 x 64, 6 stages, 4 warps): one program
    fits an SM's shared memory, and so would 8 stages; the MMAs are wgmma of 64 ranks, both
    operands arrive by TMA, and the only atomic is the split-K build's ticket (partial sums are
    plain stores into a scratch buffer, read back by the tile's last split)."""
    kernel = ptx_fingerprint.compile_gluon_shrink(kmajor, split_k, stages=6)
    assert kernel.metadata.shared <= ptx_fingerprint.SM90_SHARED_BYTES
    eight = ptx_fingerprint.compile_gluon_shrink(kmajor, split_k, stages=8)
    assert eight.metadata.shared <= ptx_fingerprint.SM90_SHARED_BYTES
    code = kernel.asm["ptx"]
    assert set(re.findall(r"wgmma\.mma_async\.[\w.]+", code)) == {
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16"}
    assert len(re.findall(r"cp\.async\.bulk\.tensor\.2d\.shared::\w+\.global\.mbarrier", code)) >= 2
    atomics = re.findall(r"\b(?:atom|red)\.global\.[\w.]+", code)
    if split_k:
        assert atomics == ["atom.global.gpu.acq_rel.add.u32"]
        assert "fence.acq_rel.gpu" in code and "ld.global.cg" in code
    else:
        assert atomics == [] and "ld.global.cg" not in code
    if split_k:  # sh_gl_part "atomic" (off): the pieces' sums as relaxed fp32 reductions
        atomic = ptx_fingerprint.compile_gluon_shrink(kmajor, split_k, stages=8, part_atomic=True)
        found = set(re.findall(r"\b(?:atom|red)\.global\.[\w.]+", atomic.asm["ptx"]))
        assert found == {"atom.global.gpu.acq_rel.add.u32", "red.global.gpu.relaxed.add.f32"}


@pytest.mark.parametrize("transpose_out", [False, True], ids=["dA", "dB"])
def test_gluon_wgrad_builds_for_sm90(transpose_out):
    """The Gluon weight-gradient reduction (kernels/wgrad_gluon.py; GPU-only, off by default,
    slower than the Triton kernel on the H200) compiles with this Triton for sm_90 at the launcher's shapes (P box
    64 x 64, Q box 64 x 128, 8 stages, 4 warps): one program fits an SM's shared memory, the
    MMA is a 64-rank x 128-column wgmma with P transposed in shared memory, both operands
    arrive by TMA, the segment-end mask writes shared memory, and there are no atomics. dA's
    stores are 4-byte pairs of bf16 along the columns; dB's go one rank-contiguous element at
    a time into lora_b's layout (2-byte stores: dB is small, 4 MB at the k/v shape)."""
    kernel = ptx_fingerprint.compile_gluon_wgrad(transpose_out)
    assert kernel.metadata.shared <= ptx_fingerprint.SM90_SHARED_BYTES
    code = kernel.asm["ptx"]
    assert set(re.findall(r"wgmma\.mma_async\.[\w.]+", code)) == {
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16"}
    assert re.search(r"wgmma\.mma_async[^;]*, 1, 1, 1, 1;", code)  # A (P) read transposed
    assert len(re.findall(r"cp\.async\.bulk\.tensor\.2d\.shared::\w+\.global\.mbarrier", code)) >= 2
    assert "st.shared" in code and "fence.proxy.async" in code
    assert re.findall(r"\b(?:atom|red)\.global", code) == []
