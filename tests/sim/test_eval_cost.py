"""The simulator charges evaluations as the executor runs them: configs due together share
forwards of at most EVAL_TOKENS_PER_FORWARD tokens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from alto.policy.types import EVAL_TOKENS_PER_FORWARD, TaskSpec
from sim.task_training import TaskCosts


class LinearCost:
    """predict = 0.1 s + 1 µs per token + 10 ms per adapter (a stand-in cost table)."""

    def __init__(self):
        self.calls = []

    def predict(self, gpu, model, kernel, n, tokens, ranks):
        self.calls.append((kernel, n, tokens, tuple(ranks)))
        return 0.1 + 1e-6 * tokens + 0.01 * n


TASK = TaskSpec("t", 0.0, "x", "smollm2-135m", 1, 256, 192, 1.0, (1e-4,), (16, 64), (1,))


@pytest.mark.parametrize("kernel,n,want", [
    # 64 x 192 = 12,288 tokens a config: 5 configs (61,440 tokens) per forward
    ("fused", 12, 2 * 0.5 * (0.1 + 61440e-6 + 0.05) + 0.5 * (0.1 + 24576e-6 + 0.02)),
    ("fused", 5, 0.5 * (0.1 + 61440e-6 + 0.05)),
    ("fused", 1, 0.5 * (0.1 + 12288e-6 + 0.01)),
    ("single", 3, 3 * 0.5 * (0.1 + 12288e-6 + 0.01)),  # the sequential baseline: one per forward
    ("fused", 0, 0.0),
])
def test_configs_due_together_share_forwards(kernel, n, want):
    cost = LinearCost()
    costs = TaskCosts(SimpleNamespace(kernel=kernel, max_active=None),
                      SimpleNamespace(eval_samples=64, gpu_type="H200", max_active=None), cost)
    assert EVAL_TOKENS_PER_FORWARD // (64 * 192) == 5
    assert costs.eval_time(TASK, n) == pytest.approx(want, rel=1e-12)
    assert all(r == (16,) * k for _, k, _, r in cost.calls)  # at the grid's smallest rank


def test_no_eval_samples_means_free_evaluations():
    costs = TaskCosts(SimpleNamespace(kernel="fused", max_active=None),
                      SimpleNamespace(eval_samples=0, gpu_type="H200", max_active=None), LinearCost())
    assert costs.eval_time(TASK, 7) == 0.0
