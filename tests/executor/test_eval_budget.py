"""How `alto run` sizes its evaluation forwards: the budget rule and an OOM in evaluation."""

from __future__ import annotations

import csv
import io

import pytest

from alto.executor.config import ConfigError
from alto.executor.runner import Hooks
from alto.executor.session import run_config


def _val_losses(out):
    with open(out / "losses.csv") as f:
        return {(r["job_id"], r["step"]): float(r["val_loss"]) for r in csv.DictReader(f)}


def test_oom_in_evaluation_halves_the_budget_and_loses_nothing(tmp_path, backbone, mkcfg):
    # 4 val rows of <= 15 tokens, 3 adapters due together: a 60-token limit on one forward
    # halves the forward that failed until one holds at most 60 tokens, never retrying a size
    ss = {"lr": [1e-3, 3e-3, 1e-2], "rank": [2], "batch_size": [2]}
    cfg = mkcfg(task={"search_space": ss}, early_exit={"policy": "none", "eval_every_frac": 0.25})
    seen = []

    def eval_oom(tokens):
        seen.append(tokens)
        return tokens > 60

    log = io.StringIO()
    res = run_config(cfg, tmp_path / "capped", hooks=Hooks(eval_oom=eval_oom), log=log, backbone=backbone)
    plain = run_config(cfg, tmp_path / "plain", log=io.StringIO(), backbone=backbone)
    got, want = _val_losses(res.out), _val_losses(plain.out)
    assert got.keys() == want.keys() and len(got) >= 3 * 4  # every evaluation of every job
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5)
    runner = res.runners[0]
    L = max(len(i) - 1 for i, _ in runner.val)
    fails = [t for t in seen if t > 60]
    assert len(fails) == len(set(fails)), f"a failed forward size was tried again: {seen}"
    last_fail = max(i for i, t in enumerate(seen) if t > 60)
    assert last_fail < len(seen) - 1 and all(t <= 60 for t in seen[last_fail + 1:])  # the cap stays
    assert seen[0] > 60 and L <= runner.eval_tokens_cap <= seen[last_fail] // 2
    assert log.getvalue().count("OOM in an evaluation forward of") == len(fails)
    assert "(evaluations " in log.getvalue()


def test_one_adapter_on_one_row_that_does_not_fit_is_an_error_at_once(tmp_path, backbone, mkcfg):
    cfg = mkcfg(early_exit={"policy": "none"})
    seen = []

    def eval_oom(tokens):
        seen.append(tokens)
        return True  # nothing fits

    import torch

    with pytest.raises(torch.cuda.OutOfMemoryError, match="one adapter on one val row"):
        run_config(cfg, tmp_path / "out", hooks=Hooks(eval_oom=eval_oom), log=io.StringIO(),
                   backbone=backbone)
    assert len(seen) == len(set(seen))  # each failed size tried once, down to one row of one adapter


def test_budget_is_the_config_s_under_the_oom_cap(tmp_path, backbone, mkcfg):
    cfg = mkcfg(early_exit={"policy": "none"})
    res = run_config(cfg, tmp_path / "out", log=io.StringIO(), backbone=backbone)
    runner = res.runners[0]
    assert runner.eval_budget_tokens() == 8192  # CPU default
    runner.cfg.run.eval_tokens = 300
    assert runner.eval_budget_tokens() == 300
    runner.eval_tokens_cap = 200  # an OOM in evaluation lowered it
    assert runner.eval_budget_tokens() == 200


def test_eval_tokens_must_be_positive(tmp_path, mkcfg):
    with pytest.raises(ConfigError, match=r"run\.eval_tokens: expected a positive int, got 0"):
        mkcfg(run={"eval_tokens": 0})
    with pytest.raises(ConfigError, match=r"run\.eval_tokens"):
        mkcfg(run={"eval_tokens": "many"})
    assert mkcfg(run={"eval_tokens": 4096}).run.eval_tokens == 4096
