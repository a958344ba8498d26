"""N adapters trained together == N independent single-adapter PEFT runs (fp32).

Together: one MultiLoraModel, one token batch per step holding every adapter's rows,
one backward of the summed per-adapter losses, one AdamW per adapter. Alone: HF PEFT
LoRA on a copy of the same base, the same initial weights, the same data order.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from alto.executor.data import ByteTokenizer, SampleStream, collate, encode_sample
from alto.executor.lora_model import HF_NAMES, MultiLoraModel
from alto.models import LORA_TARGETS
from alto.policy.types import JobConfig

peft = pytest.importorskip("peft")

STEPS = 3


def _samples(n: int, seed: int) -> list:
    r = random.Random(seed)
    tok = ByteTokenizer()
    out = []
    for _ in range(n):  # varied lengths: rows of one step get right-padded differently
        p = "".join(r.choice("abcdef ") for _ in range(r.randint(1, 9)))
        c = "".join(r.choice("xyz") for _ in range(r.randint(1, 5)))
        out.append(encode_sample(tok, (p, c), 16))
    return out


def _jobs(batches):
    specs = [(1e-2, 2), (3e-3, 4), (5e-3, 8)]  # mixed lr and rank
    return [JobConfig(f"t/{i}", "t", lr, r, b, 2.0 * r, 100) for i, ((lr, r), b) in enumerate(zip(specs, batches, strict=False))]


def _masked_ce(logits, tb):
    m = tb.mask.bool()
    return torch.nn.functional.cross_entropy(logits[m].float(), tb.targets[m])


@pytest.mark.parametrize("impl,batches", [
    ("reference", (1, 2, 3)),  # unequal segments: per-adapter loop
    ("reference", (2, 2, 2)),  # equal segments: batched matmuls over padded ranks
    ("loop", (2, 2, 2)),
    ("fused", (3, 1, 2)),  # kernels.fused_multi_lora (its CPU path)
    # the Triton kernels under the interpreter, factors stacked and their gradients added by
    # kernels.factor_stack (FactorTable) into the adapters' flat buffers
    ("fused-interpret", (3, 1, 2)),
])
def test_joint_training_matches_independent_peft(backbone, impl, batches, monkeypatch):
    model, tok, _ = backbone
    interpreted = impl == "fused-interpret"
    if interpreted:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        impl = "fused"
    data = _samples(24, 1)
    jobs = _jobs(batches)
    mlm = MultiLoraModel(copy.deepcopy(model), LORA_TARGETS, impl=impl)
    ads = [mlm.new_adapter(j, seed=i) for i, j in enumerate(jobs)]
    g = torch.Generator().manual_seed(5)
    for ad in ads:  # non-zero B so that A's gradient is non-zero from step 1
        for _, b in ad.params.values():
            b.data.copy_(torch.randn(b.shape, generator=g) * 0.05)
    init = [ad.state_tensors() for ad in ads]
    streams = [SampleStream(len(data), seed=i) for i in range(len(jobs))]
    order = [[s.take(j.batch_size) for _ in range(STEPS)] for s, j in zip(streams, jobs, strict=False)]

    joint_losses = []
    for t in range(STEPS):
        tb = collate([[data[k] for k in order[i][t]] for i in range(len(jobs))], tok.pad_id)
        losses, _ = mlm.per_adapter_loss(ads, tb.inputs, tb.targets, tb.mask, tb.rows)
        assert (mlm.ctx.factors is not None) == interpreted  # the kernels' stacking ran
        losses.sum().backward()
        mlm.clear()
        for ad in ads:
            ad.step()
            ad.zero_grad()
        joint_losses.append(losses.detach().tolist())

    for i, job in enumerate(jobs):
        base = copy.deepcopy(model)
        cfg = peft.LoraConfig(r=job.rank, lora_alpha=job.alpha, lora_dropout=0.0,
                              target_modules=[HF_NAMES[t] for t in LORA_TARGETS])
        pm = peft.get_peft_model(base, cfg)
        peft.set_peft_model_state_dict(pm, {f"base_model.model.{k}": v for k, v in init[i].items()})
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=job.lr, weight_decay=0.0)
        for t in range(STEPS):
            tb = collate([[data[k] for k in order[i][t]]], tok.pad_id)
            loss = _masked_ce(pm(input_ids=tb.inputs).logits, tb)
            loss.backward()
            opt.step()
            opt.zero_grad()
            assert loss.item() == pytest.approx(joint_losses[t][i], rel=1e-5, abs=1e-6), (job.job_id, t)
        ref = peft.get_peft_model_state_dict(pm)
        got = ads[i].state_tensors()
        assert len(ref) == len(got) == 2 * 7 * 2  # 7 modules x 2 layers x (A, B)
        for k, v in got.items():
            # AdamW moves every element by ~lr per step whatever its gradient's size, so a
            # 1e-7 relative difference of a near-zero gradient (different GEMM shapes) can
            # show as ~1e-6..1e-5 absolute: 1e-5 is < 0.3% of one step (lr >= 3e-3).
            torch.testing.assert_close(v, ref[f"base_model.model.{k}"], rtol=1e-4, atol=1e-5)
        assert any(not torch.equal(v, init[i][k]) for k, v in got.items())  # it did train


def test_stack_padded_blocks_equal_naive():
    from alto.executor.lora_model import stack_padded

    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(r, 5, generator=g) for r in (2, 2, 4, 1, 1, 4)]
    naive = torch.stack([torch.nn.functional.pad(w, (0, 0, 0, 4 - w.shape[0])) for w in ws])
    assert torch.equal(stack_padded(ws, 0, 4, torch.float32), naive)
    bs = [w.T.contiguous() for w in ws]  # B factors: rank on dim 1
    naive_b = torch.stack([torch.nn.functional.pad(b, (0, 4 - b.shape[1])) for b in bs])
    assert torch.equal(stack_padded(bs, 1, 4, torch.float32), naive_b)


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("ranks", [(2, 2, 4, 1), (4, 4, 4), (1, 4, 1, 2, 2)], ids=["mixed", "equal", "unsorted"])
def test_stack_padded_grads_and_cast_equal_naive(dim, ranks):
    """Forward in bf16 and the fp32 gradients each factor gets equal the naive pad/stack/cast,
    accumulated onto what the gradients held (two backwards)."""
    from alto.executor.lora_model import stack_padded

    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(*((r, 6) if dim == 0 else (6, r)), generator=g).requires_grad_() for r in ranks]
    ref = [w.detach().clone().requires_grad_() for w in ws]
    pad = (lambda w: (0, 0, 0, 4 - w.shape[0])) if dim == 0 else (lambda w: (0, 4 - w.shape[1]))
    for _ in range(2):
        naive = torch.stack([torch.nn.functional.pad(w, pad(w)) for w in ref]).to(torch.bfloat16)
        got = stack_padded(ws, dim, 4, torch.bfloat16)
        assert got.dtype == torch.bfloat16 and torch.equal(got, naive)
        up = torch.randn(got.shape, generator=g).to(torch.bfloat16)
        (got.float() * up.float()).sum().backward()
        (naive.float() * up.float()).sum().backward()
        for w, r in zip(ws, ref, strict=True):
            assert w.grad.dtype == torch.float32 and torch.equal(w.grad, r.grad)


def test_rank_runs_group_equal_consecutive_ranks():
    from alto.executor.lora_model import rank_runs

    assert rank_runs((16, 16, 32, 64, 64, 64)) == ((0, 2, 16), (2, 3, 32), (3, 6, 64))
    assert rank_runs((8, 4, 8)) == ((0, 1, 8), (1, 2, 4), (2, 3, 8))
    assert rank_runs((5,)) == ((0, 1, 5),)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_families_gqa_joint_step_matches_peft(family):
    """Qwen2 (q/k/v biases) and Mistral shapes with GQA (4 heads, 2 kv heads): one joint step
    of two adapters equals PEFT run alone on each."""
    import transformers as tf

    from alto.executor.models import hf_config_for
    from alto.models import ModelShape

    shape = ModelShape(f"{family}-tiny", family, 2, 64, 128, 4, 2, 260, family == "qwen2", 1)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(hf_config_for(shape)).eval().requires_grad_(False)
    if family == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias is not None
    data = _samples(8, 2)
    jobs = _jobs((2, 3))[:2]
    mlm = MultiLoraModel(copy.deepcopy(model), LORA_TARGETS)
    ads = [mlm.new_adapter(j, seed=i) for i, j in enumerate(jobs)]
    for ad in ads:
        for _, b in ad.params.values():
            b.data.normal_(0, 0.05)
    init = [ad.state_tensors() for ad in ads]
    groups = [data[:2], data[2:5]]
    tb = collate(groups, 258)
    losses, _ = mlm.per_adapter_loss(ads, tb.inputs, tb.targets, tb.mask, tb.rows)
    losses.sum().backward()
    mlm.clear()
    for i, job in enumerate(jobs):
        pm = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
            r=job.rank, lora_alpha=job.alpha, lora_dropout=0.0, target_modules=[HF_NAMES[t] for t in LORA_TARGETS]))
        peft.set_peft_model_state_dict(pm, {f"base_model.model.{k}": v for k, v in init[i].items()})
        one = collate([groups[i]], 258)
        loss = _masked_ce(pm(input_ids=one.inputs).logits, one)
        loss.backward()
        assert loss.item() == pytest.approx(losses[i].item(), rel=1e-5)
        grads = {n: p.grad for n, p in pm.named_parameters() if p.requires_grad}
        for name, (a, _) in ads[i].params.items():
            want = grads[f"base_model.model.{name}.lora_A.default.weight"]
            torch.testing.assert_close(a.grad, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("frac,want", [(1.0, [0, 1, 2, 3]), (0.5, [0, 2]), (0.25, [0]), (0.0, [])])
def test_partial_checkpointing_same_grads(frac, want):
    """Checkpointing a fraction of the layers picks them evenly and changes no loss or gradient."""
    import transformers as tf

    from alto.executor.models import hf_config_for
    from alto.models import get_model

    hf = hf_config_for(get_model("llama-tiny"))
    hf.num_hidden_layers = 4
    torch.manual_seed(0)
    base = tf.AutoModelForCausalLM.from_config(hf, dtype=torch.float32)
    ids = torch.randint(0, 200, (2, 9))
    out = {}
    for key, ck in (("off", False), ("on", frac)):
        mlm = MultiLoraModel(copy.deepcopy(base), LORA_TARGETS, gradient_checkpointing=ck)
        assert mlm.checkpointed_layers == (want if key == "on" else [])
        if want and key == "on":
            flags = [layer.gradient_checkpointing for layer in mlm.model.model.layers]
            assert flags == [i in want for i in range(4)]
        ad = mlm.new_adapter(JobConfig("t/0", "t", 1e-3, 4, 2, 8.0, 10), seed=1)
        for _, b in ad.params.values():
            b.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
        loss, _ = mlm.per_adapter_loss([ad], ids[:, :-1], ids[:, 1:], torch.ones(2, 8), [2])
        loss.sum().backward()
        out[key] = (loss.detach(), [p.grad.clone() for p in ad.parameters()])
    torch.testing.assert_close(out["on"][0], out["off"][0])
    for g, r in zip(out["on"][1], out["off"][1], strict=True):
        torch.testing.assert_close(g, r)


def test_reused_backbone_forgets_checkpointing():
    """A task without checkpointing after one with it (same backbone) recomputes nothing."""
    import transformers as tf

    from alto.executor.models import hf_config_for
    from alto.models import get_model

    model = tf.AutoModelForCausalLM.from_config(hf_config_for(get_model("llama-tiny")))
    MultiLoraModel(model, LORA_TARGETS, gradient_checkpointing=1.0).remove()
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    MultiLoraModel(model, LORA_TARGETS, gradient_checkpointing=False)
    assert not any(layer.gradient_checkpointing for layer in model.model.layers)
