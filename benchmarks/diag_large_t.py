"""Which kernel fails at large token counts (GPU diagnostic, session 19).

    CUDA_LAUNCH_BLOCKING=1 python3 benchmarks/diag_large_t.py model --adapters 5,20,5 [--train-first 15]
    CUDA_LAUNCH_BLOCKING=1 python3 benchmarks/diag_large_t.py ops --tokens 245760

`model`: one no-grad evaluation forward of random-init SmolLM2-135M (the fused executor) over
ADAPTERS x 64 rows x 191 tokens, as `alto run`'s evaluation packs them. `ops`: every SmolLM2
LoRA shape through kernels.fused_multi_lora (forward and backward), RMSNorm and SiLU-mul at
TOKENS tokens, each checked against its fp32 reference. Run each in its own process: an
illegal memory access ends the CUDA context.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def model_forward(counts: list[int], rows: int = 64, L: int = 191, train_first: int = 0) -> None:
    from alto.executor.lora_model import MultiLoraModel
    from alto.executor.models import random_model
    from alto.policy.types import JobConfig

    dev = torch.device("cuda")
    m = random_model("smollm2-135m", torch.bfloat16, dev, 0)
    mlm = MultiLoraModel(m, ["q", "k", "v", "o", "gate", "up", "down"], impl="fused", fused_ops=True)
    ads = [mlm.new_adapter(JobConfig(f"d/{i}", "d", 1e-4, (16, 32, 64)[i % 3], 1, 32.0, 100), seed=i)
           for i in range(max(counts + [train_first]))]
    if train_first:  # one training step of train_first adapters x 8 rows, as the search's warmup
        from alto.executor.profile import train_step

        print("train step", train_step(mlm, ads[:train_first], [8] * train_first, L, 256), flush=True)
    for n in counts:
        ids = torch.randint(0, 256, (n * rows, L + 1), device=dev)
        mask = torch.ones(n * rows, L, device=dev)
        with torch.no_grad():
            loss, cnt = mlm.per_adapter_loss(ads[:n], ids[:, :-1], ids[:, 1:], mask, [rows] * n)
            mlm.clear()
        print(f"model forward queued: {n} adapters, T={n * rows * L}", flush=True)
    torch.cuda.synchronize()
    print(f"model OK: {counts}, losses {loss[:3].tolist()}")


def ops(T: int, n: int = 20) -> None:
    import kernels
    from kernels.norm_act import rms_norm, rms_norm_reference, silu_mul, silu_mul_reference

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    seg = [T // n] * n
    seg[-1] += T - sum(seg)
    ranks = [(16, 32, 64)[i % 3] for i in range(n)]
    for d_in, d_out in ((576, 576), (576, 192), (576, 1536), (1536, 576)):
        x = torch.randn(T, d_in, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
        w = torch.randn(d_out, d_in, device=dev, dtype=torch.bfloat16, generator=g) / d_in**0.5
        a = (torch.randn(n, 64, d_in, device=dev, dtype=torch.bfloat16, generator=g) / d_in**0.5).requires_grad_()
        b = (torch.randn(n, d_out, 64, device=dev, dtype=torch.bfloat16, generator=g) / 8).requires_grad_()
        sc = [2.0] * n
        y = kernels.fused_multi_lora(x, w, a, b, seg, ranks, sc)
        y.float().square().mean().backward()
        torch.cuda.synchronize()
        ref = kernels.fused_multi_lora_reference(x.detach(), w, a.detach(), b.detach(), seg, ranks, sc)
        err = (y.float() - ref.float()).abs().max().item() / ref.float().abs().max().item()
        print(f"lora {d_in}x{d_out} T={T}: fwd+bwd ran, forward max rel err {err:.2e}", flush=True)
    for d in (576, 1536):
        x = torch.randn(T, d, device=dev, dtype=torch.bfloat16, generator=g)
        wn = torch.randn(d, device=dev, dtype=torch.bfloat16, generator=g)
        e = (rms_norm(x, wn, 1e-5).float() - rms_norm_reference(x, wn, 1e-5).float()).abs().max().item()
        u = torch.randn(T, d, device=dev, dtype=torch.bfloat16, generator=g)
        e2 = (silu_mul(x, u).float() - silu_mul_reference(x, u).float()).abs().max().item()
        torch.cuda.synchronize()
        print(f"norm/act d={d} T={T}: max abs err rms {e:.2e}, silu_mul {e2:.2e}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["model", "ops"])
    ap.add_argument("--adapters", default="20", help="adapters per forward, comma-separated forwards")
    ap.add_argument("--train-first", type=int, default=0, help="a training step of this many adapters first")
    ap.add_argument("--tokens", type=int, default=245760)
    args = ap.parse_args()
    if args.what == "model":
        model_forward([int(v) for v in args.adapters.split(",")], train_first=args.train_first)
    else:
        ops(args.tokens)


if __name__ == "__main__":
    main()
