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
    ops=st.lists(st.tuples(st.booleans(), st.integers(1, 20), st.integers(0, 10**6)), max_size=60),
)
def test_pool_model_property(nodes, gpn, ops):
    pool = GpuPool(nodes, gpn)
    live: list[tuple[int, ...]] = []
    allocated: set[int] = set()
    for is_alloc, g, pick in ops:
        free = [gpn - sum(1 for a in allocated if a // gpn == n) for n in range(nodes)]
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
        assert pool.free_count == nodes * gpn - len(allocated)
        free = [gpn - sum(1 for a in allocated if a // gpn == n) for n in range(nodes)]
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
