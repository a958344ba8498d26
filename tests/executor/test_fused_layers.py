"""The fused RMSNorm / SwiGLU backbone (alto.executor.fused_layers) trains exactly like HF's
eager layers: per-adapter losses and LoRA gradients of one joint step agree, for Llama, Qwen2
and Mistral shapes with GQA. The Triton kernels run on CPU under the interpreter here (the
fused LoRA impl too); tests/kernels/test_norm_act.py checks them op by op."""

from __future__ import annotations

import copy

import pytest
import torch

from alto.executor.fused_layers import set_fused_ops
from alto.executor.lora_model import MultiLoraModel
from alto.models import LORA_TARGETS, ModelShape
from alto.policy.types import JobConfig

tf = pytest.importorskip("transformers")


def _tiny(family: str, layers: int = 2):
    from alto.executor.models import hf_config_for

    shape = ModelShape(f"{family}-tiny", family, layers, 64, 128, 4, 2, 260, family == "qwen2", 1)
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(hf_config_for(shape)).eval().requires_grad_(False)


def _joint_step(mlm: MultiLoraModel, ids: torch.Tensor):
    jobs = [JobConfig(f"t/{i}", "t", 1e-3, r, 1, 2.0 * r, 10) for i, r in enumerate((4, 8))]
    ads = [mlm.new_adapter(j, seed=i) for i, j in enumerate(jobs)]
    g = torch.Generator().manual_seed(3)
    for ad in ads:  # non-zero B so that every factor gets a gradient
        for _, b in ad.params.values():
            b.data.copy_(torch.randn(b.shape, generator=g) * 0.05)
    loss, _ = mlm.per_adapter_loss(ads, ids[:, :-1], ids[:, 1:], torch.ones(3, ids.shape[1] - 1), [1, 2])
    loss.sum().backward()
    mlm.clear()
    return loss.detach(), [p.grad for ad in ads for p in ad.parameters()]


@pytest.mark.parametrize("family,ckpt,rebuilt", [
    ("llama", False, 12), ("qwen2", False, 12), ("mistral", False, 12),
    ("llama", 0.5, 6),  # layer 0 checkpointed: its activations are checkpointing's business
])
def test_fused_backbone_matches_eager(family, ckpt, rebuilt, monkeypatch):
    """Same losses and LoRA gradients; per non-checkpointed layer 6 saved tensors become
    recipes (norm outputs saved by q, k, v, gate, up; silu(gate)·up saved by down_proj)."""
    from alto.executor import fused_layers

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    packs = []
    real_pack = fused_layers._pack
    monkeypatch.setattr(fused_layers, "_pack", lambda t: packs.append(real_pack(t)) or packs[-1])
    model = _tiny(family)
    ids = torch.randint(0, 250, (3, 11), generator=torch.Generator().manual_seed(1))
    fused = MultiLoraModel(copy.deepcopy(model), LORA_TARGETS, impl="fused", fused_ops=True,
                           gradient_checkpointing=ckpt)
    assert fused.fused_op_counts == {"rmsnorm": 2 * 2 + 1, "swiglu": 2}
    eager = MultiLoraModel(copy.deepcopy(model), LORA_TARGETS, impl="fused", fused_ops=False)
    assert eager.fused_op_counts == {"rmsnorm": 0, "swiglu": 0}
    builds = []
    real_get = fused_layers._Recipe.get
    monkeypatch.setattr(fused_layers._Recipe, "get",
                        lambda self: builds.append(self.built is None) or real_get(self))
    lf, gf = _joint_step(fused, ids)
    assert sum(isinstance(p, fused_layers._Recompute) for p in packs) == rebuilt
    assert sum(builds) == rebuilt // 2  # each output rebuilt once (norm1 for q/k/v, norm2 for gate/up, h)
    le, ge = _joint_step(eager, ids)
    torch.testing.assert_close(lf, le, rtol=1e-5, atol=1e-6)
    for a, b in zip(gf, ge, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_fused_ops_follow_impl_and_undo():
    """On only with the fused impl; switching impl or remove() restores HF's forwards."""
    model = _tiny("llama")
    mlm = MultiLoraModel(model, LORA_TARGETS, impl="fused")
    norm, mlp = model.model.layers[0].input_layernorm, model.model.layers[0].mlp
    assert "forward" in vars(norm) and "forward" in vars(mlp)
    mlm.use_impl("reference")
    assert "forward" not in vars(norm) and "forward" not in vars(mlp)
    assert mlm.fused_op_counts == {"rmsnorm": 0, "swiglu": 0}
    mlm.use_impl("fused")
    mlm.remove()
    assert "forward" not in vars(norm) and "forward" not in vars(mlp)


def test_backbone_is_frozen():
    """A bare from_config model gets no base-weight gradients once wrapped (it used to in the
    benchmark: embedding, norm and lm_head gradients on every step)."""
    import transformers as tfm

    from alto.executor.models import hf_config_for
    from alto.models import get_model

    model = tfm.AutoModelForCausalLM.from_config(hf_config_for(get_model("llama-tiny")))
    assert all(p.requires_grad for p in model.parameters())
    mlm = MultiLoraModel(model, LORA_TARGETS)
    assert not any(p.requires_grad for p in model.parameters())
    ad = mlm.new_adapter(JobConfig("t/0", "t", 1e-3, 4, 1, 8.0, 10), seed=0)
    ids = torch.randint(0, 200, (1, 9))
    loss, _ = mlm.per_adapter_loss([ad], ids[:, :-1], ids[:, 1:], torch.ones(1, 8), [1])
    loss.sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in ad.parameters())


