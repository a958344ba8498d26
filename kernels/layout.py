"""Host-built segment/block metadata for the fused multi-LoRA kernels.

A batch of T tokens is the concatenation of N adapter segments: adapter i owns rows
[o_i, o_i + seg_lens[i]) with o_i = seg_lens[0] + ... + seg_lens[i-1]. The kernels never pad
tokens; instead the host cuts every segment into row *tiles* and hands the kernels one table
row per tile, ``(adapter, row_start, row_end)``, with ``row_end`` the END OF THE SEGMENT (not of
the tile): a program covers rows [row_start, row_start + BLOCK_M) masked by ``< row_end``.

Worked example: seg_lens = (5, 0, 3), BLOCK_M = 4 (offsets 0, 5, 5)::

    tile 0: (0, 0, 5)   rows 0..3
    tile 1: (0, 4, 5)   row 4          (rows 5..7 of this block are masked off)
    tile 2: (2, 5, 8)   rows 5..7      (adapter 1 has no tokens, hence no tile)

The same cutting with a larger ``chunk`` gives the weight-gradient table: a program reduces
rows [row_start, min(row_start + chunk, row_end)) of one adapter (``chunk_end`` column holds that
bound). Ranks are padded only along the rank axis, to ``block_r`` = next power of two >= r_max
(and >= 16, the smallest tl.dot dimension); the kernels mask rank columns >= r_i.

A :class:`MultiLoraLayout` is built once per (seg_lens, ranks, scaling) and reused by every
LoRA-wrapped linear of the model for that batch: tables are built on the host with numpy the
first time a (device, block) pair is asked for, copied with ``non_blocking=True`` from pinned
memory, and cached on the object. :func:`make_layout` caches layouts themselves (LRU keyed on the
tuples), so calling it every step with the same batch shape costs a dict lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

__all__ = ["MultiLoraLayout", "make_layout", "as_int_tuple"]


def as_int_tuple(values: Sequence[int] | torch.Tensor, name: str) -> tuple[int, ...]:
    """Turn a list / CPU int tensor into a tuple of Python ints; ValueError naming ``name``."""
    if isinstance(values, torch.Tensor):
        if values.device.type != "cpu":
            raise ValueError(
                f"{name} must be a list or a CPU tensor (a device tensor forces a sync)"
            )
        if values.dtype.is_floating_point or values.dtype == torch.bool or values.dim() != 1:
            raise ValueError(f"{name} must be a 1-D integer tensor")
        return tuple(int(v) for v in values.tolist())
    values = _as_list(values, name, "ints")
    _reject_text_and_bools(values, name, "ints")
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of ints") from exc
    if any(float(a) != float(b) for a, b in zip(out, values, strict=True)):
        raise ValueError(f"{name} must hold integers")
    return out


def as_float_tuple(values: Sequence[float] | torch.Tensor, name: str) -> tuple[float, ...]:
    """Turn a list / 1-D tensor into a tuple of Python floats; ValueError naming ``name``."""
    if isinstance(values, torch.Tensor):
        if values.dim() != 1 or values.is_complex():
            raise ValueError(f"{name} must be a 1-D real tensor")
        values = values.detach().cpu().tolist()
    values = _as_list(values, name, "floats")
    _reject_text_and_bools(values, name, "floats")
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of floats") from exc


def _reject_text_and_bools(values: list, name: str, what: str) -> None:
    """int() and float() take "5" and True; as sizes, ranks or scalings they are mistakes."""
    bad = next((v for v in values if isinstance(v, (str, bytes, bool))), None)
    if bad is not None:
        raise ValueError(f"{name} must be a sequence of {what}, got an element {bad!r}")


def _as_list(values, name: str, what: str) -> list:
    """``values`` as a list (a generator is read once); a string or a scalar is no sequence."""
    if not isinstance(values, (str, bytes)):
        try:
            return list(iter(values))
        except TypeError:
            pass
    raise ValueError(f"{name} must be a sequence of {what}, got {type(values).__name__}")


def _pinned(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int32))
    if torch.cuda.is_available():
        t = t.pin_memory()  # lets the H2D copy below be truly asynchronous
    return t


class MultiLoraLayout:
    """Segment lengths, ranks and scalings of one batch layout, plus cached device tables.

    Attributes:
        seg_lens, ranks: tuples of N ints (tokens per adapter, LoRA rank per adapter).
        scaling: tuple of N floats (alpha_i / r_i).
        offsets: tuple of N+1 ints, row offsets (offsets[i] = first row of adapter i).
        total_tokens: T = sum(seg_lens).
        r_max: max(ranks); block_r: rank-axis padding used by the kernels.
    """

    def __init__(
        self,
        seg_lens: Sequence[int],
        ranks: Sequence[int],
        scaling: Sequence[float],
    ) -> None:
        self.seg_lens = as_int_tuple(seg_lens, "seg_lens")
        self.ranks = as_int_tuple(ranks, "ranks")
        self.scaling = as_float_tuple(scaling, "scaling")
        n = len(self.seg_lens)
        if n == 0:
            raise ValueError("seg_lens must name at least one adapter")
        if len(self.ranks) != n:
            raise ValueError(f"ranks has {len(self.ranks)} entries, seg_lens has {n}")
        if len(self.scaling) != n:
            raise ValueError(f"scaling has {len(self.scaling)} entries, seg_lens has {n}")
        if any(s < 0 for s in self.seg_lens):
            raise ValueError("seg_lens must be >= 0")
        if any(r < 1 for r in self.ranks):
            raise ValueError("ranks must be >= 1")
        with np.errstate(over="ignore"):  # finite as stored in the kernels' fp32 table
            finite = np.isfinite(np.asarray(self.scaling, dtype=np.float32)).all()
        if not finite:
            raise ValueError("scaling must be finite (and within fp32's range)")
        self.num_adapters = n
        self.offsets = tuple(int(v) for v in np.concatenate([[0], np.cumsum(self.seg_lens)]))
        self.total_tokens = self.offsets[-1]
        self.r_max = max(self.ranks)
        self.block_r = max(16, 1 << (self.r_max - 1).bit_length())
        self._tables: dict[tuple, torch.Tensor] = {}
        self._memo: dict[tuple, object] = {}

    def __repr__(self) -> str:
        return (
            f"MultiLoraLayout(N={self.num_adapters}, T={self.total_tokens}, "
            f"r_max={self.r_max}, seg_lens={self.seg_lens[:8]}{'...' if self.num_adapters > 8 else ''})"
        )

    # ------------------------------------------------------------------ host tables
    def tile_array(self, block: int) -> np.ndarray:
        """[n_tiles, 3] int32 numpy table (adapter, row_start, row_end) cutting segments by ``block``.

        ``row_end`` is the segment's end, so a program masks rows ``>= row_end``. Zero-token
        adapters get no tile.
        """
        rows = []
        for i, (o, n) in enumerate(zip(self.offsets[:-1], self.seg_lens, strict=True)):
            for s in range(o, o + n, block):
                rows.append((i, s, o + n))
        return np.asarray(rows, dtype=np.int32).reshape(-1, 3)

    def row_adapter_array(self) -> np.ndarray:
        """[T] int32 numpy table: the adapter owning each row (zero-token adapters own none)."""
        return np.repeat(np.arange(self.num_adapters, dtype=np.int32), self.seg_lens)

    def row_tile_plan_array(self, block: int) -> np.ndarray:
        """[cdiv(T, block), 4] int32 numpy table, one row per ``block``-row tile of the tokens:
        (first adapter owning one of its rows, number of adapters from it to the last one's,
        rank of the first, rank of the next or 0). Zero-token adapters between two owners are
        counted (their S rows are masked to nothing)."""
        row_ad = self.row_adapter_array()
        starts = np.arange(0, self.total_tokens, block)
        first = row_ad[starts]
        count = row_ad[np.minimum(starts + block, self.total_tokens) - 1] - first + 1
        ranks = np.asarray(self.ranks + (0,), dtype=np.int64)
        second = np.where(count > 1, ranks[np.minimum(first + 1, self.num_adapters)], 0)
        return np.stack([first, count, ranks[first], second], axis=1).astype(np.int32)

    def chunk_array(self, chunk: int) -> np.ndarray:
        """[n_chunks, 3] table (adapter, row_start, chunk_end) for the token-split reductions."""
        rows = []
        for i, (o, n) in enumerate(zip(self.offsets[:-1], self.seg_lens, strict=True)):
            for s in range(o, o + n, chunk):
                rows.append((i, s, min(s + chunk, o + n)))
        return np.asarray(rows, dtype=np.int32).reshape(-1, 3)

    # ------------------------------------------------------------------ device tables
    def memo(self, key: tuple, build):
        """build() once per key for this layout (launch plans: tables, grids, splits), so every
        layer of a step with the same shape reuses it; key must hold all that build() reads."""
        v = self._memo.get(key)
        if v is None:
            v = self._memo[key] = build()
        return v

    def _cached(self, key: tuple, build, device: torch.device) -> torch.Tensor:
        full = (*key, device)
        t = self._tables.get(full)
        if t is None:
            t = build().to(device, non_blocking=True)
            self._tables[full] = t
        return t

    def tiles(self, block: int, device: torch.device) -> torch.Tensor:
        """Device int32 [n_tiles, 3] tile table (see :meth:`tile_array`)."""
        return self._cached(("tiles", block), lambda: _pinned(self.tile_array(block)), device)

    def segments_longest_first(self, device: torch.device) -> torch.Tensor:
        """Device int32 [n_nonempty, 3] table (adapter, row_start, row_end), one row per
        non-empty segment, longest first (a persistent grid then starts the longest work)."""
        def build():
            rows = self.chunk_array(max(1, self.total_tokens))
            order = np.argsort(-(rows[:, 2] - rows[:, 1]), kind="stable")
            return _pinned(np.ascontiguousarray(rows[order]))

        return self._cached(("segments_longest_first",), build, device)

    def chunks(self, chunk: int, device: torch.device) -> torch.Tensor:
        """Device int32 [n_chunks, 3] chunk table (see :meth:`chunk_array`)."""
        return self._cached(("chunks", chunk), lambda: _pinned(self.chunk_array(chunk)), device)

    def row_tile_plan(self, block: int, device: torch.device) -> torch.Tensor:
        """Device int32 [cdiv(T, block), 4] (see :meth:`row_tile_plan_array`)."""
        build = lambda: _pinned(self.row_tile_plan_array(block))  # noqa: E731
        return self._cached(("row_tile_plan", block), build, device)

    def row_adapters(self, device: torch.device) -> torch.Tensor:
        """Device int32 [T]: the adapter owning each row (zero-token adapters own none)."""
        return self._cached(("row_adapters",), lambda: _pinned(self.row_adapter_array()), device)

    def ranks_tensor(self, device: torch.device) -> torch.Tensor:
        """Device int32 [N] ranks."""
        return self._cached(("ranks",), lambda: _pinned(np.asarray(self.ranks)), device)

    def scaling_tensor(self, device: torch.device) -> torch.Tensor:
        """Device fp32 [N] scalings."""
        full = ("scaling", device)
        t = self._tables.get(full)
        if t is None:
            t = torch.tensor(self.scaling, dtype=torch.float32)
            if torch.cuda.is_available():
                t = t.pin_memory()
            t = t.to(device, non_blocking=True)
            self._tables[full] = t
        return t

    def max_chunks_per_adapter(self, chunk: int) -> int:
        """Largest number of ``chunk``-token pieces any one adapter is cut into."""
        return max((n + chunk - 1) // chunk for n in self.seg_lens)


@lru_cache(maxsize=256)
def _make_layout_cached(
    seg_lens: tuple[int, ...], ranks: tuple[int, ...], scaling: tuple[float, ...]
) -> MultiLoraLayout:
    return MultiLoraLayout(seg_lens, ranks, scaling)


def make_layout(
    seg_lens: Sequence[int] | torch.Tensor,
    ranks: Sequence[int] | torch.Tensor,
    scaling: Sequence[float] | torch.Tensor,
    device: torch.device | str | None = None,
) -> MultiLoraLayout:
    """Return the (cached) :class:`MultiLoraLayout` for this batch layout.

    Build it once per optimizer step / batch layout and pass it to every
    ``fused_multi_lora(..., layout=layout)`` call of the model. If ``device`` is given, the
    rank/scaling tables are copied there now (asynchronously) so the first layer does not pay it.
    """
    lay = _make_layout_cached(
        as_int_tuple(seg_lens, "seg_lens"),
        as_int_tuple(ranks, "ranks"),
        as_float_tuple(scaling, "scaling"),
    )
    if device is not None:
        dev = torch.device(device)
        lay.ranks_tensor(dev)
        lay.scaling_tensor(dev)
    return lay
