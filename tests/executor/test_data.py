"""Tokenization, completion-only masks, batch layout, per-job data order, sources."""

from __future__ import annotations

import json

import pytest

from alto.executor.config import parse_config
from alto.executor.data import ByteTokenizer, SampleStream, collate, encode_sample, load_task_data


def test_encode_and_mask_by_hand():
    tok = ByteTokenizer()
    ids, cs = encode_sample(tok, ("ab", "c"), 16)
    assert ids == [256, 97, 98, 99, 257] and cs == 3
    tb = collate([[(ids, cs)], [([256, 120, 257], 1)]], tok.pad_id)
    # row 0 reads [bos a b c] and is scored on predicting c, eos (target positions 2, 3)
    assert tb.inputs.tolist() == [[256, 97, 98, 99], [256, 120, 258, 258]]
    assert tb.targets.tolist() == [[97, 98, 99, 257], [120, 257, 258, 258]]
    assert tb.mask.tolist() == [[0, 0, 1, 1], [1, 1, 0, 0]]
    assert tb.rows == [1, 1]


def test_truncation_keeps_the_completion():
    tok = ByteTokenizer()
    ids, cs = encode_sample(tok, ("0123456789", "xy"), 6)  # 1 + 10 + 3 tokens > 7
    assert len(ids) == 7 and ids[cs:] == [120, 121, 257] and ids[0] == 256
    assert ids[1:cs] == [ord(c) for c in "789"]  # prompt lost from the left


def test_sample_stream_epochs_and_orders():
    s = SampleStream(5, seed=3)
    first = s.take(3) + s.take(2)
    assert sorted(first) == [0, 1, 2, 3, 4] and s.epoch == 0
    nxt = s.take(7)  # crosses into epoch 1 and 2
    assert s.epoch == 2 and sorted(nxt[:5]) == [0, 1, 2, 3, 4]
    assert SampleStream(50, 1).take(50) != SampleStream(50, 2).take(50)  # own order per job


def test_bigbench_task_json(tmp_path):
    task = {"name": "toy", "task_prefix": "Add.", "examples":
            [{"input": f"{i}+1", "target": str(i + 1)} for i in range(8)]
            + [{"input": "pick", "target_scores": {"yes": 0, "no": 1}}, {"input": "lst", "target": ["a", "b"]}]}
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "task.json").write_text(json.dumps(task))
    raw = {"model": "random:llama-tiny", "tasks": [{"name": "t", "data": {"bigbench": {
        "task": "toy", "root": str(tmp_path), "val_frac": 0.2}}}]}
    cfg = parse_config(raw, tmp_path)
    train, val = load_task_data(cfg, cfg.tasks[0], 0)
    assert len(train) == 8 and len(val) == 2
    allp = dict(train + val)
    assert allp["Add.\nQ: 3+1\nA: "] == "4" and allp["Add.\nQ: pick\nA: "] == "no" and allp["Add.\nQ: lst\nA: "] == "a"


def test_reasoning_gym_source(tmp_path):
    pytest.importorskip("reasoning_gym")
    raw = {"model": "random:llama-tiny", "tasks": [{"name": "t", "data": {"reasoning_gym": {
        "name": "basic_arithmetic", "train_size": 6, "val_size": 3, "seed": 1}}}]}
    cfg = parse_config(raw, tmp_path)
    train, val = load_task_data(cfg, cfg.tasks[0], 0)
    assert len(train) == 6 and len(val) == 3 and train != val
    assert all(p.endswith("Answer: ") and c for p, c in train)


@pytest.mark.parametrize("max_len", [1, 2, 3, 5, 8, 13, 40])
def test_encode_samples_counts_exactly_what_encode_sample_cuts(max_len):
    import random

    from alto.executor.data import ByteTokenizer, encode_sample, encode_samples

    tok = ByteTokenizer()
    r = random.Random(max_len)
    samples = [("x" * r.randint(0, 12), "y" * r.randint(0, 12)) for _ in range(200)]
    cut = lost = 0
    for p, c in samples:
        ids, start = encode_sample(tok, (p, c), max_len)
        full = [tok.bos_id] + tok.encode(p) + tok.encode(c) + [tok.eos_id]
        cut += ids != full
        lost += len(ids) - start < len(tok.encode(c)) + 1
    encoded, *counts = encode_samples(tok, samples, max_len)
    assert tuple(counts) == (cut, lost)
    assert encoded == [encode_sample(tok, x, max_len) for x in samples]
    assert 0 < cut <= 200 or max_len == 40


def test_jsonl_reading_keeps_unicode_line_separators_and_names_bad_lines(tmp_path):
    """str.splitlines used to split inside JSON strings at U+2028 (valid JSONL), shifting every
    later line number; null / non-string fields became the text 'None'; a BOM was rejected."""
    from alto.executor.config import ConfigError
    from alto.executor.data import _read_jsonl

    good = tmp_path / "good.jsonl"
    rows = [{"prompt": "Line one\u2028two\u0085 1+1=", "completion": "2"}, {"prompt": "é", "completion": "ü"}]
    good.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8-sig")
    assert _read_jsonl(good, "w") == [(r["prompt"], r["completion"]) for r in rows]
    cases = {'{"prompt": "a", "completion": null}': "prompt and completion are strings",
             '{"prompt": 3, "completion": "b"}': "prompt and completion are strings",
             '["a", "b"]': "prompt and completion are strings",
             '{"prompt": "a", "completion": "b"': "line 2: not JSON (Expecting"}
    for i, (line, want) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.jsonl"
        bad.write_text('{"prompt": "x", "completion": "y"}\n' + line + "\n", encoding="utf-8")
        with pytest.raises(ConfigError) as e:
            _read_jsonl(bad, "tasks[0].data.jsonl.train")
        assert f"{bad} line 2: " in str(e.value) and want in str(e.value)
