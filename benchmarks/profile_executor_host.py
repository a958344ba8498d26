"""Where the wall time of one executor training step goes when the GPU is not the bottleneck.

    python3 benchmarks/profile_executor_host.py [--model smollm2-135m] [--adapters 15,60]
        [--seq-len 256] [--steps 6] [--label TEXT]

A step is the runner's: `micro_steps.loss_and_backward`, `grads_finite`, the losses read
back, then every adapter's AdamW step and zero_grad (alto/executor/runner.py `_step`), on
random tokens, ranks cycling 16 / 32 / 64, batch 1 per adapter, random-init weights.

For each adapter count it reports:
  * wall ms per step (perf_counter, synchronised after each step) and the GPU kernel time of
    one step (torch.profiler, kernel durations summed): where the wall is longer, the GPU
    idles for the difference, waiting on the host;
  * host time by part (cumulative, callees included: the fused op's forward and backward,
    the per-step stacking of the adapters' factors, AdamW, zero_grad, ...) from a cProfile
    of the same steps, so the cost that grows with the number of adapters can be told from
    the per-layer cost. cProfile slows Python down, so the parts add up to more than the wall.
One row per adapter count is appended to benchmarks/results/executor_host.csv. Runs on CPU
too (a smoke test: the reference LoRA path, no kernel column).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import datetime as dt
import os
import pstats
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alto.executor.lora_model import MultiLoraModel, grads_finite  # noqa: E402
from alto.executor.micro_steps import loss_and_backward  # noqa: E402
from alto.executor.models import random_model  # noqa: E402
from alto.executor.profile import device_name, make_adapters  # noqa: E402
from alto.models import LORA_TARGETS  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "executor_host.csv")
COLUMNS = ["date", "device", "torch", "model", "n_adapters", "seq_len", "wall_ms", "gpu_kernel_ms",
           "parts_ms", "label"]

# (part, "file:function" substring): cumulative host time of the named functions, callees
# included, so parts nest (lora_op is inside forward / backward); the first match per
# function wins, and a part adds its functions' times only where none calls another
PARTS = [
    ("step", "profile_executor_host.py:runner_step"),
    ("forward", "lora_model.py:loss_sums"),
    ("backward", "_tensor.py:backward"),
    ("lora_op_fwd", "multi_lora.py:forward"),
    ("lora_op_bwd", "multi_lora.py:backward"),
    ("stack_factors_fwd", "lora_model.py:stacks"),  # FactorTable (stack_padded before it)
    ("stack_factors_fwd", "lora_model.py:stack_padded"),
    ("stack_factors_bwd", "lora_model.py:backward"),
    ("grads_finite", "lora_model.py:grads_finite"),
    ("adamw", "optimizer.py:wrapper"),
    ("zero_grad", "optimizer.py:zero_grad"),
    ("losses_to_host", "{method 'cpu'"),
]


def runner_step(mlm: MultiLoraModel, ads: list, L: int, vocab: int, gen: torch.Generator) -> None:
    """The runner's step (`TaskRunner._step`) minus data loading and bookkeeping."""
    dev = mlm.device
    rows = [1] * len(ads)
    ids = torch.randint(0, vocab, (len(ads), L + 1), generator=gen).to(dev)
    mask = torch.ones(len(ads), L, device=dev)
    losses, _ = loss_and_backward(mlm, ads, ids[:, :-1], ids[:, 1:], mask, rows)
    finite = torch.isfinite(losses) & grads_finite(ads)
    losses.cpu().tolist()
    for a, ok in zip(ads, finite.tolist(), strict=True):
        if ok:
            a.step()
        a.zero_grad()


def part_of(key: tuple) -> str | None:
    filename, _, func = key
    where = f"{filename.replace(os.sep, '/')}:{func}"
    return next((p for p, s in PARTS if s in where), None)


def profile_parts(fn, steps: int) -> dict[str, float]:
    """Cumulative host time per part (ms per step) of ``steps`` calls of fn under cProfile."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fn()
    prof.disable()
    parts: dict[str, float] = collections.defaultdict(float)
    for key, (_, _, _, cum, _) in pstats.Stats(prof).stats.items():
        part = part_of(key)
        if part:
            parts[part] += cum * 1e3 / steps
    return {p: parts[p] for p, _ in PARTS if p in parts}


def wall_ms(fn, steps: int, cuda: bool) -> float:
    """Median wall ms per step, each step synchronised."""
    wall = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        wall.append((time.perf_counter() - t) * 1e3)
    return sorted(wall)[len(wall) // 2]


def kernel_ms(fn) -> float:
    """GPU kernel time of one step: the durations of its kernels summed (torch.profiler), so
    kernels that overlapped on two streams count twice; what the GPU would need if the host
    kept up."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    return sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == cuda) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapters", default="15,60")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    model = random_model(args.model, dtype, dev, seed=0)
    mlm = MultiLoraModel(model, LORA_TARGETS, impl="fused" if cuda else "reference")
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in (int(v) for v in args.adapters.split(",")):
        ads = make_adapters(mlm, [(16, 32, 64)[i % 3] for i in range(n)], 1)

        def step(ads=ads):
            runner_step(mlm, ads, args.seq_len, vocab, gen)

        step()
        step()  # compile, warm caches
        wall = wall_ms(step, args.steps, cuda)
        gpu = kernel_ms(step) if cuda else float("nan")
        parts = profile_parts(step, max(2, args.steps // 2))
        shown = " ".join(f"{k}={v:.1f}" for k, v in parts.items())
        print(f"{args.model} N={n} L={args.seq_len}: wall {wall:.1f} ms/step, GPU kernels {gpu:.1f} ms/step; "
              f"host time under cProfile, callees included (ms/step): {shown}", flush=True)
        rows.append(dict(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                         device=device_name(dev), torch=torch.__version__, model=args.model,
                         n_adapters=n, seq_len=args.seq_len, wall_ms=f"{wall:.2f}", gpu_kernel_ms=f"{gpu:.2f}",
                         parts_ms=shown, label=args.label))
        del ads
    append_results(OUT, COLUMNS, rows)


if __name__ == "__main__":
    main()
