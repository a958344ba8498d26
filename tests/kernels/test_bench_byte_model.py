"""The layer benchmark's FLOP / byte model (benchmarks/bench_multi_lora.lora_model), which
the CSV's lora_bytes and lora_floor_ms columns carry: hand-computed on a tiny case."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
bench = pytest.importorskip("bench_multi_lora")


def test_lora_bytes_by_path():
    """d_in 8, d_out 4, T 10, segments 6 + 4, ranks 2 and 4 (r_max 4), block_r 4:
    x and dY read twice = 2·10·(2·8 + 2·4) = 480 bytes; the deltas (y and dX, written and read)
    another 480 outside the gemm path; A and B read twice and their gradients written once =
    3·2·2·4·(8 + 4) = 576; S and dS written once and read twice = 6·10·4 elements, 2 bytes
    each (4 on the split path). FLOPs 6·(6·2 + 4·4)·(8 + 4) = 2016."""
    args = (8, 4, 10, [6, 4], [2, 4], 4)
    assert bench.lora_model(*args, "gemm") == (2016.0, 480 + 576 + 480)
    assert bench.lora_model(*args, "stream") == (2016.0, 960 + 576 + 480)
    assert bench.lora_model(*args, "split") == (2016.0, 960 + 576 + 960)


def test_variant_path_resolves_the_auto_rule():
    """A variant's path: its TUNE override, the shipped rule for "fused" (auto: the gemm path
    for the k/v and square projections, the stream path for the MLP ones), the split design
    as the yardstick for the eager loop and separate jobs."""
    assert bench.variant_path("fused_gemm", 4096, 4096, 4096) == "gemm"
    assert bench.variant_path("fused", 4096, 4096, 1024) == "gemm"
    assert bench.variant_path("fused", 4096, 4096, 4096) == "gemm"
    assert bench.variant_path("fused", 4096, 4096, 14336) == "stream"
    assert bench.variant_path("fused_stream", 4096, 4096, 4096) == "stream"
    assert bench.variant_path("loop", 4096, 4096, 4096) == "split"
    assert bench.variant_path("separate", 4096, 4096, 1024) == "split"
