"""The gemm path's GEMM in Gluon: the LoRA term as extra K steps of one software pipeline that
runs across output tiles (Hopper, CUDA only; the gemm path's default there since 2026-11-29,
TUNE gpu gm_gluon; launch_gemm.gluon_ok says when it runs).

Computes what kernels/gemm_lora_triton.py computes, for every row m and column n::

    C[m, n] = sum_k A[m, k] B[k, n]  +  sum_r S[m, r] V_a[r, n]        a = adapter owning row m

Why a second kernel: in the Triton one the LoRA term runs after each tile's K loop, behind
dependent loads that nothing overlaps (+41 µs per GEMM at 4096², T = 8192; docs/kernels_log.md
§3e/§3f), because Triton 3.6 cannot issue loads across the tile boundary. Here the program
itself schedules its loads. Each persistent program walks its tiles as one stream of *steps*:
a tile is cdiv(K, BK) base steps over (A, B) followed by one step per adapter whose rows it
holds, over (S, V_a). S boxes [BM, 64] have the shape of A boxes and V boxes that of B boxes,
so every step uses the same ring of shared-memory stages, and the TMA loads of the next
STAGES - 1 steps (the next tile's included) are in flight while the current step's wgmma and
the previous tile's TMA store run.

A LoRA step masks its tiles in shared memory before the MMA: S rows of other adapters (tiles
holding two or more adapters only) and V's rank padding >= r_a (any values, even NaN, by the
contract: 0 x NaN would be NaN). S's own padding columns are exact zeros (the shrink writes
them); boxes past r_max or past the tensors' ends are zero-filled by TMA.

Measured on the H200 (docs/kernels_log.md §3i): the LoRA term costs +29-35 µs per GEMM at 4096²,
T = 8192 (Triton GEMM: +41-46), and the k/v layer step is 5-8 % faster than with the Triton
GEMM. Constexpr switches: LORA_MASK=False is a timing diagnostic (wrong results); PEEL_BASE
(TUNE gpu gm_peel, off; within 0-2 % in the layer step, §3j) runs the base steps in a
branch-free loop. RANK_K (TUNE gpu gm_rank_k, shipped since session 12, §3k) cuts each LoRA
step's wgmma to 16, 32 or 64 ranks, so V's padding needs no masking pass for those ranks:
-14 to -19 µs per 4096² layer step at T = 8192.

Requires BK = 64 >= block_r, a 16-bit dtype, S in that dtype (TUNE narrow_s), and the operand
alignment gemm_ok checks. Gluon has no CPU interpreter: this kernel is tested on the GPU only
(tests/kernels/test_multi_lora_gpu.py) and compiled for sm_90 in CI (test_generated_code.py).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)

# Gluon renamed its TMA copies between Triton 3.6 (the H200's) and 3.9 (CI's)
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
# ... and its CTA barrier (3.6 thread_barrier, 3.9 barrier)
_cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier


@gluon.jit
def tma_ring(a_desc, b_desc, STAGES: gl.constexpr):
    """A STAGES-deep ring in shared memory for the TMA boxes of two descriptors (one step's
    operands per stage) and one initialised mbarrier per stage (count 1: the TMA's bytes)."""
    a_ring = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape,
                                       a_desc.layout)  # fmt: skip
    b_ring = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape,
                                       b_desc.layout)  # fmt: skip
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    return a_ring, b_ring, bars