def test_trainable_norm_stays_eager():
    model = _tiny("llama")
    model.model.norm.weight.requires_grad_(True)
    counts = set_fused_ops(model, True)
    assert counts == {"rmsnorm": 2 * 2, "swiglu": 2}
    assert "forward" not in vars(model.model.norm)


def test_only_known_classes_are_patched():
    """Gemma's RMSNorm scales by (1 + w); other *MLP classes add multipliers or sub-norms:
    classes outside the Llama/Qwen2/Mistral list keep their own forward."""
    from torch import nn

    class GemmaRMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(8), requires_grad=False)
            self.variance_epsilon = 1e-6

    class FalconH1MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)
            self.act_fn = nn.SiLU()

    box = nn.ModuleList([GemmaRMSNorm(), FalconH1MLP()])
    assert set_fused_ops(box, True) == {"rmsnorm": 0, "swiglu": 0}
    assert all("forward" not in vars(m) for m in box)


def test_deepcopy_of_patched_model_uses_its_own_weights():
    model = _tiny("llama")
    set_fused_ops(model, True)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.model.norm.weight.mul_(2.0)
    x = torch.randn(2, 3, 64)
    from kernels.norm_act import rms_norm_reference

    norm = twin.model.norm
    torch.testing.assert_close(norm(x), rms_norm_reference(x, norm.weight, norm.variance_epsilon))
    assert not torch.allclose(twin.model.norm(x), model.model.norm(x))


def test_in_place_change_of_a_saved_tensor_still_raises():
    """Saved-tensor hooks turn off autograd's version check; lora_saves' hooks redo it."""
    from alto.executor import fused_layers

    x, w = torch.randn(5, requires_grad=True), torch.randn(5)
    with fused_layers.recompute_cheap_activations():
        keep = torch.ones(3)
        fused_layers._register(keep, lambda: torch.ones(3))  # a non-empty registry
        with fused_layers.lora_saves():
            y = x * w  # saves w for x's gradient
    w.add_(1.0)
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation \(version 0 when saved"):
        y.sum().backward()


def _live_tensors() -> int:
    import gc

    gc.collect()
    return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


def test_forward_without_backward_leaks_nothing(monkeypatch):
    """A step whose adapters are all poisoned never runs backward; its graph must still be
    freed (model-wide saved-tensor hooks made ops that save their own output, e.g. exp in
    attention's softmax, form cycles through C++ that no collector frees)."""
    from alto.executor.micro_steps import loss_and_backward

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    mlm = MultiLoraModel(_tiny("llama"), LORA_TARGETS, impl="fused")
    ads = [mlm.new_adapter(JobConfig(f"t/{i}", "t", 1e-3, 4, 1, 8.0, 10), seed=i) for i in range(2)]
    ids = torch.randint(0, 250, (2, 11), generator=torch.Generator().manual_seed(1))

    def step():
        loss_and_backward(mlm, ads, ids[:, :-1], ids[:, 1:], torch.ones(2, 10), [1, 1], poison=[True, True])

    step()
    before = _live_tensors()
    for _ in range(3):
        step()
    assert _live_tensors() - before <= 2


def test_factor_table_keeps_buffers_alive_and_refuses_moved_ones(monkeypatch):
    """The kernels reach the adapters' buffers by address only. An adapter dropped between
    forward and backward (a caller's temporary) must not be freed under the scatter: the
    table holds its buffers, and the other adapter's gradient is what it is when all are
    kept. An adapter whose buffers move in between (Adapter.to) is an error, not a silently
    lost gradient."""
    import gc

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    mlm = MultiLoraModel(_tiny("llama"), LORA_TARGETS, impl="fused")
    ids = torch.randint(0, 250, (2, 9), generator=torch.Generator().manual_seed(2))
    job = lambda i, r: JobConfig(f"t/{i}", "t", 1e-3, r, 1, 2.0 * r, 10)
    keep = mlm.new_adapter(job(0, 4), seed=0)
    for _, b in keep.params.values():
        b.data.fill_(0.01)

    def forward(other):
        loss, _ = mlm.per_adapter_loss([keep, other], ids[:, :-1], ids[:, 1:], torch.ones(2, 8), [1, 1])
        mlm.clear()
        return loss

    other = mlm.new_adapter(job(1, 8), seed=1)
    forward(other).sum().backward()
    want = keep.flat_grad.clone()
    keep.zero_grad()
    loss = forward(mlm.new_adapter(job(1, 8), seed=1))  # the temporary is dropped here
    gc.collect()
    loss.sum().backward()
    assert torch.equal(keep.flat_grad, want)
    keep.zero_grad()
    loss = forward(other)
    other.master.data = other.master.data.clone()  # what Adapter.to does to a real move
    other._bind_views()
    with pytest.raises(RuntimeError, match="moved between this step's forward and backward"):
        loss.sum().backward()
