"""Fewer-launch variants of the multi-LoRA kernels (default path; see multi_lora_triton for notation).

* ``shrink_expand`` (one launch, grid = row tiles): each program owns BLOCK_M rows of one
  segment, computes the whole shrink for them in registers, stores it (needed by backward), and
  then streams the expand over all output columns::

      S[t, :]  = c1_i * sum_k X[t, k] * W_i[r, k]        (rank columns >= r_i set to exactly 0)
      Y[t, n] (+)= c2_i * sum_r S[t, r] * V_i[n, r]

  forward : X = x,  W_i = A_i,            S = S,  V_i = B_i,   c1 = 1,   c2 = s_i, Y = y delta
  backward: X = dY, W_i = B_iᵀ (strides), S = dS, V_i = A_iᵀ,  c1 = s_i, c2 = 1,   Y = dX delta
  This replaces shrink + expand (2 launches -> 1, no split-K atomics, S never re-read from memory
  by the expand). With N_OUT = 0 it is a plain shrink (backward when x needs no gradient).
  Grid axis 1 splits the output columns into chunks of N_PER_SPLIT: each program of a row tile
  recomputes the (cheap, L2-resident) shrink and streams only its chunk of the expand, so a
  small T still gives enough programs to fill the SMs; only chunk 0 stores S.
* ``wgrad_pair`` (one launch): the dA and dB reductions of ``wgrad`` side by side; program
  columns [0, NB1) do pair 1 (dA_i = dS_iᵀ X_i), columns [NB1, NB1 + NB2) do pair 2
  (dB_i = s_i · dY_iᵀ S_i, written through swapped strides).

Same conventions as multi_lora_triton: lazily jit-decorated (get_kernels), core builtins only,
``UPCAST`` under the interpreter.
"""

from __future__ import annotations

import triton.language as tl

from .multi_lora_triton import _table_row


