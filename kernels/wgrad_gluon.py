"""The weight-gradient reduction in Gluon (Hopper, CUDA only): dA and dB of the gemm and stream
paths as one persistent stream of TMA-fed token steps. **Off by default** (TUNE gpu
``wg_gluon``; launch_wgrad_gluon.wgrad_gluon_ok): correct on the H200 (its GPU tests, session
12) but slower than the Triton kernel there, dA by 8-13 µs (docs/kernels_log.md §3k).

Computes what multi_lora_triton's weight-gradient kernel computes with its reduction on and
no expand, for every adapter a and column n::

    OUT_a[r, n] = c · sum_{t in segment a} P[t, r] Q[t, n]      (transposed: OUT_a[n, r])

with P = dS, Q = x, OUT = dA (lora_a's layout [N, r_max, K]) or P = S, Q = dY, OUT = dB
(lora_b's layout [N, d_out, r_max], transposed store); c = s_a with APPLY_SCALE, else 1.

Why: in the k/v layer step the Triton reductions carry about 13 µs (dA) and 5 µs (dB) that do
not scale with T (docs/kernels_log.md §3j): a grid of (token chunk, column block) programs,
each a short chain of dependent loads. The Gluon shrink removed most of that kind of cost
from the dY shrink (13.5 -> 7.1 µs at T = 8192, 4096->1024) by streaming work items through a
deep TMA ring that runs ahead across item boundaries; this kernel does the same here.

Work items: item i is column block ``i % N_CB`` of the non-empty adapter segment ``i // N_CB``
(host table TABLE [n_segments, 3]: adapter, first row, end row, longest segment first; no
token splits, so no atomics). A step loads a P box [64 tokens, 64 ranks] and a Q box [64 tokens, BN columns] and
issues acc[64 ranks, BN] += Pᵀ Q (wgmma, A operand transposed in shared memory). Boxes start
at the segment's first row; on a segment's last step the rows past its end (the next
segment's rows, not zero, and NaN if that adapter diverged) are zeroed in shared memory in
both boxes before the MMA, as the Triton kernel's masked loads drop them. OUT's rows
r_a <= r < min(64, r_ext) are zeroed at the store (not left as 0 x Q sums, which an inf in Q
would make NaN). Segments are walked longest first (MultiLoraLayout.segments_longest_first).

Requires a 16-bit P and Q of one dtype, block_r <= 64, whole rows of OUT up to 64 ranks (the
launcher zero-fills OUT when a segment is empty or the rank extent passes 64), and the TMA
alignment launch._tma_ok checks.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)

from .gemm_lora_gluon import _cta_barrier, _tma_load, table_row, tma_ring

BOX_T = gl.constexpr(64)  # tokens per step (the MMA's K)
BOX_R = gl.constexpr(64)  # ranks per P box (block_r <= 64; the MMA's M)


@gluon.jit
def _produce(p_item, p_s, p_steps, p_row0, p_col, n_row0, n_steps, issued, grid, N_ITEMS, N_CB,
             TABLE, p_desc, q_desc, p_ring, q_ring, bars):  # fmt: skip
    """Issue the producer's next step (step p_s of item p_item, rows p_row0 + 64 p_s, columns
    p_col) into the next ring stage and advance; at an item's last step move to item
    p_item + grid, whose segment (n_row0, n_steps) was loaded one item ahead."""
    STAGES: gl.constexpr = p_ring.type.shape[0]
    BN: gl.constexpr = q_desc.block_type.shape[1]
    slot = issued % STAGES
    bar = bars.index(slot)
    row = p_row0 + p_s * BOX_T
    mbarrier.expect(bar, p_desc.block_type.nbytes + q_desc.block_type.nbytes)
    _tma_load(p_desc, [row, 0], bar, p_ring.index(slot))
    _tma_load(q_desc, [row, p_col], bar, q_ring.index(slot))
    p_s += 1
    if p_s == p_steps:
        p_item += grid
        p_s = p_s * 0
        p_row0, p_steps = n_row0, n_steps
        p_col = (p_item % N_CB) * BN
        _ad, start, end = table_row(TABLE, p_item + grid, N_ITEMS, N_CB)
        n_row0, n_steps = start, gl.cdiv(end - start, BOX_T)
    return p_item, p_s, p_steps, p_row0, p_col, n_row0, n_steps, issued + 1


@gluon.jit
def _zero_rows_past(slot, row0, row_end, num_warps: gl.constexpr):
    """Zero, in shared memory, a [64 tokens, *] box's rows >= row_end (the box starts at row0).
    The caller fences and synchronises before the MMA reads the box."""
    rows: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [num_warps, 1], [1, 0])
    v = slot.load(rows)
    offs = row0 + gl.arange(0, BOX_T, layout=gl.SliceLayout(1, rows))
    slot.store(gl.where((offs < row_end)[:, None], v, gl.zeros_like(v)))


@gluon.jit
def wgrad_gluon_kernel(p_desc, q_desc, OUT, TABLE, RANKS, SCALES, N_ITEMS, N_CB, N_COLS, R_STORE,
                       stride_oa, stride_or, stride_on, APPLY_SCALE: gl.constexpr,
                       STAGES: gl.constexpr, num_warps: gl.constexpr):  # fmt: skip
    """Persistent grid; program p owns items p, p + grid, ... Shapes: P [T, block_r] (box
    [64, 64]), Q [T, N_COLS] (box [64, BN]), OUT strides (adapter, rank, column) in elements;
    rows r < R_STORE of each adapter's OUT are written, columns < N_COLS."""
    BN: gl.constexpr = q_desc.block_type.shape[1]
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BN, 16])
    p_ring, q_ring, bars = tma_ring(p_desc, q_desc, STAGES)
    grid = gl.num_programs(0)

    # producer state (see _produce); the next item's segment is loaded one item ahead
    p_item = gl.program_id(0)
    _ad0, start, end = table_row(TABLE, p_item, N_ITEMS, N_CB)
    p_row0, p_steps = start, gl.cdiv(end - start, BOX_T)
    p_col = (p_item % N_CB) * BN
    _ad1, start, end = table_row(TABLE, p_item + grid, N_ITEMS, N_CB)
    n_row0, n_steps = start, gl.cdiv(end - start, BOX_T)
    p_s = p_item * 0
    issued = p_item * 0
    for _i in gl.static_range(STAGES - 1):  # prologue: STAGES - 1 steps ahead
        if p_item < N_ITEMS:
            p_item, p_s, p_steps, p_row0, p_col, n_row0, n_steps, issued = _produce(
                p_item, p_s, p_steps, p_row0, p_col, n_row0, n_steps, issued, grid, N_ITEMS,
                N_CB, TABLE, p_desc, q_desc, p_ring, q_ring, bars)  # fmt: skip

    acc = warpgroup_mma_init(gl.zeros((BOX_R, BN), gl.float32, acc_layout))
    offs_r = gl.arange(0, BOX_R, layout=gl.SliceLayout(1, acc_layout))
    used = issued * 0
    # the consumer's segment, loaded one item ahead as well (the k loop's bound needs it)
    c_ad, c_row0, c_end = table_row(TABLE, gl.program_id(0), N_ITEMS, N_CB)
    for item in range(gl.program_id(0), N_ITEMS, grid):
        ad, row0, row_end = c_ad, c_row0, c_end
        c_ad, c_row0, c_end = table_row(TABLE, item + grid, N_ITEMS, N_CB)
        rank = gl.load(RANKS + ad)  # (used in the epilogue)
        k_steps = gl.cdiv(row_end - row0, BOX_T)
        for k in range(k_steps):
            slot = used % STAGES
            mbarrier.wait(bars.index(slot), (used // STAGES) & 1)
            acc = warpgroup_mma_wait(0, deps=[acc])  # the previous step's stage is free now
            if row0 + (k + 1) * BOX_T > row_end:  # the segment's last step: drop later rows
                # of both operands, so that a NaN or inf in another adapter's rows (a diverged
                # config) cannot reach this adapter's gradient as 0 x NaN
                _zero_rows_past(p_ring.index(slot), row0 + k * BOX_T, row_end, num_warps)
                _zero_rows_past(q_ring.index(slot), row0 + k * BOX_T, row_end, num_warps)
                fence_async_shared()  # generic-proxy stores before the async-proxy wgmma reads
                _cta_barrier()
            acc = warpgroup_mma(p_ring.index(slot).permute((1, 0)), q_ring.index(slot), acc,
                                use_acc=k > 0, is_async=True)  # fmt: skip
            used += 1
            if p_item < N_ITEMS:  # refill the stage the previous step used
                p_item, p_s, p_steps, p_row0, p_col, n_row0, n_steps, issued = _produce(
                    p_item, p_s, p_steps, p_row0, p_col, n_row0, n_steps, issued, grid,
                    N_ITEMS, N_CB, TABLE, p_desc, q_desc, p_ring, q_ring, bars)  # fmt: skip
        part = warpgroup_mma_wait(0, deps=[acc])
        # rows >= r_a exactly zero, as the Triton kernel's: P's zero columns times an inf or
        # NaN in this adapter's own x / dY rows would make them NaN
        part = gl.where((offs_r < rank)[:, None], part, gl.zeros_like(part))
        if APPLY_SCALE:
            part = part * gl.load(SCALES + ad)
        offs_n = (item % N_CB) * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, acc_layout))
        off = (ad.to(gl.int64) * stride_oa + offs_r.to(gl.int64)[:, None] * stride_or
               + offs_n.to(gl.int64)[None, :] * stride_on)  # fmt: skip
        mask = (offs_r < R_STORE)[:, None] & (offs_n < N_COLS)[None, :]
        gl.store(OUT + off, part.to(OUT.dtype.element_ty), mask=mask)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))
