"""Node-aware GPU placement: which specific GPU ids a starting task gets.

The planner (`alto.policy.planner`) sees the cluster as one pool of identical GPUs; the
driver then asks `GpuPool.allocate(g)` for concrete ids. Global GPU id =
node * gpus_per_node + local id.

Rules (deterministic; ties go to the lowest node id, then the lowest local ids):
* g <= gpus_per_node: all g GPUs on ONE node -- the node with the FEWEST free GPUs that
  still has >= g free (best fit), so that nearly-empty nodes stay whole for big tasks.
  If no single node has g free GPUs, `allocate` returns None even when free_count >= g:
  a task never spans nodes it could fit inside.
* g > gpus_per_node: q = g // gpus_per_node whole free nodes (lowest ids) plus, when
  r = g % gpus_per_node > 0, r GPUs best-fit on one further node. None if impossible.
* A cluster whose GPU count is no multiple of gpus_per_node has a smaller last node
  (`last_node` GPUs, ids after every full node's). It never counts as a whole node; it
  takes tasks (or remainders r) that fit in what it has free.

Cost: nodes are kept in buckets by free count, each bucket a 64-ary bitset tree over node
ids (`_IdSet`: add/remove/min in O(log_64 nodes), i.e. <= 4 word steps up to 16M nodes).
allocate is O(gpus_per_node + g + log_64 nodes); release O(len(ids) + log_64 nodes) per
touched node; free_count O(1); largest_free_block O(gpus_per_node). None of it grows with
the node count beyond the log_64 factor.
"""

from __future__ import annotations

from collections.abc import Iterable


