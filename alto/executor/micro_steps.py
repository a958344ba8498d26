"""One optimizer step of many adapters, run as micro-steps of a bounded token count.

A step's rows (adapter-major: rows[i] samples of L tokens for adapter i) are cut into
consecutive micro-steps of at most ``max_tokens`` tokens (whole rows; a cut may fall inside an
adapter's rows). Each micro-step runs forward and backward of

    Σ_i  (sum of adapter i's token losses in this micro-step) / (adapter i's scored tokens in the step)

so the accumulated gradient of every adapter equals that of one step over all rows (up to
floating-point summation order), and the returned losses are the per-adapter means over the
whole step. Activation memory is that of one micro-step: a step of 64 adapters x 1,024
tokens no longer needs activation recompute to fit (docs/executor.md). Adapters whose loss
is not finite get no gradient from the micro-steps where it is not (the caller then skips
their optimizer step: divergence).
"""

from __future__ import annotations

import gc
from collections.abc import Sequence

import torch


def micro_step_rows(rows: Sequence[int], start: int, end: int) -> list[tuple[int, int]]:
    """(adapter index, row count) of the adapters with rows in [start, end), in order."""
    out, o = [], 0
    for i, r in enumerate(rows):
        n = min(end, o + r) - max(start, o)
        if n > 0:
            out.append((i, n))
        o += r
    return out


def loss_and_backward(mlm, adapters: Sequence, inputs: torch.Tensor, targets: torch.Tensor,
                      mask: torch.Tensor, rows: Sequence[int], max_tokens: int | None = None,
                      poison: Sequence[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + backward of one step of ``adapters`` on ``mlm`` (a MultiLoraModel), in
    micro-steps of at most ``max_tokens`` tokens (None: one micro-step). inputs/targets/mask
    [R, L]; rows[i]: rows of adapter i. ``poison`` (the tests' fault hooks): adapters whose
    loss is reported as NaN and that get no gradient. Returns (mean loss [N] fp32 detached, scored tokens [N])."""
    R, L = inputs.shape
    n = len(adapters)
    if len(rows) != n or sum(rows) != R:
        raise ValueError(f"{n} adapters, rows {list(rows)} (sum must be R={R})")
    dev = inputs.device
    owner = torch.repeat_interleave(torch.arange(n, device=dev), torch.tensor(list(rows), device=dev))
    counts = torch.zeros(n, device=dev).index_add(0, owner, mask.sum(1).to(torch.float32))
    bad = torch.zeros(n, dtype=torch.bool, device=dev) if poison is None else torch.tensor(list(poison), device=dev)
    per = R if not max_tokens else max(1, max_tokens // L)
    total = torch.zeros(n, device=dev)
    for s in range(0, R, per):
        e = min(R, s + per)
        if not bool(mask[s:e].any()):
            continue  # no scored token: nothing to learn from these rows
        part = micro_step_rows(rows, s, e)
        idx = torch.tensor([i for i, _ in part], device=dev)
        try:
            sums, _ = mlm.loss_sums([adapters[i] for i, _ in part], inputs[s:e], targets[s:e], mask[s:e],
                                    [c for _, c in part])
            losses = sums / counts[idx].clamp(min=1)
            found = losses.detach()
            ok = torch.isfinite(found) & ~bad[idx]
            if losses.requires_grad and bool(ok.any()):
                losses[ok].sum().backward()
            elif losses.requires_grad:
                # no backward frees this graph; under saved-tensor hooks (fused_layers) its saved
                # outputs form reference cycles, which only the cycle collector frees
                del sums, losses
                gc.collect()
        finally:
            mlm.clear()
        total.index_add_(0, idx, found)
    return total.masked_fill(bad, float("nan")), counts
