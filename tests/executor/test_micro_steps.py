"""A step run as micro-steps (gradient accumulation over bounded token counts) equals the
step run at once: per-adapter losses and every LoRA gradient, and `alto run` results."""

from __future__ import annotations

import copy
import csv
import io

import pytest
import torch

from alto.executor.lora_model import MultiLoraModel
from alto.executor.micro_steps import loss_and_backward, micro_step_rows
from alto.executor.session import run_config
from alto.models import LORA_TARGETS
from alto.policy.types import JobConfig


def test_micro_step_rows_by_hand():
    rows = [2, 3, 1]  # adapter 0: rows 0-1, adapter 1: rows 2-4, adapter 2: row 5
    assert micro_step_rows(rows, 0, 6) == [(0, 2), (1, 3), (2, 1)]
    assert micro_step_rows(rows, 1, 4) == [(0, 1), (1, 2)]
    assert micro_step_rows(rows, 4, 6) == [(1, 1), (2, 1)]
    assert micro_step_rows([0, 2], 0, 1) == [(1, 1)]


def _step(backbone, max_tokens, poison=None, impl="reference", mask=None):
    model, _, _ = backbone
    mlm = MultiLoraModel(copy.deepcopy(model), LORA_TARGETS, impl=impl)
    jobs = [JobConfig(f"t/{i}", "t", 1e-3, r, b, 2.0 * r, 10) for i, (r, b) in enumerate([(2, 2), (4, 3), (8, 1)])]
    ads = [mlm.new_adapter(j, seed=i) for i, j in enumerate(jobs)]
    g = torch.Generator().manual_seed(4)
    for ad in ads:
        for _, b in ad.params.values():
            b.data.copy_(torch.randn(b.shape, generator=g) * 0.05)
    ids = torch.randint(0, 250, (6, 9), generator=torch.Generator().manual_seed(2))
    if mask is None:
        mask = (torch.rand(6, 8, generator=torch.Generator().manual_seed(3)) > 0.3).float()
    losses, counts = loss_and_backward(mlm, ads, ids[:, :-1], ids[:, 1:], mask, [2, 3, 1], max_tokens, poison)
    return losses, counts, [[p.grad for p in ad.parameters()] for ad in ads]


@pytest.mark.parametrize("max_tokens", [16, 8, 24])  # 2 rows (cuts adapter 1), 1 row, 3 rows
def test_micro_steps_equal_one_step(backbone, max_tokens):
    ref_l, ref_c, ref_g = _step(backbone, None)
    got_l, got_c, got_g = _step(backbone, max_tokens)
    torch.testing.assert_close(got_c, ref_c)
    torch.testing.assert_close(got_l, ref_l, rtol=1e-6, atol=1e-7)
    for ga, gb in zip(got_g, ref_g, strict=True):
        for a, b in zip(ga, gb, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)  # fp32 summation order


