"""The base GEMM in Triton with the multi-LoRA expand folded in ("gemm" path; notation as in
multi_lora_triton).

One launch computes, for every row m (token) and column n::

    C[m, n] = sum_k A[m, k] B[k, n]  +  sum_r S[m, r] V_a[r, n]        a = adapter owning row m

forward : A = x  [T, d_in], B = Wᵀ (W [d_out, d_in] read k-major), S = s_i x A_iᵀ (the
          scale already applied by the shrink), V_a = B_aᵀ                       -> C = y
backward: A = dY [T, d_out], B = W [d_out, d_in],   S = dS = s_i dY B_i, V_a = A_a  -> C = dX
S is in the activations' dtype (TUNE["narrow_s"], the default) or fp32.
So the LoRA delta never makes a round trip through memory: no delta store, no C re-read by a
cuBLAS epilogue. The LoRA term costs one [BLOCK_M, BLOCK_R] x [BLOCK_R, BLOCK_N] dot per
adapter whose rows the output tile holds (one or two for segments longer than a tile), after
the K loop: r / K more tensor work (64 / 4096 = 1.6 %) plus S and V tile loads.

Every operand goes through a TMA tensor descriptor (Hopper): the K loop's loads are bulk async
copies that the software pipeline keeps ``num_stages`` deep, and a partial row / column / K tile
is zero-filled on load and clipped on store, so the K loop needs no masks. S is [T, BLOCK_R];
V is the adapters' weight viewed 2-D, ``V_ROWS_PER_AD`` rows per adapter: the forward's
B [N·d_out, r_max] (box [BLOCK_N, BLOCK_R], transposed in smem), the backward's A
[N·r_max, d_in] (box [BLOCK_R, BLOCK_N]). A box may run into the next adapter's rows (past
d_out, or past r_max when BLOCK_R > r_max); those rows land in clipped output columns or in
rank rows the mask zeroes.

Programs walk output tiles ``tile = pid, pid + GRID, ...`` (GRID = the number of tiles: one
tile each; fewer: persistent), in GROUP_M-row-tile groups so that neighbouring programs share
B's column blocks in L2. Core builtins only (see multi_lora_triton: the kernel is jit-decorated
lazily per TRITON_INTERPRET mode).
"""

from __future__ import annotations

import triton.language as tl


def _gemm_lora_kernel(
    A_DESC, B_DESC, C_DESC, S_DESC, V_DESC, ROW_AD, RANKS,
    M, N, K, GRID, V_ROWS_PER_AD,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr, B_KMAJOR: tl.constexpr, LORA: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    tiles_m = (M + BLOCK_M - 1) // BLOCK_M
    tiles_n = (N + BLOCK_N - 1) // BLOCK_N
    per_group = GROUP_M * tiles_n
    offs_r = tl.arange(0, BLOCK_R)
    for tile in range(pid, tiles_m * tiles_n, GRID):
        first_m = (tile // per_group) * GROUP_M
        group_m = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (tile % per_group) % group_m
        pid_n = (tile % per_group) // group_m
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
        for k0 in range(0, K, BLOCK_K):
            a = A_DESC.load([off_m, k0])
            if B_KMAJOR:  # W [N, K] as stored; the transpose is a smem view for the MMA
                b = tl.trans(B_DESC.load([off_n, k0]))
            else:
                b = B_DESC.load([k0, off_n])
            if UPCAST:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        if LORA:
            # S and V come through TMA too: tensors of pointers for a [BLOCK_R, BLOCK_N] tile
            # cost two registers per element, and with the 128-register accumulator live the
            # pointer version spilled (ptxas: 255 registers, 900 B of spills, 2026-11-29).
            offs_m = off_m + tl.arange(0, BLOCK_M)
            row_ad = tl.load(ROW_AD + offs_m, mask=offs_m < M, other=-1)
            # rows are grouped by adapter (non-decreasing), so the tile's adapters are a range
            first = tl.load(ROW_AD + off_m)
            last = tl.load(ROW_AD + tl.minimum(off_m + BLOCK_M, M) - 1)
            s_all = S_DESC.load([off_m, 0])  # [BLOCK_M, BLOCK_R]: the tile's rows
            for ad in range(first, last + 1):
                r_in = offs_r < tl.load(RANKS + ad)
                # rows of other adapters and rank columns >= r_a contribute exactly 0, and V's
                # rank padding (any values, even NaN) is never multiplied in
                s = tl.where((row_ad == ad)[:, None] & r_in[None, :], s_all, 0.0)
                if B_KMAJOR:  # V_a = B_aᵀ: rows [a·d_out + off_n, +BLOCK_N) of B viewed 2-D
                    v = tl.trans(V_DESC.load([ad * V_ROWS_PER_AD + off_n, 0]))
                else:  # V_a = A_a: rows [a·r_max, +BLOCK_R) of A viewed 2-D
                    v = V_DESC.load([ad * V_ROWS_PER_AD, off_n])
                v = tl.where(r_in[:, None], v, 0.0)
                s = s.to(v.dtype)  # the MMA's operand type (S may be fp32)
                if UPCAST:
                    s, v = s.to(tl.float32), v.to(tl.float32)
                acc = tl.dot(s, v, acc, input_precision=DOT_PRECISION)
        C_DESC.store([off_m, off_n], acc.to(C_DESC.dtype))
