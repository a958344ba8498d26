"""GpuPool: hand cases and a model-based property test against a naive per-node model."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alto.policy.placement import GpuPool, _IdSet


def test_best_fit_hand():
    pool = GpuPool(nodes=3, gpus_per_node=4)  # nodes own ids 0-3, 4-7, 8-11
    assert pool.allocate(3) == (0, 1, 2)  # all nodes whole: lowest id
    assert pool.allocate(1) == (3,)  # node 0 (1 free) is the best fit, not a whole node
    assert pool.allocate(2) == (4, 5)
    assert (pool.free_count, pool.largest_free_block) == (6, 4)
    # 5 > 4 GPUs per node: one whole node (2) + 1 GPU best-fit on node 1 (2 free).
    assert pool.allocate(5) == (6, 8, 9, 10, 11)
    assert (pool.free_count, pool.largest_free_block) == (1, 1)
    pool.release([0, 1, 2])
    assert pool.allocate(2) == (0, 1)  # node 0 has 3 free, node 1 has 1: only node 0 fits
    assert pool.free_count == 2
    assert pool.allocate(2) is None  # 1 free on node 0 and 1 on node 1: never split
    assert pool.allocate(1) == (2,)  # tie between nodes 0 and 1 (1 free each): lowest id


def test_multi_node_hand():
    pool = GpuPool(nodes=4, gpus_per_node=2)
    assert pool.allocate(1) == (0,)
    assert pool.allocate(4) == (2, 3, 4, 5)  # two whole nodes, lowest ids
    assert pool.allocate(3) == (1, 6, 7)  # whole node 3 + the remainder on node 0
    assert pool.free_count == 0


def test_multi_node_with_remainder():
    pool = GpuPool(nodes=4, gpus_per_node=2)
    pool.allocate(1)  # node 0: GPU 0
    assert pool.allocate(5) == (1, 2, 3, 4, 5)  # whole nodes 1, 2 + remainder on node 0
    assert pool.allocate(3) is None  # only node 3 (2 GPUs) is free
    assert pool.allocate(2) == (6, 7)
    assert pool.free_count == 0 and pool.largest_free_block == 0
    assert pool.allocate(1) is None


def test_release_errors_leave_state_unchanged():
    pool = GpuPool(nodes=2, gpus_per_node=4)
    ids = pool.allocate(2)
    with pytest.raises(ValueError):
        pool.release([ids[0], 5])  # 5 was never allocated
    with pytest.raises(ValueError):
        pool.release([ids[0], ids[0]])
    with pytest.raises(ValueError):
        pool.release([8])
    assert pool.free_count == 6
    pool.release(ids)
    with pytest.raises(ValueError):
        pool.release(ids)
    with pytest.raises(ValueError):
        pool.allocate(0)
    assert pool.allocate(9) is None


def test_idset_against_python_set():
    rng = random.Random(0)
    n = 64 * 64 * 3 + 17  # three levels
    s, ref = _IdSet(n), set()
    for _ in range(3000):
        i = rng.randrange(n) if rng.random() < 0.6 or not ref else rng.choice(sorted(ref))
        if i in ref:
            s.discard(i)
            ref.remove(i)
        else:
            s.add(i)
            ref.add(i)
        assert s.size == len(ref)
        if ref:
            assert s.min() == min(ref)


@settings(max_examples=120, deadline=None)
@given(
    nodes=st.integers(1, 9),
    gpn=st.sampled_from([1, 2, 4, 8]),
    last_frac=st.floats(0.0, 1.0),
    ops=st.lists(st.tuples(st.booleans(), st.integers(1, 20), st.integers(0, 10**6)), max_size=60),
)
def test_pool_model_property(nodes, gpn, last_frac, ops):
    """Against a brute-force model, with a last node of 1..gpn GPUs (a cluster whose GPU count
    is no multiple of gpus_per_node): best fit, whole nodes first for big tasks, no double
    allocation, free counts per node."""
    last = max(1, round(last_frac * gpn))
    size = [gpn] * (nodes - 1) + [last]
    pool = GpuPool(nodes, gpn, last)
    assert pool.total == sum(size)
    live: list[tuple[int, ...]] = []
    allocated: set[int] = set()
    for is_alloc, g, pick in ops:
        free = [size[n] - sum(1 for a in allocated if a // gpn == n) for n in range(nodes)]
        if is_alloc or not live:
            got = pool.allocate(g)
            if g <= gpn:
                fits = [n for n in range(nodes) if free[n] >= g]
                if not fits:
                    assert got is None
                    continue
                best = min(fits, key=lambda n: (free[n], n))  # best fit, lowest id
                assert got is not None and {a // gpn for a in got} == {best}
            else:
                q, r = divmod(g, gpn)
                whole = [n for n in range(nodes) if free[n] == gpn]
                partial = [n for n in range(nodes) if r <= free[n] < gpn] if r else []
                possible = len(whole) >= q + (1 if r and not partial else 0)
                if not possible:
                    assert got is None
                    continue
                assert got is not None
                per = {}
                for a in got:
                    per[a // gpn] = per.get(a // gpn, 0) + 1
                assert sorted(per.values()).count(gpn) >= q
                assert sum(1 for n, c in per.items() if c == gpn and free[n] == gpn) >= q
            assert len(got) == g and len(set(got)) == g
            assert not allocated & set(got)  # never double-allocates
            assert list(got) == sorted(got)
            allocated |= set(got)
            live.append(got)
        else:
            ids = live.pop(pick % len(live))
            pool.release(ids)
            allocated -= set(ids)
        assert all(a % gpn < size[a // gpn] for a in allocated)  # only GPUs that exist
        assert pool.free_count == sum(size) - len(allocated)
        free = [size[n] - sum(1 for a in allocated if a // gpn == n) for n in range(nodes)]
        assert pool.largest_free_block == max(free)
        assert [pool.node_free(n) for n in range(nodes)] == free


def test_large_pool_is_fast_and_consistent():
    pool = GpuPool(nodes=4096, gpus_per_node=8)
    rng = random.Random(1)
    live = []
    for _ in range(20000):
        if live and rng.random() < 0.45:
            pool.release(live.pop(rng.randrange(len(live))))
        else:
            got = pool.allocate(rng.choice([1, 2, 4, 8, 16]))
            if got is not None:
                live.append(got)
    assert pool.free_count == pool.total - sum(len(x) for x in live)
    assert len({a for x in live for a in x}) == sum(len(x) for x in live)


@pytest.mark.parametrize(("gpus", "gpn", "nodes", "per_node", "last"), [
    (12, 8, 2, 8, 4), (8, 3, 3, 3, 2), (16, 8, 2, 8, 8), (5, 8, 1, 5, 5), (1, 8, 1, 1, 1),
])  # fmt: skip
def test_pool_for_gpus_has_exactly_that_many_gpus(gpus, gpn, nodes, per_node, last):
    """`alto simulate --gpus 12` (nodes of 8) used to build two full nodes (16 GPUs) and then
    fail the planner's check; --gpus 8 --gpus-per-node 3 placed tasks on a ninth GPU."""
    pool = GpuPool.for_gpus(gpus, gpn)
    assert (pool.nodes, pool.gpus_per_node, pool.total, pool.free_count) == (nodes, per_node, gpus, gpus)
    assert pool.node_free(nodes - 1) == last
    assert pool.allocate(gpus + 1) is None
    ids = pool.allocate(gpus)
    assert ids == tuple(range(gpus)) and pool.free_count == 0
    pool.release(ids)
    with pytest.raises(ValueError, match="out of range"):
        pool.release([gpus])


def test_smaller_last_node_takes_what_fits():
    pool = GpuPool.for_gpus(12, 8)  # ids 0-7 and 8-11
    assert pool.allocate(4) == (8, 9, 10, 11)  # best fit: the 4-GPU node, the 8 stay whole
    assert pool.allocate(8) == tuple(range(8))
    pool.release(range(12))
    assert pool.allocate(9) == (*range(8), 8)  # a whole node + the rest on the small one
    assert pool.allocate(4) is None  # 3 free, on one node
    assert pool.largest_free_block == 3
