"""MemoryModel: M(B) = k0 + k1 * B * L in bytes, fit and budget checks on hand values."""

from __future__ import annotations

import numpy as np
import pytest

from alto.policy.memory import MemoryModel
from alto.policy.types import JobConfig


def test_predict_fits_max_total_batch_hand_values():
    m = MemoryModel(1000, 2, 10_000, margin_frac=0.1)  # usable 9000 bytes
    assert m.predict(40, 100) == 9000
    assert m.fits(40, 100) and not m.fits(41, 100)
    assert m.max_total_batch(100) == 40  # (9000 - 1000) / (2 * 100)
    assert m.max_total_batch(3) == 1333  # floor(8000 / 6)
    assert MemoryModel(9500, 2, 10_000).max_total_batch(100) == 0  # k0 alone over budget


def test_margin_zero_uses_whole_budget():
    m = MemoryModel(0, 1, 1024, margin_frac=0.0)
    assert m.max_total_batch(8) == 128 and m.fits(128, 8) and not m.fits(129, 8)


def test_jobs_fit_sums_batches():
    m = MemoryModel(1000, 2, 10_000)
    jobs = [JobConfig(f"j{i}", "t", 1e-4, 16, b, 32.0, 10) for i, b in enumerate((8, 16, 16, 1))]
    ok = m.jobs_fit(seq_len=100)
    assert ok(jobs[:3])  # B = 40: exactly the usable 9000 bytes
    assert not ok(jobs)  # B = 41


def test_fit_recovers_known_coefficients():
    k0, k1 = 16e9, 131072.0  # 16 GB base + 128 KiB per token
    pts = [
        (n, b, L, k0 + k1 * n * b * L) for n in (1, 2, 4, 8) for b in (1, 2, 4) for L in (512, 1024)
    ]
    m = MemoryModel.fit(pts, budget_bytes=80e9, margin_frac=0.1)
    assert m.k0_bytes == pytest.approx(k0, rel=1e-9)
    assert m.k1_bytes_per_token == pytest.approx(k1, rel=1e-9)
    assert m.budget_bytes == 80e9 and m.margin_frac == 0.1
    # (72e9 - 16e9) / (131072 * 1024) = 417.2 -> 417 samples of 1024 tokens
    assert m.max_total_batch(1024) == 417


def test_fit_least_squares_with_noise():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 64, size=200)
    pts = [(1, int(b), 256, 1e9 + 5e4 * b * 256 + rng.normal(0, 1e6)) for b in x]
    m = MemoryModel.fit(pts, budget_bytes=8e9)
    assert m.k1_bytes_per_token == pytest.approx(5e4, rel=1e-2)
    assert m.k0_bytes == pytest.approx(1e9, rel=1e-2)


def test_fit_two_points_exact():
    m = MemoryModel.fit([(1, 1, 100, 1100.0), (2, 2, 100, 1400.0)], budget_bytes=5000)
    assert (m.k0_bytes, m.k1_bytes_per_token) == pytest.approx((1000.0, 1.0))


@pytest.mark.parametrize(
    "pts",
    [
        [],
        [(1, 4, 128, 1e9)],
        [(1, 4, 128, 1e9), (2, 2, 128, 1.1e9), (4, 1, 128, 1.2e9)],  # one token count only
    ],
)
def test_fit_needs_two_distinct_points(pts):
    with pytest.raises(ValueError, match="distinct"):
        MemoryModel.fit(pts, budget_bytes=1e10)


def test_fit_rejects_negative_slope():
    with pytest.raises(ValueError, match="k1"):
        MemoryModel.fit([(1, 1, 100, 2e9), (1, 8, 100, 1e9)], budget_bytes=1e10)


@pytest.mark.parametrize(
    "args", [(0, 0, 100), (0, -1, 100), (0, 1, 0), (0, 1, 100, 1.0), (0, 1, 100, -0.1)]
)
def test_constructor_validates(args):
    with pytest.raises(ValueError):
        MemoryModel(*args)


def test_adapter_states_taken_out_of_profile_points():
    """16 bytes per LoRA parameter; a profile point of n adapters loses n of them."""
    from alto.policy.memory import adapter_state_bytes, without_adapter_states

    assert adapter_state_bytes(1000) == 16_000.0
    pts = [(1, 2, 8, 5_000.0), (4, 2, 8, 9_000.0)]
    assert without_adapter_states(pts, 100.0) == [(1, 2, 8, 4_900.0), (4, 2, 8, 8_600.0)]


def test_fits_adds_extra_bytes():
    from alto.policy.memory import MemoryModel

    mm = MemoryModel(k0_bytes=100.0, k1_bytes_per_token=1.0, budget_bytes=1000.0, margin_frac=0.1)
    assert mm.fits(10, 10) and mm.predict(10, 10, extra_bytes=50.0) == 250.0
    assert mm.fits(10, 10, extra_bytes=700.0) and not mm.fits(10, 10, extra_bytes=701.0)
