"""benchmarks/ab_layer.py's round schedule: every variant runs in every slot equally often."""

from collections import Counter

import pytest

from benchmarks.ab_layer import round_orders


@pytest.mark.parametrize("n_variants,rounds", [(3, 8), (4, 20), (2, 1), (5, 5)])
def test_round_orders_balance_every_slot(n_variants, rounds):
    variants = [f"v{i}" for i in range(n_variants)]
    orders = round_orders(variants, rounds)
    assert len(orders) == -(-rounds // n_variants) * n_variants  # rounded up, never down
    assert all(sorted(o) == variants for o in orders)  # each round runs every variant once
    per_slot = [Counter(o[slot] for o in orders) for slot in range(n_variants)]
    assert all(set(c.values()) == {len(orders) // n_variants} for c in per_slot)
    assert orders[0] == variants and orders[1] == variants[1:] + variants[:1]  # rotation
