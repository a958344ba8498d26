"""Measured step costs and memory-fit points on the current device (`alto profile`).

Rows go to a CSV in the simulator's cost-table format (sim/cost_model.py):
    gpu, model, kernel, n_adapters, tokens_per_step, mean_rank, step_time_s, source, date
`kernel` names the LoRA path: fused (kernels.fused_multi_lora), loop (eager per-adapter
loop), single (one adapter, n_adapters=1): the simulator's kernels that one process can time.
`source` is "measured: <gpu> <date> alto-profile torch<ver> batch/adapter=<b>". A step is fwd + bwd + every
adapter's AdamW step on synthetic tokens (uniform random ids, every token scored).

Memory points (n_adapters, batch_per_adapter, seq_len, peak_bytes) fit
alto.policy.memory.MemoryModel (peak = torch.cuda.max_memory_reserved over one step).
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Sequence

import torch

from alto.executor.lora_model import MultiLoraModel
from alto.executor.micro_steps import loss_and_backward
from alto.policy.types import JobConfig

PROFILE_COLS = ["gpu", "model", "kernel", "n_adapters", "tokens_per_step", "mean_rank",
                "step_time_s", "source", "date"]


def make_adapters(mlm: MultiLoraModel, ranks: Sequence[int], batch: int, lr: float = 1e-4) -> list:
    return [mlm.new_adapter(JobConfig(f"p/{i}", "p", lr, r, batch, 2.0 * r, 10**9), seed=i)
            for i, r in enumerate(ranks)]


def train_step(mlm: MultiLoraModel, adapters: list, rows: Sequence[int], L: int, vocab: int,
               gen: torch.Generator | None = None, micro_step_tokens: int | None = None) -> float:
    """One full multi-adapter step on random tokens (in micro-steps of at most
    micro_step_tokens tokens when given); returns the summed loss (host sync)."""
    dev = mlm.device
    R = sum(rows)
    ids = torch.randint(0, vocab, (R, L + 1), generator=gen).to(dev)
    mask = torch.ones(R, L, device=dev)
    losses, _ = loss_and_backward(mlm, adapters, ids[:, :-1], ids[:, 1:], mask, rows, micro_step_tokens)
    for a in adapters:
        a.step()
        a.zero_grad()
    return float(losses.detach().sum())


def time_step(mlm: MultiLoraModel, adapters: list, rows: Sequence[int], L: int, vocab: int,
              warmup: int = 2, iters: int = 5, micro_step_tokens: int | None = None) -> tuple[float, float, float]:
    """(median, p20, p80) seconds per step; CUDA events on GPU, perf_counter on CPU."""
    import time

    for _ in range(warmup):
        train_step(mlm, adapters, rows, L, vocab, micro_step_tokens=micro_step_tokens)
    ts = []
    for _ in range(iters):
        if mlm.device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            train_step(mlm, adapters, rows, L, vocab, micro_step_tokens=micro_step_tokens)
            e1.record()
            torch.cuda.synchronize()
            ts.append(e0.elapsed_time(e1) / 1e3)
        else:
            t = time.perf_counter()
            train_step(mlm, adapters, rows, L, vocab, micro_step_tokens=micro_step_tokens)
            ts.append(time.perf_counter() - t)
    ts.sort()
    q = lambda f: ts[min(len(ts) - 1, int(f * len(ts)))]
    return statistics.median(ts), q(0.2), q(0.8)


def memory_points(mlm: MultiLoraModel, L: int, rank: int, vocab: int,
                  sweep: Sequence[tuple[int, int]] = ((1, 1), (1, 2), (1, 4), (4, 2), (8, 2))) -> list:
    """(n, b, L, peak_reserved_bytes) after one step of n adapters x b rows (CUDA only).

    A point that OOMs is skipped (an 8B model at L=1024 does not fit 16k tokens without
    recompute); the sweep stops at the first OOM since larger points would OOM too."""
    pts = []
    for n, b in sorted(sweep, key=lambda nb: nb[0] * nb[1]):
        ads = make_adapters(mlm, [rank] * n, b)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            train_step(mlm, ads, [b] * n, L, vocab)
        except torch.cuda.OutOfMemoryError:
            mlm.clear()
            del ads
            break
        torch.cuda.synchronize()
        pts.append((n, b, L, float(torch.cuda.max_memory_reserved())))
        del ads
    torch.cuda.empty_cache()
    if len({n * b for n, b, _, _ in pts}) < 2:
        raise RuntimeError(f"memory profile: fewer than 2 points fit at seq_len {L} ({pts}); "
                           "set memory.max_total_batch or enable gradient checkpointing")
    return pts


def fit_memory(mlm: MultiLoraModel, L: int, rank: int, budget_gb: float | None = None,
               margin_frac: float = 0.1, vocab: int = 256):
    """(MemoryModel, profile points) on this device: M(B) of the base and the activations,
    fitted on the profiled peaks minus the profiled adapters' own states (admission and the
    simulator add those per adapter). The budget defaults to the GPU's total memory."""
    from alto.policy.memory import MemoryModel, without_adapter_states

    budget = budget_gb * 1e9 if budget_gb else torch.cuda.get_device_properties(mlm.device).total_memory
    pts = memory_points(mlm, L, rank, vocab)
    fit = MemoryModel.fit(without_adapter_states(pts, mlm.adapter_state_bytes(rank)), budget, margin_frac)
    return fit, pts


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        n = torch.cuda.get_device_name(dev)
        return "H200" if "H200" in n else ("H100" if "H100" in n else n.replace(" ", "_"))
    return "cpu"


def profile_rows(mlm: MultiLoraModel, model_name: str, kernel: str, n_adapters: Sequence[int],
                 batches: Sequence[int], L: int, ranks: Sequence[int], vocab: int,
                 iters: int = 5, log=None) -> list[dict]:
    """Measured rows for every (n, batch per adapter); ranks cycle over the adapters."""
    mlm.use_impl({"fused": "fused", "loop": "loop", "single": "reference"}[kernel])
    dev = mlm.device
    today = dt.date.today().isoformat()
    src = f"measured: {device_name(dev)} {today} alto-profile torch{torch.__version__} batch/adapter="
    rows = []
    for n in n_adapters:
        for b in batches:
            rk = [ranks[i % len(ranks)] for i in range(n)]
            ads = make_adapters(mlm, rk, b)
            try:
                med, p20, p80 = time_step(mlm, ads, [b] * n, L, vocab, iters=iters)
            except torch.cuda.OutOfMemoryError:
                mlm.clear()
                del ads
                torch.cuda.empty_cache()
                if log:
                    print(f"  {kernel} n={n} b={b}: OOM", file=log, flush=True)
                continue
            rows.append({"gpu": device_name(dev), "model": model_name, "kernel": kernel, "n_adapters": n,
                         "tokens_per_step": n * b * L, "mean_rank": sum(rk) / n, "step_time_s": f"{med:.6g}",
                         "source": f"{src}{b}", "date": today,
                         "_p20": p20, "_p80": p80, "_batch": b})
            if log:
                print(f"  {kernel} n={n} b={b} L={L}: {med * 1e3:.1f} ms/step, "
                      f"{n * b * L / med:,.0f} tok/s", file=log, flush=True)
            del ads
    return rows