@gluon.jit
def table_row(TABLE, item, N_ITEMS, PER):
    """(adapter, first row, end row) from row ``item // PER`` of a host [n, 3] int32 table
    (PER work items per row); zeros for items past N_ITEMS."""
    ok = item < N_ITEMS
    row = (item // PER) * 3
    ad = gl.load(TABLE + row, mask=ok, other=0)
    start = gl.load(TABLE + row + 1, mask=ok, other=0)
    end = gl.load(TABLE + row + 2, mask=ok, other=0)
    return ad, start, end


@gluon.jit
def _tile_of(tile, tiles_m, tiles_n, GROUP_M: gl.constexpr):
    """(pid_m, pid_n) of a linear tile id, GROUP_M row tiles per L2 group (as the Triton GEMM)."""
    per_group = GROUP_M * tiles_n
    first_m = (tile // per_group) * GROUP_M
    group_m = gl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (tile % per_group) % group_m
    pid_n = (tile % per_group) // group_m
    return pid_m, pid_n


@gluon.jit
def _tile_plan(tile, tiles_m, tiles_n, TILE_PLAN, BM: gl.constexpr, GROUP_M: gl.constexpr,
               LORA: gl.constexpr):  # fmt: skip
    """(off_m, pid_n, first adapter, LoRA steps) of one tile: with LORA one step per adapter
    from the first owning one of its rows to the last (rows are grouped by adapter). Both come
    from the host's per-row-tile table (MultiLoraLayout.row_tile_plan) and are only loaded
    here: the program computes nothing from them until the tile's base steps are issued, so
    the loads' latency hides under those steps (a dependent instruction would stall the warp
    at once, since warps issue in order)."""
    pid_m, pid_n = _tile_of(tile, tiles_m, tiles_n, GROUP_M)
    first = pid_m * 0
    n_lora = pid_m * 0
    if LORA:
        first = gl.load(TILE_PLAN + pid_m * 4)
        n_lora = gl.load(TILE_PLAN + pid_m * 4 + 1)
    return pid_m * BM, pid_n, first, n_lora


@gluon.jit
def _issue_base(k, off_m, off_n, a_desc, b_desc, a_slot, b_slot, bar, BK: gl.constexpr,
                B_KMAJOR: gl.constexpr):  # fmt: skip
    """TMA loads of base step k of a tile (A and B at K offset k·BK), completing on ``bar``."""
    mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
    _tma_load(a_desc, [off_m, k * BK], bar, a_slot)
    if B_KMAJOR:
        _tma_load(b_desc, [off_n, k * BK], bar, b_slot)
    else:
        _tma_load(b_desc, [k * BK, off_n], bar, b_slot)


@gluon.jit
def _issue_step(k, K_STEPS, off_m, off_n, first, a_desc, b_desc, s_desc, v_desc, V_ROWS_PER_AD,
                a_slot, b_slot, bar, BK: gl.constexpr, B_KMAJOR: gl.constexpr,
                LORA: gl.constexpr):  # fmt: skip
    """TMA loads of step k of a tile into one ring stage, completing on ``bar``."""
    is_base = k < K_STEPS
    if is_base:
        _issue_base(k, off_m, off_n, a_desc, b_desc, a_slot, b_slot, bar, BK, B_KMAJOR)
    if LORA:
        if not is_base:
            ad = first + k - K_STEPS
            mbarrier.expect(bar, s_desc.block_type.nbytes + v_desc.block_type.nbytes)
            _tma_load(s_desc, [off_m, 0], bar, a_slot)
            if B_KMAJOR:  # V_a = B_aᵀ: rows [a·d_out + off_n, +BN) of lora_b viewed 2-D
                _tma_load(v_desc, [ad * V_ROWS_PER_AD + off_n, 0], bar, b_slot)
            else:  # V_a = A_a: rows [a·r_max, +64) of lora_a viewed 2-D
                _tma_load(v_desc, [ad * V_ROWS_PER_AD, off_n], bar, b_slot)


@gluon.jit
def _mask_lora_stage(a_slot, b_slot, ad, rank, row_ad, multi, BN: gl.constexpr,
                     B_KMAJOR: gl.constexpr, RANK_K: gl.constexpr, S_REGS: gl.constexpr,
                     num_warps: gl.constexpr):  # fmt: skip
    """Zero, in shared memory, S rows not owned by adapter ``ad`` (row_ad: the tile's row ->
    adapter, only when it holds several adapters) and V_a's rank padding (rank >= r_a; with
    RANK_K only for ranks other than 16, 32 and 64, since _lora_mma reads no further)."""
    rows_k: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [num_warps, 1], [1, 0])  # [*, 64]
    if not S_REGS:  # (S_REGS: _lora_mma masks S's rows in registers instead)
        if multi:
            s = a_slot.load(rows_k)
            a_slot.store(gl.where((row_ad == ad)[:, None], s, gl.zeros_like(s)))
    if RANK_K:  # _lora_mma reads 16, 32 or 64 ranks: padding only if r_a is none of them
        v_pad = (rank != 16) & (rank != 32) & (rank < 64)
    else:
        v_pad = rank < 64
    if v_pad:
        if B_KMAJOR:  # b_slot [BN, 64]: the rank axis is the column
            v = b_slot.load(rows_k)
            offs_r = gl.arange(0, 64, layout=gl.SliceLayout(0, rows_k))
            b_slot.store(gl.where((offs_r < rank)[None, :], v, gl.zeros_like(v)))
        else:  # b_slot [64, BN]: the rank axis is the row
            cols_n: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [num_warps, 1], [1, 0])
            v = b_slot.load(cols_n)
            offs_r = gl.arange(0, 64, layout=gl.SliceLayout(1, cols_n))
            b_slot.store(gl.where((offs_r < rank)[:, None], v, gl.zeros_like(v)))
    if S_REGS:  # only V's pass can have stored: fence and synchronise only after it
        if v_pad:
            fence_async_shared()
            _cta_barrier()
    else:  # (as measured in session 12: after every LoRA step's pass, stores or not)
        fence_async_shared()  # generic-proxy stores before the async-proxy wgmma reads
        _cta_barrier()


