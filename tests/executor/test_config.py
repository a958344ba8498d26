"""Config validation: every rejection happens before training and names the key or file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from alto.executor.config import ConfigError, load_config, parse_config

TASK = {"name": "t", "data": {"jsonl": {"train": "train.jsonl", "val": "val.jsonl"}}}


def _raw(**over):
    raw = {"model": "random:llama-tiny", "tasks": [copy.deepcopy(TASK)]}
    raw.update(over)
    return raw


@pytest.fixture
def d(tmp_path):
    for n in ("train.jsonl", "val.jsonl"):
        (tmp_path / n).write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    return tmp_path


def _err(raw, d) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, base_dir=d)
    return str(e.value)


def test_valid_defaults(d):
    cfg = parse_config(_raw(), base_dir=d)
    t = cfg.tasks[0]
    assert cfg.model.path == "random:llama-tiny" and cfg.model.dtype == "float32"
    assert t.target_modules == ["q", "k", "v", "o", "gate", "up", "down"] and t.alpha is None
    assert cfg.early_exit == {"policy": "alto"}
    assert parse_config(_raw(tasks=[dict(TASK, search_space={"lr": ["1e-4", 2e-4]})]), d).tasks[0].lrs == [1e-4, 2e-4]


@pytest.mark.parametrize("raw,needle", [
    (_raw(modle="x"), "unknown key modle"),
    (_raw(tasks=[dict(TASK, max_seq_length=5)]), "unknown key tasks[0].max_seq_length"),
    (_raw(tasks=[dict(TASK, search_space={"lr": [1e-4], "ranks": [8]})]), "tasks[0].search_space.ranks"),
    (_raw(tasks=[dict(TASK, search_space={"lr": [-1.0]})]), "tasks[0].search_space.lr[0]"),
    (_raw(tasks=[dict(TASK, search_space={"rank": ["big"]})]), "tasks[0].search_space.rank[0]"),
    (_raw(tasks=[dict(TASK, target_modules=["q", "lm_head"])]), "tasks[0].target_modules"),
    (_raw(tasks=[dict(TASK, data={"csv": {}})]), "tasks[0].data.csv"),
    (_raw(tasks=[dict(TASK, data={"reasoning_gym": {"size": 3}})]), "tasks[0].data.reasoning_gym.size"),
    (_raw(tasks=[dict(TASK, data={"bigbench": {}})]), "tasks[0].data.bigbench.task"),
    (_raw(tasks=[]), "tasks"),
    (_raw(model="random:gpt-9"), "model.path: unknown random arch 'gpt-9'"),
    (_raw(model={"path": "random:llama-tiny", "dtype": "fp8"}), "model.dtype"),
    (_raw(early_exit={"policy": "median"}), "early_exit.policy"),
    (_raw(early_exit={"keep_ratio": 2.0}), "keep_ratio"),
    (_raw(early_exit={"warmup": 0.1}), "unknown key early_exit.warmup"),
    (_raw(memory={"budget": 3}), "unknown key memory.budget"),
    (_raw(tasks=[dict(TASK, val_samples=0)]), "tasks[0].val_samples: must be >= 1"),
    (_raw(memory={"max_total_batch": -1}), "memory.max_total_batch: expected a positive int"),
    (_raw(memory={"max_active": 0}), "memory.max_active: expected a positive int"),
    (_raw(tasks=[dict(TASK, search_space={"batch_size": [2, 8]})], memory={"max_total_batch": 4}),
     "memory.max_total_batch: 4 is below tasks[0].search_space.batch_size[1] = 8"),
    ({"tasks": [TASK]}, "model: missing"),
])
def test_rejections_name_the_key(d, raw, needle):
    assert needle in _err(raw, d)


def test_missing_files_are_named(d):
    msg = _err(_raw(tasks=[dict(TASK, data={"jsonl": {"train": "nope.jsonl", "val": "val.jsonl"}})]), d)
    assert "tasks[0].data.jsonl.train" in msg and "nope.jsonl" in msg
    msg = _err(_raw(model={"path": "ckpt/missing"}), d)
    assert "model.path" in msg and "missing" in msg
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(d / "none.yaml")


def test_unknown_family_rejected(d):
    ck = d / "ckpt"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert "unknown model family 'gpt2'" in _err(_raw(model={"path": "ckpt"}), d)


def test_malformed_yaml_named(d):
    p = d / "bad.yaml"
    p.write_text("model: [random:llama-tiny\ntasks: {")
    with pytest.raises(ConfigError, match="bad.yaml: malformed YAML"):
        load_config(p)


def test_example_configs_parse():
    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files, "configs/*.yaml examples missing"
    for f in files:
        first = f.read_text().splitlines()[0]
        assert first.startswith("# alto run ") or first.startswith("# alto profile"), f
        if "reasoning_gym" in f.read_text() or "bigbench" in f.read_text() or ".gguf" in f.read_text():
            continue  # need optional packages / downloads
        load_config(f)


@pytest.mark.parametrize("value,want", [(True, True), (False, False), (0.5, 0.5), (1, 1.0)])
def test_gradient_checkpointing_bool_or_fraction(d, value, want):
    cfg = parse_config(_raw(model={"path": "random:llama-tiny", "gradient_checkpointing": value}), base_dir=d)
    assert cfg.model.gradient_checkpointing == want and type(cfg.model.gradient_checkpointing) is type(want)


@pytest.mark.parametrize("value", [1.5, -0.1, "half"])
def test_gradient_checkpointing_bad_value_names_key(d, value):
    msg = _err(_raw(model={"path": "random:llama-tiny", "gradient_checkpointing": value}), d)
    assert "model.gradient_checkpointing" in msg


def test_early_exit_keys_are_the_policy_fields_and_typed(d):
    """Every EarlyExitConfig field is accepted (one source of truth); bools must be bools."""
    import dataclasses

    from alto.executor.config import EARLY_EXIT_KEYS
    from alto.policy.early_exit import EarlyExitConfig

    assert set(EARLY_EXIT_KEYS) == {f.name for f in dataclasses.fields(EarlyExitConfig)}
    cfg = parse_config(_raw(early_exit={"policy": "none", "record_warmup": True}), base_dir=d)
    assert cfg.early_exit == {"policy": "none", "record_warmup": True}
    assert "early_exit.record_warmup" in _err(_raw(early_exit={"record_warmup": 1}), d)
    assert "early_exit.keep_ratio" in _err(_raw(early_exit={"keep_ratio": True}), d)
    assert "early_exit.window: expected an integer" in _err(_raw(early_exit={"window": 2.5}), d)
    assert "early_exit.window: expected an integer" in _err(_raw(early_exit={"window": 2.0}), d)


def test_grid_values_that_print_alike_are_rejected(d):
    raw = _raw(tasks=[dict(TASK, search_space={"lr": [1e-4, 1.00000001e-4]})])
    assert "tasks[0].search_space.lr[1]: 0.000100000001 and 0.0001 give the same job id (lr0.0001)" in _err(raw, d)
    # ranks and batch sizes are spelled exactly in job ids (r1000000, r1000001): no clash
    ok = parse_config(_raw(tasks=[dict(TASK, search_space={"rank": [1000000, 1000001]})]), base_dir=d)
    assert ok.tasks[0].ranks == [1000000, 1000001]