class _IdSet:
    """Set of ints in [0, n) with O(log_64 n) add / discard / min (hierarchical bitset).

    levels[0][w] bit b set <=> id 64*w + b present; levels[l+1][w] bit b set <=>
    levels[l][64*w + b] != 0. The top level has a single word.
    """

    __slots__ = ("levels", "size")

    def __init__(self, n: int):
        self.levels: list[list[int]] = []
        words = max(1, (n + 63) // 64)
        while True:
            self.levels.append([0] * words)
            if words == 1:
                break
            words = (words + 63) // 64
        self.size = 0

    def add(self, i: int) -> None:
        self.size += 1
        for level in self.levels:
            w, b = i >> 6, i & 63
            was_empty = level[w] == 0
            level[w] |= 1 << b
            if not was_empty:
                return
            i = w

    def discard(self, i: int) -> None:
        self.size -= 1
        for level in self.levels:
            w, b = i >> 6, i & 63
            level[w] &= ~(1 << b)
            if level[w]:
                return
            i = w

    def min(self) -> int:
        """Smallest member; the set must be non-empty."""
        i = 0
        for level in reversed(self.levels):
            word = level[i]
            i = i * 64 + (word & -word).bit_length() - 1
        return i


class GpuPool:
    """Free/allocated state of nodes * gpus_per_node GPUs, or of (nodes - 1) full nodes and
    a last one of ``last_node`` GPUs (1..gpus_per_node); see the module docstring."""

    def __init__(self, nodes: int, gpus_per_node: int, last_node: int | None = None):
        if nodes < 1 or gpus_per_node < 1:
            raise ValueError(
                f"need nodes >= 1 and gpus_per_node >= 1, got {nodes}, {gpus_per_node}"
            )
        last = gpus_per_node if last_node is None else last_node
        if not 1 <= last <= gpus_per_node:
            raise ValueError(f"need 1 <= last_node <= gpus_per_node, got {last_node}")
        self.nodes = nodes
        self.gpus_per_node = gpus_per_node
        self._size = [gpus_per_node] * (nodes - 1) + [last]  # GPUs each node has
        self._mask = [(1 << g) - 1 for g in self._size]  # bit l set <=> local GPU l is free
        self._nfree = list(self._size)
        self._bucket = [_IdSet(nodes) for _ in range(gpus_per_node + 1)]  # by free count
        for n, g in enumerate(self._size):
            self._bucket[g].add(n)
        self._free = sum(self._size)

    @classmethod
    def for_gpus(cls, gpus: int, gpus_per_node: int) -> GpuPool:
        """A pool of exactly ``gpus`` GPUs in nodes of ``gpus_per_node``: full nodes, then a
        smaller last node for the remainder (a cluster of fewer GPUs than one node is one
        node of that size)."""
        if gpus < 1 or gpus_per_node < 1:
            raise ValueError(f"need gpus >= 1 and gpus_per_node >= 1, got {gpus}, {gpus_per_node}")
        per_node = min(gpus_per_node, gpus)
        nodes, rest = divmod(gpus, per_node)
        return cls(nodes + (rest > 0), per_node, rest or None)

    @property
    def total(self) -> int:
        return sum(self._size)

    @property
    def free_count(self) -> int:
        """Free GPUs in the whole cluster."""
        return self._free

    @property
    def largest_free_block(self) -> int:
        """Most free GPUs on any single node (the largest g <= gpus_per_node that fits)."""
        for f in range(self.gpus_per_node, 0, -1):
            if self._bucket[f].size:
                return f
        return 0

    def node_free(self, node: int) -> int:
        return self._nfree[node]

    def _best_fit_node(self, g: int, below: int) -> int | None:
        """Lowest-id node among those with the fewest free GPUs in [g, below)."""
        for f in range(g, below):
            if self._bucket[f].size:
                return self._bucket[f].min()
        return None

    def _take(self, node: int, g: int) -> list[int]:
        """Allocate the g lowest free local GPUs of node; returns global ids."""
        mask = self._mask[node]
        ids = []
        for _ in range(g):
            low = mask & -mask
            mask ^= low
            ids.append(node * self.gpus_per_node + low.bit_length() - 1)
        self._mask[node] = mask
        self._move(node, self._nfree[node] - g)
        return ids

    def _move(self, node: int, new_free: int) -> None:
        self._bucket[self._nfree[node]].discard(node)
        self._bucket[new_free].add(node)
        self._free += new_free - self._nfree[node]
        self._nfree[node] = new_free

    def allocate(self, g: int) -> tuple[int, ...] | None:
        """g specific GPU ids (sorted), or None if the rules above cannot place g now."""
        if g < 1:
            raise ValueError(f"g must be >= 1, got {g}")
        if g > self._free:
            return None
        gpn = self.gpus_per_node
        if g <= gpn:
            node = self._best_fit_node(g, gpn + 1)
            return None if node is None else tuple(self._take(node, g))
        q, r = divmod(g, gpn)
        whole = self._bucket[gpn]
        if whole.size < q:
            return None
        rest_node = None
        if r:
            # Best fit among partially free nodes, else one more whole node.
            rest_node = self._best_fit_node(r, gpn)
            if rest_node is None and whole.size < q + 1:
                return None
        ids: list[int] = []
        for _ in range(q):
            ids += self._take(whole.min(), gpn)
        if r:
            if rest_node is None:
                rest_node = whole.min()
            ids += self._take(rest_node, r)
        return tuple(sorted(ids))

    def release(self, ids: Iterable[int]) -> None:
        """Free these GPU ids. ValueError (and no change) on an unknown or already free id."""
        per_node: dict[int, int] = {}
        for gid in ids:
            if not 0 <= gid < self.total:
                raise ValueError(f"GPU id {gid} out of range [0, {self.total})")
            node, bit = divmod(gid, self.gpus_per_node)  # (the last node's ids come last)
            b = 1 << bit
            if self._mask[node] & b or per_node.get(node, 0) & b:
                raise ValueError(f"GPU id {gid} is not allocated (double release?)")
            per_node[node] = per_node.get(node, 0) | b
        for node, bits in per_node.items():
            self._mask[node] |= bits
            self._move(node, self._nfree[node] + bits.bit_count())
