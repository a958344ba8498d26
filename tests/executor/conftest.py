"""Shared fixtures of the executor tests: a tiny jsonl task and a cached llama-tiny backbone."""

from __future__ import annotations

import copy
import json
import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from alto.executor.config import parse_config  # noqa: E402
from alto.executor.models import load_backbone  # noqa: E402

torch.set_num_threads(1)  # tiny matmuls: threads only add contention on a 2-core CI box

_BACKBONE: dict = {}


def write_task(dirpath, n_train: int = 16, n_val: int = 4, seed: int = 0) -> None:
    """Two jsonl files of short additions (prompt 'a+b=', completion 'c')."""
    r = random.Random(seed)
    for name, n in (("train.jsonl", n_train), ("val.jsonl", n_val)):
        with open(dirpath / name, "w") as f:
            for _ in range(n):
                a, b = r.randint(0, 99), r.randint(0, 99)
                f.write(json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}) + "\n")


BASE = {
    "model": {"path": "random:llama-tiny", "seed": 0},
    "tasks": [{
        "name": "add",
        "data": {"jsonl": {"train": "train.jsonl", "val": "val.jsonl"}},
        "max_seq_len": 16,
        "epochs": 1,
        "search_space": {"lr": [1e-3], "rank": [4], "batch_size": [2]},
        "val_samples": 4,
    }],
    "early_exit": {"policy": "none"},
    "run": {"log_every": 1000},
}


def make_cfg(tmp_path, **over):
    """BASE with top-level overrides and task overrides under key 'task'."""
    raw = copy.deepcopy(BASE)
    task_over = over.pop("task", {})
    raw["tasks"][0].update(task_over)
    raw.update(over)
    if not (tmp_path / "train.jsonl").exists():
        write_task(tmp_path)
    return parse_config(raw, base_dir=tmp_path)


@pytest.fixture
def backbone(tmp_path):
    """A fresh copy of the cached llama-tiny backbone (loading imports transformers once)."""
    if "m" not in _BACKBONE:
        _BACKBONE["m"] = load_backbone(make_cfg(tmp_path))
    model, tok, dev = _BACKBONE["m"]
    return copy.deepcopy(model), tok, dev


@pytest.fixture
def mkcfg(tmp_path):
    """mkcfg(**overrides) -> Config rooted at tmp_path (see make_cfg)."""
    return lambda **over: make_cfg(tmp_path, **over)


@pytest.fixture
def base_raw(tmp_path):
    """A deep copy of BASE with its jsonl files written into tmp_path."""
    write_task(tmp_path)
    return copy.deepcopy(BASE)
