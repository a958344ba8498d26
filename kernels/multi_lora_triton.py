"""Triton kernels of the fused multi-LoRA linear (three grouped kernels, each one launch for all N).

All three read a host-built table (see :mod:`kernels.layout`) instead of looping over adapters,
so the launch count per layer is constant in N. Notation: segment i = rows [o_i, e_i) of the
token axis, rank r_i, scale s_i, rank axis padded to BLOCK_R (mask ``r < r_i``).

* ``shrink``  OUT[t, r] (+)= c_i * sum_k X[t, k] * W_i[r, k]          (grid: tiles x split_k)
  forward  S  = x  @ A_iᵀ      (W_i = lora_a[i],        c_i = 1)
  backward dS = dY @ B_i · s_i (W_i = lora_b[i]ᵀ by strides, c_i = s_i)
  Split-K over the long K axis (d_in or d_out) keeps the chip busy when T/BLOCK_M is small;
  the partial sums then meet through fp32 atomics in a workspace ACC (T x BLOCK_R fp32, all
  zeros between launches), and the last program of each row tile to finish writes OUT (in
  OUT's dtype) and re-zeroes its part of ACC: no memset and no cast launch around it.
* ``expand``  Y[t, n] (+)= c_i * sum_r S[t, r] * V_i[n, r]     (grid: tiles x column chunks)
  forward  y  (+)= s_i · S @ B_iᵀ   (V_i = lora_b[i],        c_i = s_i)
  backward dX (+)= dS @ A_i         (V_i = lora_a[i]ᵀ by strides, c_i = 1)
  ``ADD`` loads Y and adds (fused expand-and-add); otherwise it stores the LoRA delta, which the
  caller hands to cuBLAS as the ``C`` of ``addmm`` (the base GEMM then adds it in its epilogue).
  Each program loads its S tile once and loops over N_PER_PROG columns in BLOCK_N steps, so the
  table lookups and the S load are paid once per chunk and the V loads are pipelined.
* ``wgrad``   OUT_i[r, n] (+)= c_i * sum_{t in chunk} P[t, r] * Q[t, n]  (grid: chunks x n-blocks)
  With ``EXPAND`` it also writes Y[t, n] (+)= sum_r P[t, r] * V_i[r, n] for its rows and columns,
  reusing the P tiles it loads anyway, V_i's column block loaded once per program: the "stream"
  path's backward writes the dX delta (P = dS, V_i = A_i) alongside dA. With ``REDUCE`` off it
  is only that row-streaming expand (the stream path's forward: P = s_i·S, V_i = B_iᵀ).
  dA_i = dS_iᵀ X_i            (P = dS, Q = x,  c_i = 1,   OUT = grad lora_a [N, r_max, d_in])
  dB_i = s_i · dY_iᵀ S_i      (P = S,  Q = dY, c_i = s_i, OUT = grad lora_b [N, d_out, r_max]
                               written through swapped strides)
  Segments longer than one chunk are split over tokens and meet through fp32 atomics; with one
  chunk per adapter (or under torch deterministic mode) it is a plain store: deterministic.

``UPCAST`` (set under the interpreter only) feeds tl.dot fp32 operands: Triton 3.9's
interpreter returns garbage for a bf16 x bf16 tl.dot (seen 2026-11-28), fp32 is exact there.
Only core builtins are used (tl.full, not tl.zeros): functions of triton.language.standard are
themselves @triton.jit-decorated when triton is imported, so if that import happened without
TRITON_INTERPRET they cannot be called from an interpreted kernel.

The kernels are plain functions decorated lazily by :func:`get_kernels`, because
``triton.jit`` decides at decoration time whether to build an interpreter function
(TRITON_INTERPRET=1, used on CPU tensors) or a compiled one; the cache is keyed on that flag.
"""

from __future__ import annotations

import os
from types import FunctionType, SimpleNamespace

import triton
import triton.language as tl


