"""Peak-memory model of co-located LoRA adapters (paper §4): M(B) = k0 + k1 * B * L.

B: total batch in samples across all co-located adapters of a task (sum of their
per-adapter batch sizes); L: sequence length in tokens, so B * L is the tokens of one
step. k0 (bytes) is what does not grow with tokens: frozen base weights, CUDA context,
adapter parameters and optimizer states; k1 (bytes per token) is activations and
their gradients. All memory quantities are bytes.

Limitation (same as the paper's model): adapter count and rank enter only through the fit
(k0, and k1 where the profile added adapters with tokens), so a fit from one rank mix is an
estimate for another. `fits(..., extra_bytes)` lets a caller add what the fit cannot see: the
executor adds every admitted adapter's own state (weights, gradients, AdamW moments), which
double-counts the few adapters of the profile (conservative).

Safety margin: the paper does not state its HBM margin. We keep `margin_frac` = 10% of
the budget free by default, because the allocator's peak *reserved* memory varies by a
few percent from step to step (fragmentation, variable-length batches, the optimizer's
first step), and an OOM costs a re-admission (`TaskTuner.shrink`) while 10% idle HBM
costs little throughput at these batch sizes. This 10% is a judgement, not a measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from alto.policy.types import JobConfig

ADAPTER_STATE_BYTES_PER_PARAM = 16  # fp32 weight + its gradient + AdamW's two moments


def adapter_state_bytes(lora_params: int) -> float:
    """Resident bytes of one training adapter with `lora_params` LoRA parameters (weights,
    gradients, AdamW moments). The simulator and the executor add n of these to M(B)."""
    return float(ADAPTER_STATE_BYTES_PER_PARAM * lora_params)


def without_adapter_states(points: Iterable[tuple[int, int, int, float]],
                           per_adapter_bytes: float) -> list[tuple[int, int, int, float]]:
    """Profile points (n, b, L, peak) minus the n adapters' own states, so that a fit of them
    describes the base and the activations only (what M(B) models; callers add adapters)."""
    return [(n, b, L, peak - n * per_adapter_bytes) for n, b, L, peak in points]


class MemoryModel:
    """M(B) = k0_bytes + k1_bytes_per_token * B * L, with a budget and a safety margin.

    budget_bytes: memory the task may use (HBM of its GPUs); a configuration fits when
    M(B) <= budget_bytes * (1 - margin_frac).
    """

    def __init__(
        self,
        k0_bytes: float,
        k1_bytes_per_token: float,
        budget_bytes: float,
        margin_frac: float = 0.1,
    ) -> None:
        if not k1_bytes_per_token > 0:
            raise ValueError(f"k1_bytes_per_token={k1_bytes_per_token!r}: must be > 0")
        if not budget_bytes > 0:
            raise ValueError(f"budget_bytes={budget_bytes!r}: must be > 0")
        if not 0 <= margin_frac < 1:
            raise ValueError(f"margin_frac={margin_frac!r}: must be in [0, 1)")
        self.k0_bytes = float(k0_bytes)
        self.k1_bytes_per_token = float(k1_bytes_per_token)
        self.budget_bytes = float(budget_bytes)
        self.margin_frac = float(margin_frac)

    def __repr__(self) -> str:
        return (
            f"MemoryModel(k0_bytes={self.k0_bytes:.6g}, k1_bytes_per_token="
            f"{self.k1_bytes_per_token:.6g}, budget_bytes={self.budget_bytes:.6g}, "
            f"margin_frac={self.margin_frac:g})"
        )

    @property
    def usable_bytes(self) -> float:
        """budget_bytes * (1 - margin_frac): the most M(B) may be."""
        return self.budget_bytes * (1 - self.margin_frac)

    def predict(self, total_batch: int, seq_len: int, extra_bytes: float = 0.0) -> float:
        """Predicted peak bytes for total_batch samples of seq_len tokens in one step, plus
        extra_bytes that the fit does not see (e.g. the states of more adapters than it had)."""
        return self.k0_bytes + self.k1_bytes_per_token * total_batch * seq_len + extra_bytes

    def fits(self, total_batch: int, seq_len: int, extra_bytes: float = 0.0) -> bool:
        """True when predict(total_batch, seq_len, extra_bytes) <= budget * (1 - margin)."""
        return self.predict(total_batch, seq_len, extra_bytes) <= self.usable_bytes

    def max_total_batch(self, seq_len: int) -> int:
        """Largest B (samples, >= 0) with fits(B, seq_len); 0 if even k0 does not fit."""
        b = int(max(0.0, (self.usable_bytes - self.k0_bytes) / (self.k1_bytes_per_token * seq_len)))
        # The division may be off by one ulp; settle on the exact predicate.
        while b > 0 and not self.fits(b, seq_len):
            b -= 1
        while self.fits(b + 1, seq_len):
            b += 1
        return b

    def jobs_fit(self, seq_len: int) -> Callable[[Sequence[JobConfig]], bool]:
        """A `fits(jobs)` predicate for TaskTuner: sum of batch sizes fits at seq_len."""
        return lambda jobs: self.fits(sum(j.batch_size for j in jobs), seq_len)

    @classmethod
    def fit(
        cls,
        points: Iterable[tuple[int, int, int, float]],
        budget_bytes: float,
        margin_frac: float = 0.1,
    ) -> MemoryModel:
        """Least-squares k0, k1 from profiled points.

        points: (n_adapters, batch_per_adapter, seq_len, peak_bytes) each, e.g. from the
        paper's profile (binary search of the largest single-adapter batch, then a sweep
        over N adapters x b per adapter). The regressor is tokens = n * b * L.
        Raises ValueError with fewer than 2 distinct token counts or a fitted k1 <= 0
        (memory that does not grow with tokens means the profile is broken).
        """
        pts = [(float(n * b * L), float(peak)) for n, b, L, peak in points]
        x = np.array([p[0] for p in pts])
        y = np.array([p[1] for p in pts])
        if len(set(x.tolist())) < 2:
            raise ValueError(
                f"need >= 2 distinct token counts n*b*L, got {sorted(set(x.tolist()))}"
            )
        a = np.stack([np.ones_like(x), x], axis=1)
        (k0, k1), *_ = np.linalg.lstsq(a, y, rcond=None)
        if not k1 > 0:
            raise ValueError(
                f"fitted k1_bytes_per_token={k1:.6g} <= 0: profile points are inconsistent"
            )
        return cls(float(k0), float(k1), budget_bytes, margin_frac)
