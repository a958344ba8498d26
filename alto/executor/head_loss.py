"""Per-token cross-entropy through the frozen LM head, with dL/dh computed in the forward pass.

For scored hidden states h [n, d], head weight W [V, d] and targets t [n]::

    loss[j] = logsumexp(h_j Wᵀ) - (h_j Wᵀ)[t_j]
    dloss[j]/dh_j = (softmax(h_j Wᵀ) - onehot(t_j)) W

Chunk by chunk of tokens, the forward computes the fp32 logits once, the loss, and already the
gradient w.r.t. h (one more GEMM), then drops the logits; backward only scales the stored
[n, d] gradient by each token's upstream scalar. Against checkpointed chunks (logits GEMM in
forward, again in backward, then the dh GEMM) that is one GEMM of [n, d] x [d, V] less per step
(~1/3 of the head's time; ~44 ms of a 16k-token Llama-3.1-8B step, docs/executor.md) and no
fp32 logits alive when backward starts. Roundings follow HF's path: bf16 logits -> fp32 softmax,
(p - onehot) cast to h's dtype for the GEMM.
"""

from __future__ import annotations

import torch


class _HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk):
        n = h.shape[0]
        loss = torch.empty(n, device=h.device, dtype=torch.float32)
        dh = torch.empty_like(h)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            logits = (h[s:e] @ weight.t()).float()  # [c, V] fp32
            lse = torch.logsumexp(logits, -1)
            tgt = targets[s:e]
            loss[s:e] = lse - logits.gather(1, tgt[:, None]).squeeze(1)
            probs = logits.sub_(lse[:, None]).exp_()  # in place: softmax
            probs[torch.arange(e - s, device=h.device), tgt] -= 1.0
            dh[s:e] = probs.to(h.dtype) @ weight
        ctx.save_for_backward(dh)
        return loss

    @staticmethod
    def backward(ctx, g):
        (dh,) = ctx.saved_tensors
        return (dh.float() * g[:, None]).to(dh.dtype), None, None, None


def head_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       chunk: int = 4096) -> torch.Tensor:
    """loss [n] fp32 of logits = h @ weight.T against targets [n] (int64), differentiable in h
    only (the head is frozen). h [n, d]; weight [V, d], same dtype as h. Without grad (eval) it
    only computes the losses, chunk by chunk."""
    if weight.requires_grad:
        raise ValueError("head_cross_entropy needs a frozen head weight (no weight gradient)")
    if h.requires_grad and torch.is_grad_enabled():
        return _HeadCrossEntropy.apply(h, weight, targets, chunk)
    out = [torch.nn.functional.cross_entropy((h[s:s + chunk] @ weight.t()).float(), targets[s:s + chunk],
                                             reduction="none") for s in range(0, h.shape[0], chunk)]
    return torch.cat(out) if out else h.new_zeros(0, dtype=torch.float32)