def _shrink_kernel(
    X, W, OUT, ACC, TICKETS, TILES, RANKS, SCALES,
    K, K_PER_SPLIT, R_COLS,
    stride_xm, stride_xk,
    stride_wa, stride_wr, stride_wk,
    stride_om, stride_or,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ATOMIC: tl.constexpr, APPLY_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, GPU_FENCE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    adapter, row0, row_end, rank = _table_row(TILES, RANKS, pid_m)
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < row_end
    r_mask = offs_r < rank
    x_ptrs = X + offs_m.to(tl.int64)[:, None] * stride_xm
    w_ptrs = W + adapter.to(tl.int64) * stride_wa + offs_r[None, :] * stride_wr
    # W's columns are masked by whole groups of 8 ranks (_rank_cols), not by r_i: a runtime
    # r_i mask along a contiguous rank axis (the backward's B_i) defeated the 16-byte async
    # copies (the tile came in as synchronous 2-byte loads, sm_90 PTX) and cost the backward
    # shrink 10-20 us at 4096² (H200, 2026-11-29). Columns >= r_i are zeroed below.
    w_cols = offs_r < _rank_cols(rank, R_COLS)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    acc = tl.full((BLOCK_M, BLOCK_R), 0.0, tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + offs_k
        k_mask = kk < k_hi
        x = tl.load(x_ptrs + kk[None, :] * stride_xk, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs + kk[:, None] * stride_wk, mask=w_cols[None, :] & k_mask[:, None], other=0.0)
        w = w.to(x.dtype)
        if UPCAST:
            x, w = x.to(tl.float32), w.to(tl.float32)
        acc += tl.dot(x, w, input_precision=DOT_PRECISION)
    # columns are independent in x·W, so W's rank padding (any values, even NaN) reaches only
    # columns >= r_i of acc: OUT holds exact zeros there
    acc = tl.where(r_mask[None, :], acc, 0.0)
    if APPLY_SCALE:
        acc = acc * tl.load(SCALES + adapter)
    o_off = offs_m.to(tl.int64)[:, None] * stride_om + offs_r[None, :] * stride_or
    o_mask = m_mask[:, None] & (offs_r[None, :] < BLOCK_R)
    if ATOMIC:  # split-K: the partial sums meet in ACC (same layout as OUT, all zeros before)
        tl.atomic_add(ACC + o_off, acc, mask=o_mask, sem="relaxed")
        if _last_to_arrive(TICKETS + pid_m, tl.num_programs(1), GPU_FENCE):
            # the tile's last K-split program writes the sum in OUT's dtype (no cast launch)
            # and leaves ACC and the ticket zero again for the next launch (no memset launch)
            acc = tl.load(ACC + o_off, mask=o_mask, other=0.0, cache_modifier=".cg")
            # the load's thread layout (picked for OUT's store) need not be the zero store's:
            # without this barrier a thread zeroed elements another had not yet read (bf16
            # OUT on the H200, 2026-11-29; the interpreter cannot show it)
            tl.debug_barrier()
            tl.store(ACC + o_off, tl.full((BLOCK_M, BLOCK_R), 0.0, tl.float32), mask=o_mask)
            tl.store(TICKETS + pid_m, 0)
            tl.store(OUT + o_off, acc.to(OUT.dtype.element_ty), mask=o_mask)
    else:
        tl.store(OUT + o_off, acc.to(OUT.dtype.element_ty), mask=o_mask)


def _expand_kernel(
    S, V, Y, TILES, RANKS, SCALES,
    N_OUT, N_PER_PROG,
    stride_sm, stride_sr,
    stride_va, stride_vn, stride_vr,
    stride_ym, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    ADD: tl.constexpr, APPLY_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    adapter, row0, row_end, rank = _table_row(TILES, RANKS, pid_m)
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_r = tl.arange(0, BLOCK_R)
    m_mask = offs_m < row_end
    r_mask = offs_r < rank
    s = tl.load(
        S + offs_m.to(tl.int64)[:, None] * stride_sm + offs_r[None, :] * stride_sr,
        mask=m_mask[:, None], other=0.0,
    )  # [BLOCK_M, BLOCK_R] (all columns: see _wgrad_kernel), loaded once for all column blocks
    s = tl.where(r_mask[None, :], s, 0.0)
    y_dtype = Y.dtype.element_ty
    s = s.to(y_dtype)
    if UPCAST:
        s = s.to(tl.float32)
    v_base = V + adapter.to(tl.int64) * stride_va + offs_r[:, None] * stride_vr
    y_rows = Y + offs_m.to(tl.int64)[:, None] * stride_ym
    if APPLY_SCALE:
        scale = tl.load(SCALES + adapter)
    n_lo = pid_n * N_PER_PROG
    n_hi = tl.minimum(n_lo + N_PER_PROG, N_OUT)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_mask = offs_n < n_hi
        # (the r_i mask stays on V: see _shrink_expand_kernel's V)
        v = tl.load(v_base + offs_n[None, :] * stride_vn, mask=r_mask[:, None] & n_mask[None, :],
                    other=0.0).to(y_dtype)  # fmt: skip
        if UPCAST:
            v = v.to(tl.float32)
        acc = tl.dot(s, v, input_precision=DOT_PRECISION)
        if APPLY_SCALE:
            acc = acc * scale
        y_ptrs = y_rows + offs_n[None, :] * stride_yn
        y_mask = m_mask[:, None] & n_mask[None, :]
        if ADD:
            acc += tl.load(y_ptrs, mask=y_mask, other=0.0).to(tl.float32)
        tl.store(y_ptrs, acc.to(y_dtype), mask=y_mask)


def _wgrad_kernel(
    P, Q, OUT, CHUNKS, RANKS, SCALES, V, Y,
    N_COLS, R_OUT,
    stride_pm, stride_pr,
    stride_qm, stride_qn,
    stride_oa, stride_or, stride_on,
    stride_va, stride_vr, stride_vn, stride_ym, stride_yn,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    ATOMIC: tl.constexpr, APPLY_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, EXPAND: tl.constexpr, ADD: tl.constexpr, REDUCE: tl.constexpr,
):  # fmt: skip
    pid_c = tl.program_id(0)
    pid_n = tl.program_id(1)
    adapter, row0, row_end, rank = _table_row(CHUNKS, RANKS, pid_c)
    offs_t = tl.arange(0, BLOCK_T)
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    r_mask = offs_r < rank
    n_mask = offs_n < N_COLS
    acc = tl.full((BLOCK_R, BLOCK_N), 0.0, tl.float32)
    if EXPAND:  # this column block of V_i, loaded once for all of the chunk's rows
        v_rows = offs_r < _rank_cols(rank, R_OUT)  # (whole 8-row groups: see _rank_cols)
        v = tl.load(V + adapter.to(tl.int64) * stride_va + offs_r[:, None] * stride_vr
                    + offs_n[None, :] * stride_vn, mask=v_rows[:, None] & n_mask[None, :],
                    other=0.0)  # fmt: skip
        v = tl.where(r_mask[:, None], v, 0.0).to(Y.dtype.element_ty)
        if UPCAST:
            v = v.to(tl.float32)
    for t0 in range(row0, row_end, BLOCK_T):
        tt = t0 + offs_t
        t_mask = tt < row_end
        tt64 = tt.to(tl.int64)
        # P is [T, BLOCK_R]: all its columns are loaded, so that the 16-byte async copies
        # survive (a runtime r_i mask along the contiguous rank axis made them synchronous
        # 2-byte loads for a bf16 P, sm_90 PTX); columns >= r_i are neutralised below
        p = tl.load(P + tt64[:, None] * stride_pm + offs_r[None, :] * stride_pr,
                    mask=t_mask[:, None], other=0.0)  # [BLOCK_T, BLOCK_R]
        if REDUCE:
            q = tl.load(Q + tt64[:, None] * stride_qm + offs_n[None, :] * stride_qn,
                        mask=t_mask[:, None] & n_mask[None, :], other=0.0)  # [BLOCK_T, BLOCK_N]
            p = p.to(q.dtype)
            if UPCAST:
                p, q = p.to(tl.float32), q.to(tl.float32)
            acc += tl.dot(tl.trans(p), q, input_precision=DOT_PRECISION)
        else:
            p = p.to(Y.dtype.element_ty)
            if UPCAST:
                p = p.to(tl.float32)
        if EXPAND:  # Y[rows, block] (+)= P V_i: the chunks and column blocks tile Y exactly once
            # V's rank rows >= r_i are zeroed above, and P's columns >= r_i are exact zeros
            # (the shrink writes them so), so P goes to the dot untouched: zeroing it here too
            # kept it in registers (sm_90: 138 instead of 98 registers per thread for the
            # forward's expand-only launch, so 1 program per SM instead of 2)
            e = tl.dot(p, v, input_precision=DOT_PRECISION)
            y_ptrs = Y + tt64[:, None] * stride_ym + offs_n[None, :] * stride_yn
            y_mask = t_mask[:, None] & n_mask[None, :]
            if ADD:
                e += tl.load(y_ptrs, mask=y_mask, other=0.0).to(tl.float32)
            tl.store(y_ptrs, e.to(Y.dtype.element_ty), mask=y_mask)
    if REDUCE:
        if APPLY_SCALE:
            acc = acc * tl.load(SCALES + adapter)
        # rank rows >= r_i must be EXACTLY zero even if Q holds inf/nan (0 * inf = nan)
        acc = tl.where(r_mask[:, None], acc, 0.0)
        o_ptrs = (OUT + adapter.to(tl.int64) * stride_oa + offs_r[:, None] * stride_or
                  + offs_n[None, :] * stride_on)  # fmt: skip
        o_mask = (offs_r[:, None] < R_OUT) & n_mask[None, :]
        if ATOMIC:
            tl.atomic_add(o_ptrs, acc, mask=o_mask, sem="relaxed")
        else:
            tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=o_mask)


_JITTED: dict[tuple, object] = {}
_KERNELS: dict[bool, SimpleNamespace] = {}


# os.environ's own store (bytes on POSIX): reading it directly costs 0.08 µs against 0.8 for
# os.environ.get, which encodes the key and decodes the value on every call; the launch path
# asks up to 9 times per layer fwd+bwd. Tests flip the flag at run time (monkeypatch.setenv
# writes through to this store), so the value is read on every call, never cached.
# Where the store is not a dict of bytes (not POSIX), os.environ.get is used.
_ENV_STORE = getattr(os.environ, "_data", None)
_INTERPRET_KEY = os.environ.encodekey("TRITON_INTERPRET") if _ENV_STORE is not None else None
_READ_STORE = type(_ENV_STORE) is dict and type(_INTERPRET_KEY) is bytes
_TRUE = ("1", "true", "on", "yes")
_TRUE_BYTES = tuple(v.encode() for v in _TRUE)


def interpret_mode() -> bool:
    """True when TRITON_INTERPRET is set to a true value (Triton's own parsing of the flag)."""
    if _READ_STORE:
        raw = _ENV_STORE.get(_INTERPRET_KEY)
        return raw is not None and raw.lower() in _TRUE_BYTES
    return os.environ.get("TRITON_INTERPRET", "0").lower() in _TRUE


# The kernels (multi-LoRA and norm/SwiGLU) index in int32, as measured on the H200. A call
# reaching 2^31 elements or more (e.g. > 149,796 tokens through a 14,336-wide layer) takes the
# pure-torch path instead: correct, only slower; micro-steps keep executor steps far below.
MAX_KERNEL_ELEMENTS = 2**31 - 1


def kernels_take(t, span: int) -> bool:
    """Whether the Triton kernels (not the pure-torch fallback) run a call on tensor ``t``
    whose indexing reaches ``span`` elements: CUDA, or CPU under TRITON_INTERPRET, and a span
    that int32 offsets can address."""
    if span > MAX_KERNEL_ELEMENTS:
        return False
    return t.device.type == "cuda" or (t.device.type == "cpu" and interpret_mode())


def jit_helper(fn):
    """Mark a plain function as a device helper the kernels call (a tile-table header, a
    row mask): :func:`lazy_jit` decorates it for the same TRITON_INTERPRET mode as the kernel
    that calls it. A helper decorated with triton.jit at import instead would be fixed to the
    mode of that moment (the reason the kernels themselves are decorated lazily)."""
    fn._lazy_jit_helper = True
    return fn


def lazy_jit(fn, **jit_kw):
    """``triton.jit(fn, **jit_kw)`` for the current TRITON_INTERPRET setting, decorated once per
    (fn, setting): triton.jit decides at decoration time between an interpreter function and a
    compiled one, so kernels are kept as plain functions and decorated on first use. Global
    names of ``fn`` bound to :func:`jit_helper` functions are rebound, in a copy of fn's
    globals, to those helpers decorated the same way (recursively), so kernel and helpers are
    always of one mode."""
    key = (fn, interpret_mode())
    k = _JITTED.get(key)
    if k is None:
        k = _JITTED[key] = triton.jit(_with_helpers(fn), **jit_kw)
    return k


def _with_helpers(fn):
    """fn itself, or a copy whose globals map its helper names to their lazy_jit versions."""
    names = [n for n in fn.__code__.co_names
             if getattr(fn.__globals__.get(n), "_lazy_jit_helper", False)]  # fmt: skip
    if not names:
        return fn
    glb = dict(fn.__globals__)
    glb.update({n: lazy_jit(glb[n]) for n in names})
    copy = FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__module__, copy.__qualname__, copy.__doc__ = fn.__module__, fn.__qualname__, fn.__doc__
    # triton.jit reads which parameters are tl.constexpr from the annotations, which a
    # FunctionType copy does not carry: without them every BLOCK_* is a runtime int and a
    # string constexpr cannot be passed at all (every GPU launch failed, 2026-11-29)
    copy.__annotations__, copy.__kwdefaults__ = dict(fn.__annotations__), fn.__kwdefaults__
    return copy


@jit_helper
def _last_to_arrive(TICKET, arrivals, GPU_FENCE: tl.constexpr):
    """Take a ticket after this program's global writes / atomics; True for the last of the
    ``arrivals`` programs sharing TICKET (an int32 counter), which then sees all of their
    writes (read them with cache_modifier=".cg": from L2). Every thread fences its own
    atomics GPU-wide (GPU_FENCE; the interpreter runs programs one by one and needs none),
    the barrier orders all of them before the ticket, and the ticket is acquire-release."""
    if GPU_FENCE:
        tl.inline_asm_elementwise("fence.acq_rel.gpu;\n mov.u32 $0, $1;", "=r,r",
                                  [tl.full([1], 0, tl.int32)], dtype=tl.int32, is_pure=False,
                                  pack=1)  # fmt: skip
    tl.debug_barrier()
    return tl.atomic_add(TICKET, 1, sem="acq_rel") == arrivals - 1


@jit_helper
def _rank_cols(rank, R_COLS):
    """How many rank rows / columns of an adapter weight to load: r_i rounded up to a whole
    group of 8, at most R_COLS (the tensor's rank extent). A mask ``r < _rank_cols(...)`` is
    constant over 8 consecutive r, so a tile whose contiguous axis is the rank axis is still
    loaded 16 bytes at a time (a plain ``r < r_i`` mask made such loads 2-byte ones, sm_90
    PTX), while the rows past the group (up to 56 of 64 for a rank-8 adapter) are not read at
    all. Rows r_i <= r < _rank_cols hold whatever the tensor holds (even NaN): callers zero
    them in registers."""
    return tl.minimum((rank + 7) // 8 * 8, R_COLS)


@jit_helper
def _table_row(TABLE, RANKS, i):
    """(adapter, first row, end row, rank) of row i of a host-built [n, 3] int32 table of
    (adapter, row_start, row_end) (layout.tiles / layout.chunks)."""
    adapter = tl.load(TABLE + i * 3)
    return adapter, tl.load(TABLE + i * 3 + 1), tl.load(TABLE + i * 3 + 2), tl.load(RANKS + adapter)


def get_kernels() -> SimpleNamespace:
    """The kernels (these three, multi_lora_fused_triton's two and gemm_lora_triton's one),
    jit-decorated for the current TRITON_INTERPRET setting (cached: on every launch's path)."""
    mode = interpret_mode()
    ns = _KERNELS.get(mode)
    if ns is None:
        from . import gemm_lora_triton as g
        from . import multi_lora_fused_triton as f

        ns = _KERNELS[mode] = SimpleNamespace(
            shrink=lazy_jit(_shrink_kernel),
            expand=lazy_jit(_expand_kernel),
            wgrad=lazy_jit(_wgrad_kernel),
            shrink_expand=lazy_jit(f._shrink_expand_kernel),
            gemm_lora=lazy_jit(g._gemm_lora_kernel),
            wgrad_pair=lazy_jit(f._wgrad_pair_kernel, do_not_specialize=f.WGRAD_PAIR_NO_SPECIALIZE),
        )
    return ns