def _assert_same(got, ref):
    torch.testing.assert_close(got[1], ref[1])
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=1e-7)
    for ga, gb in zip(got[2], ref[2], strict=True):
        for a, b in zip(ga, gb, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_micro_steps_with_fused_layers(backbone, monkeypatch):
    """Fused LoRA kernels, fused norms/SwiGLU and rebuilt activations (Triton interpreter)
    across micro-steps == the reference impl in one step."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _assert_same(_step(backbone, 16, impl="fused"), _step(backbone, None))


def test_micro_step_without_scored_tokens_is_skipped(backbone):
    mask = torch.ones(6, 8)
    mask[2:4] = 0  # the second 2-row micro-step (inside adapter 1) scores nothing
    _assert_same(_step(backbone, 16, mask=mask), _step(backbone, None, mask=mask))


def test_poisoned_adapter_gets_no_gradient_and_neighbours_are_unchanged(backbone):
    ref_l, _, ref_g = _step(backbone, 16)
    got_l, _, got_g = _step(backbone, 16, poison=[False, True, False])
    assert torch.isnan(got_l[1]) and torch.equal(got_l[[0, 2]], ref_l[[0, 2]])
    assert all(p is None or not p.any() for p in got_g[1])  # zero where it shares a graph
    for i in (0, 2):
        for a, b in zip(got_g[i], ref_g[i], strict=True):
            assert torch.equal(a, b)


def test_run_with_micro_steps_matches(tmp_path, backbone, mkcfg):
    """`run.micro_step_tokens` changes how a step is computed, not what it computes."""
    out = {}
    for key, mst in (("whole", None), ("micro", 16)):
        cfg = mkcfg(task={"search_space": {"lr": [1e-3], "rank": [4, 8], "batch_size": [2]}},
                    run={"log_every": 1000, "micro_step_tokens": mst})
        res = run_config(cfg, tmp_path / key, log=io.StringIO(), backbone=copy.deepcopy(backbone))
        with open(res.out / "jobs.csv") as f:
            out[key] = {r["job_id"]: float(r["best_val_loss"]) for r in csv.DictReader(f)}
    assert out["whole"].keys() == out["micro"].keys() and len(out["whole"]) == 2
    for k, v in out["whole"].items():
        assert out["micro"][k] == pytest.approx(v, rel=1e-5)


def test_bad_micro_step_tokens_rejected(mkcfg):
    from alto.executor.config import ConfigError

    with pytest.raises(ConfigError, match="run.micro_step_tokens"):
        mkcfg(run={"micro_step_tokens": 0})


def test_admission_counts_one_micro_step(tmp_path, backbone, mkcfg):
    """With a memory model that fits 2 rows at once, 3 configs of batch 2 run one at a time;
    with micro-steps of 2 rows they are admitted together."""
    from alto.executor.lora_model import MultiLoraModel
    from alto.executor.outputs import RunWriter
    from alto.executor.runner import TaskRunner

    model, tok, _ = backbone
    active = {}
    for key, mst in (("whole", None), ("micro", "2L")):
        cfg = mkcfg(task={"search_space": {"lr": [1e-3, 2e-3, 3e-3], "rank": [4], "batch_size": [2]}})
        mlm = MultiLoraModel(copy.deepcopy(model), cfg.tasks[0].target_modules)
        w = RunWriter(tmp_path / key, source="test", base_model="x")
        r = TaskRunner(cfg, cfg.tasks[0], 0, mlm, tok, w, mem_fits=lambda rows, L, extra: rows <= 2, log=io.StringIO())
        if mst:
            r.micro_tokens = 2 * r.L
        r.apply(r.tuner.start())
        active[key] = len(r.active)
        w.close()
    assert active == {"whole": 1, "micro": 3}


def test_oom_halves_micro_steps_before_pausing_anyone(tmp_path, backbone, mkcfg, monkeypatch):
    """A "device" that holds 2 rows of activations: the forward of any bigger micro-step runs
    out of memory (raised where a real one would be, in the model's forward). The runner
    halves its micro-steps until they fit; nobody is paused and every job completes."""
    from alto.policy.types import Pause

    real = MultiLoraModel.loss_sums
    trained_rows = []

    def loss_sums(self, adapters, inputs, *rest):
        if torch.is_grad_enabled():
            if inputs.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("fake: more than 2 rows")
            trained_rows.append(inputs.shape[0])
        return real(self, adapters, inputs, *rest)

    monkeypatch.setattr(MultiLoraModel, "loss_sums", loss_sums)
    cfg = mkcfg(task={"search_space": {"lr": [1e-3, 1e-2], "rank": [2, 4], "batch_size": [2]}},
                memory={"max_total_batch": 16}, run={"log_every": 1000, "micro_step_tokens": 1000})
    log = io.StringIO()
    res = run_config(cfg, tmp_path / "out", log=log, backbone=copy.deepcopy(backbone))
    r = res.runners[0]
    with open(res.out / "jobs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(x["exit_reason"] == "completed" and x["samples_trained"] == "16" for x in rows)
    assert not any(isinstance(d, Pause) for d in r.decisions)  # nobody paused: micro-steps shrank
    assert r.micro_tokens // r.L == 2  # halved from 8 rows (the whole step, first clamp) to 2
    assert log.getvalue().count("micro-steps now <=") == 2
    assert sum(trained_rows) == 4 * 16 and max(trained_rows) == 2
