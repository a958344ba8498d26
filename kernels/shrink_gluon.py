"""The split-K shrink in Gluon: OUT = c_i x_i W_iᵀ for every adapter's rows, as one persistent
stream of TMA-fed steps (Hopper, CUDA only; launch.shrink_gluon_ok says when it runs).

Computes what multi_lora_triton._shrink_kernel computes, for every row m of adapter a::

    OUT[m, r] = c_a * sum_k X[m, k] W_a[r, k]   (r < r_a; exact zeros for r_a <= r < width)

W_a is A_a (forward: lora_a [N, r_max, K], k-contiguous) or B_aᵀ (backward: lora_b [N, K, r_max],
rank-contiguous). Why a second kernel: the Triton shrink moves x at 1.3-2.0 TB/s inside the
layer step (ncu, 4096->1024, T = 4096 / 8192: 25 / 33 µs against 8 / 16 µs of bytes), and its
time grows by x's bytes at the copy rate, so most of it is a fixed cost per program: table
loads before the first load, a pipeline to fill, the split-K epilogue. Here the TMA loads of
each program run STAGES - 1 steps ahead across tile boundaries, so the next tile's loads are in
flight during this tile's last steps and its epilogue; the next tile's table row is loaded one
tile ahead.

Work split: whole row tiles per program (the segment-aligned tile table the Triton shrink uses:
(adapter, first row, end row), at most BM rows), or, while the tiles are few enough to leave
most SMs idle (launch_shrink_gluon.gluon_units), stream-K: the tiles' K steps form one
sequence of units cut into equal ranges, one per program (see the kernel's docstring).
Sharing a tile costs each program several µs (measured, cause not profiled), so stream-K pays
only below about a third of the SMs in tiles (T = 2048, or few adapters at T = 4096).
A step loads an x box [BM, 64] and a W_a box of 64 ranks x 64 k. The x box may run into
the next segment's rows: those rows are computed and discarded at the store, since rows are
independent in X Wᵀ. W_a's rank padding (any values, even NaN, by the contract) and a box
running into the next adapter's ranks reach only OUT columns >= r_a, which are zeroed: no
shared-memory masking pass. A tile shared by several programs gets their fp32 partial sums in
a scratch buffer (plain stores, no zeroed accumulator to keep), and the last to take the
tile's ticket adds them up and writes OUT, then zeroes the ticket again
(launch.zeroed_workspace's tickets stay all zeros between launches).

Requires 64 >= block_r, a 16-bit dtype, K a multiple of 64 in the backward (a W box past K
would read the next adapter's rows, whose padding may be NaN, against x's zero fill) and the
TMA alignment launch._tma_ok checks. Gluon has no CPU interpreter: CI compiles this kernel for
sm_90 (tests/kernels/test_generated_code.py) and the GPU tests run it.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)

from .gemm_lora_gluon import _cta_barrier, _tma_load, table_row, tma_ring

BOX_K = gl.constexpr(64)  # K per step, and the rank box (block_r <= 64)


@gluon.jit
def _issue(step, row0, ad, x_desc, w_desc, W_ROWS_PER_AD, x_slot, w_slot, bar,
           W_KMAJOR: gl.constexpr):  # fmt: skip
    """TMA loads of K step ``step`` (absolute) of a row tile into one ring stage."""
    mbarrier.expect(bar, x_desc.block_type.nbytes + w_desc.block_type.nbytes)
    _tma_load(x_desc, [row0, step * BOX_K], bar, x_slot)
    if W_KMAJOR:  # W_a = A_a: rows [a·r_max, +64) of lora_a viewed [N·r_max, K]
        _tma_load(w_desc, [ad * W_ROWS_PER_AD, step * BOX_K], bar, w_slot)
    else:  # W_aᵀ = B_a: rows [a·K + k, +64) of lora_b viewed [N·K, r_max]
        _tma_load(w_desc, [ad * W_ROWS_PER_AD + step * BOX_K, 0], bar, w_slot)


@gluon.jit
def shrink_gluon_kernel(x_desc, w_desc, OUT, PART, TICKETS, TILES, RANKS, SCALES, N_TILES,
                        K_STEPS, UNITS, W_ROWS_PER_AD, WIDTH, stride_om, part_stride,
                        W_KMAJOR: gl.constexpr, APPLY_SCALE: gl.constexpr,
                        SPLIT_K: gl.constexpr, STAGES: gl.constexpr,
                        PART_ATOMIC: gl.constexpr, num_warps: gl.constexpr):  # fmt: skip
    """Stream-K grid: the work is the N_TILES · K_STEPS units (row tile t, K step k) in order
    u = t · K_STEPS + k, and program p takes units [p · UNITS, (p + 1) · UNITS), so every
    program streams the same number of steps whatever the tile count (a tile per program left
    SMs idle or ran a second wave). A program's range covers the end of one tile, whole tiles
    and the start of another; each part of a tile it covers is a *piece*. A tile covered by one
    program is stored directly; otherwise each program stores its piece's fp32 partial sum in
    PART slot (p - first program of the tile), and the last to take the tile's ticket adds the
    slots up in slot order (deterministic) and writes OUT. SPLIT_K=False (UNITS a multiple of
    K_STEPS: whole tiles only) compiles the partial path out.
    Shapes: X [T, K] (box [BM, 64]), W = lora_a [N·r_max, K] (box [64, 64], W_KMAJOR) or
    lora_b [N·K, r_max] (box [64, 64]), OUT [T, WIDTH] (row stride stride_om), PART
    [slots, T, WIDTH] fp32 scratch (any contents; slots >= the most programs on one tile),
    TILES [N_TILES, 3] int32, TICKETS [N_TILES] int32 (zeros).
    PART_ATOMIC (TUNE gpu sh_gl_part "atomic"; off: correct on the GPU, 8 tests, and within
    0.3 µs of the slots under the shipped gate, docs/kernels_log.md §3m): the pieces add their partial sums into PART = the zeroed fp32 workspace
    (launch.zeroed_workspace, [T · WIDTH], rows at OUT's stride) with relaxed reductions
    instead of storing them to slots, and the last piece reads the one sum and re-zeroes it:
    the protocol of the Triton split-K shrink, whose 3-8-way splits ran at 13-15 µs where
    this kernel's slots took 19-44 (x of 4096², T = 4096, lora_tiles.csv)."""
    BM: gl.constexpr = x_desc.block_type.shape[0]
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BOX_K, 16])
    x_ring, w_ring, bars = tma_ring(x_desc, w_desc, STAGES)
    pid = gl.program_id(0)
    u0 = pid * UNITS
    u1 = gl.minimum(u0 + UNITS, N_TILES * K_STEPS)

    # producer: the next load is unit pu (tile p_tile, whose row is p_ad / p_row0); the row of
    # the tile after it is loaded one tile ahead (n_*) so that a switch never waits on a load
    pu = u0
    p_tile = u0 // K_STEPS
    p_ad, p_row0, _end = table_row(TILES, p_tile, N_TILES, 1)
    n_ad, n_row0, _end = table_row(TILES, p_tile + 1, N_TILES, 1)
    issued = pid * 0
    for _i in gl.static_range(STAGES - 1):  # prologue: STAGES - 1 steps ahead
        if pu < u1:
            pu, p_tile, p_ad, p_row0, n_ad, n_row0, issued = _produce(
                pu, p_tile, p_ad, p_row0, n_ad, n_row0, issued, N_TILES, K_STEPS, TILES, x_desc,
                w_desc, W_ROWS_PER_AD, x_ring, w_ring, bars, W_KMAJOR)  # fmt: skip

    acc = warpgroup_mma_init(gl.zeros((BM, BOX_K), gl.float32, acc_layout))
    offs_r = gl.arange(0, BOX_K, layout=gl.SliceLayout(0, acc_layout))
    used = issued * 0
    for tile in range(u0 // K_STEPS, (u1 + K_STEPS - 1) // K_STEPS):
        ad, row0, row_end = table_row(TILES, tile, N_TILES, 1)
        rank = gl.load(RANKS + ad)  # (used in the epilogue: latency hidden by the steps)
        k_lo = gl.maximum(u0 - tile * K_STEPS, 0)
        k_hi = gl.minimum(u1 - tile * K_STEPS, K_STEPS)
        for k in range(k_hi - k_lo):
            slot = used % STAGES
            mbarrier.wait(bars.index(slot), (used // STAGES) & 1)
            acc = warpgroup_mma_wait(0, deps=[acc])  # the previous step's stage is free now
            w_s = w_ring.index(slot)
            if W_KMAJOR:
                w_s = w_s.permute((1, 0))
            acc = warpgroup_mma(x_ring.index(slot), w_s, acc, use_acc=k > 0, is_async=True)
            used += 1
            if pu < u1:  # refill the stage the previous step used
                pu, p_tile, p_ad, p_row0, n_ad, n_row0, issued = _produce(
                    pu, p_tile, p_ad, p_row0, n_ad, n_row0, issued, N_TILES, K_STEPS, TILES,
                    x_desc, w_desc, W_ROWS_PER_AD, x_ring, w_ring, bars, W_KMAJOR)  # fmt: skip
        part = warpgroup_mma_wait(0, deps=[acc])
        # epilogue (the next piece's loads are already in flight): rows past the tile and
        # columns >= r_a (W's padding, the next adapter's ranks) are dropped or zeroed
        part = gl.where((offs_r < rank)[None, :], part, gl.zeros_like(part))
        if APPLY_SCALE:
            part = part * gl.load(SCALES + ad)
        offs_m = row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, acc_layout))
        off = offs_m.to(gl.int64)[:, None] * stride_om + offs_r[None, :]
        mask = (offs_m < row_end)[:, None] & (offs_r < WIDTH)[None, :]
        if SPLIT_K:
            first = (tile * K_STEPS) // UNITS  # the programs covering this tile
            n_parts = ((tile + 1) * K_STEPS - 1) // UNITS - first + 1
            if n_parts == 1:
                gl.store(OUT + off, part.to(OUT.dtype.element_ty), mask=mask)
            else:  # this piece's partial sum out; the tile's last piece adds them all
                if PART_ATOMIC:  # into the zeroed fp32 workspace, fire-and-forget reductions
                    gl.atomic_add(PART + off, part, mask=mask, sem="relaxed")
                else:  # into this piece's slot
                    gl.store(PART + (pid - first).to(gl.int64) * part_stride + off, part,
                             mask=mask)  # fmt: skip
                # every thread's stores before the ticket (as multi_lora_triton._last_to_arrive)
                one: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])  # 1 per thread
                gl.inline_asm_elementwise("fence.acq_rel.gpu;\n mov.u32 $0, $1;", "=r,r",
                                          [gl.full([1], 0, gl.int32, layout=one)], dtype=gl.int32,
                                          is_pure=False, pack=1)  # fmt: skip
                _cta_barrier()
                ticket = gl.atomic_add(TICKETS + tile, 1, sem="acq_rel")
                if ticket == n_parts - 1:  # the last piece of this tile: sum, write, re-zero
                    if PART_ATOMIC:  # (each thread re-zeroes exactly the elements it read)
                        total = gl.load(PART + off, mask=mask, other=0.0, cache_modifier=".cg")
                        gl.store(PART + off, gl.zeros_like(total), mask=mask)
                    else:
                        total = gl.zeros_like(part)
                        for s in range(n_parts):
                            total += gl.load(PART + s.to(gl.int64) * part_stride + off,
                                             mask=mask, other=0.0, cache_modifier=".cg")  # fmt: skip
                    gl.store(TICKETS + tile, 0)
                    gl.store(OUT + off, total.to(OUT.dtype.element_ty), mask=mask)
        else:
            gl.store(OUT + off, part.to(OUT.dtype.element_ty), mask=mask)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))


@gluon.jit
def _produce(pu, p_tile, p_ad, p_row0, n_ad, n_row0, issued, N_TILES, K_STEPS, TILES, x_desc,
             w_desc, W_ROWS_PER_AD, x_ring, w_ring, bars, W_KMAJOR: gl.constexpr):  # fmt: skip
    """Issue the producer's next unit (tile p_tile, step pu - p_tile · K_STEPS) into the next
    ring stage and advance; past a tile's last step move to the next tile, whose row (n_ad,
    n_row0) was loaded one tile ahead, and load the row of the tile after it."""
    STAGES: gl.constexpr = x_ring.type.shape[0]
    slot = issued % STAGES
    _issue(pu - p_tile * K_STEPS, p_row0, p_ad, x_desc, w_desc, W_ROWS_PER_AD,
           x_ring.index(slot), w_ring.index(slot), bars.index(slot), W_KMAJOR)  # fmt: skip
    pu += 1
    if pu == (p_tile + 1) * K_STEPS:
        p_tile += 1
        p_ad, p_row0 = n_ad, n_row0
        n_ad, n_row0, _end = table_row(TILES, p_tile + 1, N_TILES, 1)
    return pu, p_tile, p_ad, p_row0, n_ad, n_row0, issued + 1