def _shrink_expand_kernel(
    X, W, V, S, Y, Y_DESC, TILES, RANKS, SCALES,
    K, N_OUT, N_PER_SPLIT, R_COLS,
    stride_xm, stride_xk, stride_wa, stride_wr, stride_wk,
    stride_va, stride_vn, stride_vr, stride_sm, stride_sr, stride_ym, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    SCALE_S: tl.constexpr, SCALE_Y: tl.constexpr, ADD: tl.constexpr,
    W_ROWS: tl.constexpr, V_ROWS: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    X_TMA: tl.constexpr, Y_TMA: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    pid_n = tl.program_id(1)
    adapter, row0, row_end, rank = _table_row(TILES, RANKS, pid)
    scale = tl.load(SCALES + adapter)
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    m_mask = offs_m < row_end
    r_mask = offs_r < rank
    # W is loaded up to its rank extent R_COLS, not r_i: a runtime r_i mask along a contiguous
    # rank axis turns 16-byte async copies into 2-byte loads (see multi_lora_triton's
    # _shrink_kernel); S's columns >= r_i are zeroed after the shrink. V keeps the r_i mask:
    # its padding must read as 0 (0 * nan = nan), and zeroing it in registers instead made
    # the rank-128 fp32 tile run out of shared memory at launch (H200, 2026-11-29)
    r_cols = offs_r < R_COLS
    rows64 = offs_m.to(tl.int64)
    w_base = W + adapter.to(tl.int64) * stride_wa
    acc = tl.full((BLOCK_M, BLOCK_R), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        k_mask = kk < K
        if X_TMA:  # a whole BLOCK_M box: rows past row_end (the next segment's) are never stored
            x = X.load([row0, k0])
        else:
            x = tl.load(X + rows64[:, None] * stride_xm + kk[None, :] * stride_xk,
                        mask=m_mask[:, None] & k_mask[None, :], other=0.0)  # fmt: skip
        if W_ROWS:  # W_i stored k-contiguous: load [R, BK] as stored, transpose for the dot
            w = tl.trans(tl.load(w_base + offs_r[:, None] * stride_wr + kk[None, :] * stride_wk,
                                 mask=r_cols[:, None] & k_mask[None, :], other=0.0))  # fmt: skip
        else:
            w = tl.load(w_base + offs_r[None, :] * stride_wr + kk[:, None] * stride_wk,
                        mask=r_cols[None, :] & k_mask[:, None], other=0.0)  # fmt: skip
        w = w.to(x.dtype)
        if UPCAST:
            x, w = x.to(tl.float32), w.to(tl.float32)
        acc += tl.dot(x, w, input_precision=DOT_PRECISION)
    if SCALE_S:
        acc = acc * scale
    acc = tl.where(r_mask[None, :], acc, 0.0)  # exact zeros in padded ranks (even if x has inf)
    s_dtype = S.dtype.element_ty
    s_val = acc.to(s_dtype)
    s_end = tl.where(pid_n == 0, row_end, row0)  # only column chunk 0 stores S
    tl.store(S + rows64[:, None] * stride_sm + offs_r[None, :] * stride_sr, s_val,
             mask=(offs_m < s_end)[:, None] & (offs_r[None, :] < BLOCK_R))  # fmt: skip
    y_dtype = Y.dtype.element_ty
    s_op = s_val.to(y_dtype)  # the expand consumes exactly what backward will re-read
    if UPCAST:
        s_op = s_op.to(tl.float32)
    v_base = V + adapter.to(tl.int64) * stride_va
    y_ptrs = Y + rows64[:, None] * stride_ym
    # a TMA box may only be stored where all BLOCK_M rows are this segment's
    box = (row_end - row0 == BLOCK_M) & Y_TMA
    n_lo = pid_n * N_PER_SPLIT
    n_hi = tl.minimum(n_lo + N_PER_SPLIT, N_OUT)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        nn = n0 + offs_n
        n_mask = nn < n_hi
        if V_ROWS:  # V_i stored r-contiguous: load [BN, R] as stored, transpose for the dot
            v = tl.trans(tl.load(v_base + nn[:, None] * stride_vn + offs_r[None, :] * stride_vr,
                                 mask=n_mask[:, None] & r_mask[None, :], other=0.0))  # fmt: skip
        else:
            v = tl.load(v_base + offs_r[:, None] * stride_vr + nn[None, :] * stride_vn,
                        mask=r_mask[:, None] & n_mask[None, :], other=0.0)  # fmt: skip
        v = v.to(y_dtype)
        if UPCAST:
            v = v.to(tl.float32)
        out = tl.dot(s_op, v, input_precision=DOT_PRECISION)
        if SCALE_Y:
            out = out * scale
        if box:  # N_PER_SPLIT is whole blocks, so a box never crosses n_hi; past N_OUT TMA clips
            if Y_TMA:  # (Y_DESC is None otherwise: this keeps it out of the compiled code)
                if ADD:
                    out += Y_DESC.load([row0, n0]).to(tl.float32)
                Y_DESC.store([row0, n0], out.to(y_dtype))
        else:
            y_mask = m_mask[:, None] & n_mask[None, :]
            if ADD:
                out += tl.load(y_ptrs + nn[None, :] * stride_yn, mask=y_mask, other=0.0).to(tl.float32)
            tl.store(y_ptrs + nn[None, :] * stride_yn, out.to(y_dtype), mask=y_mask)


def _wgrad_pair_kernel(
    P1, Q1, O1, P2, Q2, O2, CHUNKS, RANKS, SCALES,
    N1, N2, NB1, R_OUT,
    s_p1m, s_p1r, s_q1m, s_q1n, s_o1a, s_o1r, s_o1n,
    s_p2m, s_p2r, s_q2m, s_q2n, s_o2a, s_o2r, s_o2n,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    ATOMIC: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    pid_c = tl.program_id(0)
    pid_n = tl.program_id(1)
    adapter, row0, row_end, rank = _table_row(CHUNKS, RANKS, pid_c)
    first = pid_n < NB1
    c = tl.where(first, 1.0, tl.load(SCALES + adapter))
    # both branches must bind the same types: see WGRAD_PAIR_NO_SPECIALIZE
    if first:  # pair 1: dA_i = dS_iᵀ X_i
        P, Q, O, n_cols, blk = P1, Q1, O1, N1, pid_n
        s_pm, s_pr, s_qm, s_qn, s_oa, s_or, s_on = s_p1m, s_p1r, s_q1m, s_q1n, s_o1a, s_o1r, s_o1n
    else:  # pair 2: dB_i = s_i * dY_iᵀ S_i
        P, Q, O, n_cols, blk = P2, Q2, O2, N2, pid_n - NB1
        s_pm, s_pr, s_qm, s_qn, s_oa, s_or, s_on = s_p2m, s_p2r, s_q2m, s_q2n, s_o2a, s_o2r, s_o2n
    offs_t = tl.arange(0, BLOCK_T)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    r_mask = offs_r < rank
    n_mask = offs_n < n_cols
    acc = tl.full((BLOCK_R, BLOCK_N), 0.0, tl.float32)
    for t0 in range(row0, row_end, BLOCK_T):
        tt = t0 + offs_t
        t_mask = tt < row_end
        tt64 = tt.to(tl.int64)
        # all BLOCK_R columns of P ([T, BLOCK_R]): no r_i mask on its contiguous axis (see
        # multi_lora_triton._wgrad_kernel); rank rows >= r_i of acc are zeroed below
        p = tl.load(P + tt64[:, None] * s_pm + offs_r[None, :] * s_pr,
                    mask=t_mask[:, None], other=0.0)  # fmt: skip
        q = tl.load(Q + tt64[:, None] * s_qm + offs_n[None, :] * s_qn,
                    mask=t_mask[:, None] & n_mask[None, :], other=0.0)  # fmt: skip
        p = p.to(q.dtype)
        if UPCAST:
            p, q = p.to(tl.float32), q.to(tl.float32)
        acc += tl.dot(tl.trans(p), q, input_precision=DOT_PRECISION)
    acc = tl.where(r_mask[:, None], acc * c, 0.0)  # padded rank rows exactly 0
    o_ptrs = O + adapter.to(tl.int64) * s_oa + offs_r[:, None] * s_or + offs_n[None, :] * s_on
    o_mask = (offs_r[:, None] < R_OUT) & n_mask[None, :]
    if ATOMIC:
        tl.atomic_add(o_ptrs, acc, mask=o_mask, sem="relaxed")
    else:
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=o_mask)


# integer arguments of _wgrad_pair_kernel that must stay runtime i32: the output strides differ
# between the pairs (dA [.., r, n] row-major vs dB written transposed, one of them == 1), and
# Triton would otherwise specialise a 1 to a constexpr, making the if/else branch types differ.
# Input strides stay specialised (stride 1 -> vectorised loads): on 2026-11-28 despecialising
# ALL int args made this kernel 6x slower than two wgrad launches (1074 us vs 166 us, H200).
WGRAD_PAIR_NO_SPECIALIZE = [
    "N1", "N2", "NB1", "R_OUT", "s_o1a", "s_o1r", "s_o1n", "s_o2a", "s_o2r", "s_o2n",
]  # fmt: skip
