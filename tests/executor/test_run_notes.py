"""What `alto run` says, and writes, when it departs from the config's literal word: a random
base too large to save, and val_samples above the val split."""

from __future__ import annotations

import io
import json

import pytest
import torch

from alto.executor import models
from alto.executor.session import run_config


def test_large_random_base_is_not_saved_and_the_run_says_how_to_rebuild_it(tmp_path, backbone, mkcfg,
                                                                          monkeypatch):
    """base_model/ of a random base of 50M+ parameters held config.json alone, so
    from_pretrained(DIR/base_model) failed, and the run said nothing. (llama-tiny stands in:
    the threshold is lowered below its size.)"""
    peft = pytest.importorskip("peft")
    monkeypatch.setattr(models, "SAVE_WEIGHTS_BELOW", 1)
    log = io.StringIO()
    res = run_config(mkcfg(), tmp_path / "o", log=log, backbone=backbone)
    base = res.out / "base_model"
    assert sorted(p.name for p in base.iterdir()) == ["README.md", "config.json"]
    assert "note: random:llama-tiny has 0M parameters, so its random weights are not saved" in log.getvalue()
    note = (base / "README.md").read_text()
    assert "random_model('llama-tiny', torch.float32, torch.device('cpu'), seed=0)" in note
    # the recipe it gives rebuilds the base the adapters were trained on
    rebuilt = models.random_model("llama-tiny", torch.float32, torch.device("cpu"), seed=0)
    for (k, v), w in zip(rebuilt.state_dict().items(), backbone[0].state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    peft.PeftModel.from_pretrained(rebuilt, str(res.out / "adapters" / "add__lr0.001-r4-b2"))


def test_val_samples_above_the_split_is_said_and_recorded_as_applied(tmp_path, backbone, mkcfg):
    """val[:val_samples] clamped silently, and run.json recorded the number asked for."""
    log = io.StringIO()
    res = run_config(mkcfg(task={"val_samples": 100}), tmp_path / "o", log=log, backbone=backbone)
    assert "[add] val_samples: 100 asked, the val split has 4" in log.getvalue()
    assert json.loads((res.out / "run.json").read_text())["tasks"][0]["val_samples"] == 4
    assert len(res.runners[0].val) == 4