@gluon.jit
def gemm_lora_gluon_kernel(a_desc, b_desc, c_desc, s_desc, v_desc, ROW_AD, RANKS, TILE_PLAN, M,
                           N, K, V_ROWS_PER_AD, B_KMAJOR: gl.constexpr, LORA: gl.constexpr,
                           STAGES: gl.constexpr, GROUP_M: gl.constexpr,
                           LORA_MASK: gl.constexpr, PEEL_BASE: gl.constexpr,
                           RANK_K: gl.constexpr, S_REGS: gl.constexpr,
                           EPI_HALVES: gl.constexpr, num_warps: gl.constexpr):  # fmt: skip
    """Persistent grid; program p owns tiles p, p + grid, ... Shapes: A [M, K] (box [BM, 64]),
    B = W [N, K] (box [BN, 64], B_KMAJOR) or W [K, N] (box [64, BN]), C [M, N] (box [BM, BN]),
    S [M, block_r] (box [BM, 64]), V = lora_b [N_ad·N, r_max] (box [BN, 64], B_KMAJOR) or
    lora_a [N_ad·r_max, N] (box [64, BN]).
    EPI_HALVES (TUNE gpu gm_epi_halves, on): C's box is [BM, BN / 2] and each tile is stored in
    two halves through one buffer of that size, which frees shared memory for a fourth ring
    stage at 128 x 256 tiles (4 x 48 KB + 32 KB, against 3 x 48 KB + 64 KB)."""
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1] * (2 if EPI_HALVES else 1)
    BK: gl.constexpr = a_desc.block_type.shape[1]
    dtype: gl.constexpr = a_desc.dtype
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BN, 16])
    a_ring, b_ring, bars = tma_ring(a_desc, b_desc, STAGES)
    c_smem = gl.allocate_shared_memory(dtype, c_desc.block_type.shape, c_desc.layout)

    tiles_m = gl.cdiv(M, BM)
    tiles_n = gl.cdiv(N, BN)
    num_tiles = tiles_m * tiles_n
    grid = gl.num_programs(0)
    k_steps = gl.cdiv(K, BK)

    # producer state: the next step to load is step p_k of tile p_tile; `issued` steps so far
    p_tile = gl.program_id(0)
    p_off_m, p_pid_n, p_first, p_nlora = _tile_plan(p_tile, tiles_m, tiles_n, TILE_PLAN, BM,
                                                    GROUP_M, LORA)  # fmt: skip
    p_k = p_tile * 0
    issued = p_tile * 0
    for _ in gl.static_range(STAGES - 1):  # prologue: STAGES - 1 steps ahead
        p_tile, p_k, p_off_m, p_pid_n, p_first, p_nlora, issued = _produce(
            p_tile, p_k, p_off_m, p_pid_n, p_first, p_nlora, issued, num_tiles, grid, tiles_m,
            tiles_n, k_steps, a_desc, b_desc, s_desc, v_desc, TILE_PLAN, V_ROWS_PER_AD, a_ring,
            b_ring, bars, BM, BN, BK, GROUP_M, B_KMAJOR, LORA)  # fmt: skip

    acc = warpgroup_mma_init(gl.zeros((BM, BN), gl.float32, acc_layout))
    rows_k: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [num_warps, 1], [1, 0])  # [*, 64]
    # S as wgmma's A operand in registers (S_REGS): 16-bit, two elements per 32-bit register
    s_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    used = issued * 0  # steps consumed
    for tile in range(gl.program_id(0), num_tiles, grid):
        off_m, pid_n, first, n_lora = _tile_plan(tile, tiles_m, tiles_n, TILE_PLAN, BM, GROUP_M,
                                                 LORA)  # fmt: skip
        off_n = pid_n * BN
        if LORA:  # loads issued now, used after the base steps
            rank0 = gl.load(TILE_PLAN + (off_m // BM) * 4 + 2)
            rank1 = gl.load(TILE_PLAN + (off_m // BM) * 4 + 3)
            if S_REGS:  # the rows' adapters where _lora_mma's S registers hold them
                offs_m = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, s_layout))
            else:
                offs_m = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, rows_k))
            row_ad = gl.load(ROW_AD + offs_m, mask=offs_m < M, other=-1)
        k_rest = k_steps * 0
        if PEEL_BASE:
            # While the consumer is more than STAGES - 1 steps from the end of this tile's base
            # steps, the producer (exactly that far ahead) issues base steps of this same tile:
            # no tile switch and no LoRA branch to test. Opt-in (TUNE gpu gm_peel), written
            # 2026-11-29 for the next GPU run: with LORA the general step has 191-207 SASS
            # instructions and 7 CTA barriers against 163-177 and 4 in the plain kernel.
            k_rest = gl.maximum(k_steps - (STAGES - 1), 0)
            for k in range(k_rest):
                acc, used = _consume(acc, used, k > 0, a_ring, b_ring, bars, STAGES, B_KMAJOR)
                slot = issued % STAGES
                _issue_base(p_k, p_off_m, p_pid_n * BN, a_desc, b_desc, a_ring.index(slot),
                            b_ring.index(slot), bars.index(slot), BK, B_KMAJOR)  # fmt: skip
                issued += 1
                p_k += 1
        for k in range(k_rest, k_steps):
            acc, used = _consume(acc, used, k > 0, a_ring, b_ring, bars, STAGES, B_KMAJOR)
            if p_tile < num_tiles:  # refill the stage the previous step used
                p_tile, p_k, p_off_m, p_pid_n, p_first, p_nlora, issued = _produce(
                    p_tile, p_k, p_off_m, p_pid_n, p_first, p_nlora, issued, num_tiles, grid,
                    tiles_m, tiles_n, k_steps, a_desc, b_desc, s_desc, v_desc, TILE_PLAN,
                    V_ROWS_PER_AD, a_ring, b_ring, bars, BM, BN, BK, GROUP_M, B_KMAJOR, LORA)  # fmt: skip
        if LORA:
            for j in range(n_lora):
                ad = first + j
                rank = gl.where(j == 0, rank0, rank1)
                if j > 1:  # a third adapter in one tile: its rank was not prefetched
                    rank = gl.load(RANKS + ad)
                slot = used % STAGES
                mbarrier.wait(bars.index(slot), (used // STAGES) & 1)
                if LORA_MASK:  # (False: a timing diagnostic only, wrong results)
                    _mask_lora_stage(a_ring.index(slot), b_ring.index(slot), ad, rank, row_ad,
                                     n_lora > 1, BN, B_KMAJOR, RANK_K, S_REGS,
                                     num_warps)  # fmt: skip
                acc, used = _lora_mma(acc, used, rank, ad, row_ad, n_lora > 1, a_ring, b_ring,
                                      STAGES, B_KMAJOR, RANK_K, S_REGS, s_layout)  # fmt: skip
                if p_tile < num_tiles:
                    p_tile, p_k, p_off_m, p_pid_n, p_first, p_nlora, issued = _produce(
                        p_tile, p_k, p_off_m, p_pid_n, p_first, p_nlora, issued, num_tiles, grid,
                        tiles_m, tiles_n, k_steps, a_desc, b_desc, s_desc, v_desc, TILE_PLAN,
                        V_ROWS_PER_AD, a_ring, b_ring, bars, BM, BN, BK, GROUP_M, B_KMAJOR,
                        LORA)  # fmt: skip
        # epilogue: the next tile's first loads are already in flight
        out = warpgroup_mma_wait(0, deps=[acc])
        if EPI_HALVES:  # C in two [BM, BN / 2] halves through one half-size buffer (the split
            # is thread-local: a column's top bit is a register index of the MMA layout)
            halves = gl.permute(gl.reshape(out.to(dtype), [BM, 2, BN // 2]), [0, 2, 1])
            lo, hi = gl.split(halves)
            _store_c(lo, c_smem, c_desc, off_m, off_n)
            _store_c(hi, c_smem, c_desc, off_m, off_n + BN // 2)
        else:
            _store_c(out.to(dtype), c_smem, c_desc, off_m, off_n)
    tma.store_wait(0)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))


@gluon.jit
def _store_c(val, c_smem, c_desc, off_m, off_n):
    """TMA-store ``val`` (a C box in registers) at [off_m, off_n] through c_smem, once the
    previous store has left it."""
    tma.store_wait(0)
    c_smem.store(val)
    fence_async_shared()
    _cta_barrier()
    _tma_store(c_desc, [off_m, off_n], c_smem)


@gluon.jit
def _consume(acc, used, use_acc, a_ring, b_ring, bars, STAGES: gl.constexpr,
             B_KMAJOR: gl.constexpr):  # fmt: skip
    """Wait for step ``used``'s stage, retire the previous wgmma (so its stage may be refilled)
    and issue this step's, asynchronously."""
    mbarrier.wait(bars.index(used % STAGES), (used // STAGES) & 1)
    return _mma_step(acc, used, use_acc, a_ring, b_ring, STAGES, B_KMAJOR)


@gluon.jit
def _mma_step(acc, used, use_acc, a_ring, b_ring, STAGES: gl.constexpr, B_KMAJOR: gl.constexpr):
    """Issue step ``used``'s wgmma (its stage has landed: the caller waited on its barrier)
    after retiring the previous one, whose stage the producer may then refill."""
    slot = used % STAGES
    acc = warpgroup_mma_wait(0, deps=[acc])
    b_s = b_ring.index(slot)
    if B_KMAJOR:
        b_s = b_s.permute((1, 0))
    acc = warpgroup_mma(a_ring.index(slot), b_s, acc, use_acc=use_acc, is_async=True)
    return acc, used + 1


@gluon.jit
def _lora_mma(acc, used, rank, ad, row_ad, multi, a_ring, b_ring, STAGES: gl.constexpr,
              B_KMAJOR: gl.constexpr, RANK_K: gl.constexpr, S_REGS: gl.constexpr,
              s_layout: gl.constexpr):  # fmt: skip
    """A LoRA step's wgmma (as _mma_step) over the first 16, 32 or 64 ranks (the least that
    holds r_a; Gluon's shared-memory views need power-of-two shapes), with RANK_K: rank
    columns of S and rank rows of V_a past them are never read, so V's padding needs no
    masking pass for ranks 16, 32 and 64 (_mask_lora_stage), and a rank-16 adapter costs a
    quarter of the 64-rank MMA. Without RANK_K: all 64 ranks, V's padding zeroed by
    _mask_lora_stage (the kernel before 2026-11-29, session 12).
    S_REGS (needs RANK_K; TUNE gpu gm_s_regs, on since session 14: 1.0-1.4 % faster layer
    steps in an interleaved A/B at N = 64): in a tile holding several adapters, S goes to the
    wgmma from registers, its rows of other adapters zeroed there (row_ad in s_layout's row
    slice), instead of _mask_lora_stage's shared-memory pass (store, fence, CTA barrier)."""
    if RANK_K:
        slot = used % STAGES
        prev = warpgroup_mma_wait(0, deps=[acc])
        a_s = a_ring.index(slot)
        b_s = b_ring.index(slot)
        if S_REGS:
            if multi:
                nxt = _mma_rank_cut(a_s, b_s, prev, rank, ad, row_ad, True, B_KMAJOR, s_layout)
            else:
                nxt = _mma_rank_cut(a_s, b_s, prev, rank, ad, row_ad, False, B_KMAJOR, s_layout)
        else:
            nxt = _mma_rank_cut(a_s, b_s, prev, rank, ad, row_ad, False, B_KMAJOR, s_layout)
        return nxt, used + 1
    else:
        return _mma_step(acc, used, True, a_ring, b_ring, STAGES, B_KMAJOR)


@gluon.jit
def _mma_rank_cut(a_s, b_s, acc, rank, ad, row_ad, MASK_ROWS: gl.constexpr,
                  B_KMAJOR: gl.constexpr, s_layout: gl.constexpr):  # fmt: skip
    """_mma_ranks at the least width of 16, 32, 64 that holds ``rank`` (a static slice each,
    so each width is its own branch)."""
    if rank <= 16:
        out = _mma_ranks(a_s, b_s, acc, ad, row_ad, 16, MASK_ROWS, B_KMAJOR, s_layout)
    elif rank <= 32:
        out = _mma_ranks(a_s, b_s, acc, ad, row_ad, 32, MASK_ROWS, B_KMAJOR, s_layout)
    else:
        out = _mma_ranks(a_s, b_s, acc, ad, row_ad, 64, MASK_ROWS, B_KMAJOR, s_layout)
    return out


@gluon.jit
def _mma_ranks(a_s, b_s, acc, ad, row_ad, KR: gl.constexpr, MASK_ROWS: gl.constexpr,
               B_KMAJOR: gl.constexpr, s_layout: gl.constexpr):  # fmt: skip
    """acc += S[:, :KR] V[:KR, :] (asynchronous): the stage's S box [BM, 64] and V box ([BN, 64]
    rank-contiguous with B_KMAJOR, else [64, BN]) cut to their first KR ranks. MASK_ROWS: S
    from registers with the rows of adapters other than ``ad`` zeroed."""
    a_k = a_s.slice(0, KR, dim=1)
    if MASK_ROWS:
        s = a_k.load(s_layout)
        a_k = gl.where((row_ad == ad)[:, None], s, gl.zeros_like(s))
    if B_KMAJOR:
        b_k = b_s.slice(0, KR, dim=1).permute((1, 0))
    else:
        b_k = b_s.slice(0, KR, dim=0)
    return warpgroup_mma(a_k, b_k, acc, use_acc=True, is_async=True)


@gluon.jit
def _produce(p_tile, p_k, p_off_m, p_pid_n, p_first, p_nlora, issued, num_tiles, grid, tiles_m,
             tiles_n, k_steps, a_desc, b_desc, s_desc, v_desc, TILE_PLAN, V_ROWS_PER_AD, a_ring,
             b_ring, bars, BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
             GROUP_M: gl.constexpr, B_KMAJOR: gl.constexpr, LORA: gl.constexpr):  # fmt: skip
    """Issue the loads of the producer's next step and advance its state to the step after.
    The tile's LoRA step count is compared only once its base steps are issued, so the table
    loads of a new tile stay in flight meanwhile."""
    STAGES: gl.constexpr = a_ring.type.shape[0]
    slot = issued % STAGES
    _issue_step(p_k, k_steps, p_off_m, p_pid_n * BN, p_first, a_desc, b_desc, s_desc, v_desc,
                V_ROWS_PER_AD, a_ring.index(slot), b_ring.index(slot), bars.index(slot), BK,
                B_KMAJOR, LORA)  # fmt: skip
    p_k += 1
    if p_k >= k_steps:
        if p_k == k_steps + p_nlora:
            p_tile += grid
            p_k = p_k * 0
            p_off_m, p_pid_n, p_first, p_nlora = _tile_plan(p_tile, tiles_m, tiles_n, TILE_PLAN,
                                                            BM, GROUP_M, LORA)  # fmt: skip
    return p_tile, p_k, p_off_m, p_pid_n, p_first, p_nlora, issued + 1
