"""DIR/serve_vllm.sh and the vLLM loader rules that exported adapters must meet."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from alto.executor.session import run_config, serve_script
from alto.executor.vllm_serve import (
    best_adapters,
    vllm_load_problems,
    vllm_max_lora_rank,
    write_serve_script,
)


@pytest.fixture
def tiny_run(tmp_path, backbone, mkcfg):
    """A llama-tiny run exporting every adapter: 2 lrs x ranks 2 / 4."""
    cfg = mkcfg(task={"search_space": {"lr": [1e-3, 1e-2], "rank": [2, 4], "batch_size": [2]}})
    log = io.StringIO()
    res = run_config(cfg, tmp_path / "run", log=log, backbone=backbone)
    with open(res.out / "jobs.csv") as f:
        rows = list(csv.DictReader(f))
    return cfg, res.out, rows, log.getvalue()


def test_every_exported_adapter_meets_vllm_s_loader_rules(tiny_run):
    _, out, rows, log = tiny_run
    assert len(rows) == 4 and all(r["adapter_dir"] for r in rows)
    for r in rows:
        assert vllm_load_problems(out / r["adapter_dir"]) == [], r["job_id"]
    # a random: base gets no script (nothing vLLM could load), and the run says nothing of it
    assert not (out / "serve_vllm.sh").exists() and "serve_vllm" not in log


def _broken_copy(src, dst, cfg_change=None, tensors_change=None):
    shutil.copytree(src, dst)
    if cfg_change:
        c = json.loads((dst / "adapter_config.json").read_text())
        cfg_change(c)
        (dst / "adapter_config.json").write_text(json.dumps(c))
    if tensors_change:
        sd = load_file(str(dst / "adapter_model.safetensors"))
        tensors_change(sd)
        save_file(sd, str(dst / "adapter_model.safetensors"))
    return vllm_load_problems(dst)


def test_what_vllm_would_reject_is_named(tiny_run, tmp_path):
    _, out, rows, _ = tiny_run
    src = out / rows[0]["adapter_dir"]
    some_a = lambda sd: next(k for k in sd if k.endswith("lora_A.weight"))  # noqa: E731
    cases = {
        "bias": (lambda c: c.update(bias="all"), None, "bias 'all'"),
        "dora": (lambda c: c.update(use_dora=True), None, "DoRA"),
        "save": (lambda c: c.update(modules_to_save=["lm_head"]), None, "modules_to_save"),
        "rank": (lambda c: c.update(r=c["r"] * 2), None, "for r"),
        "targets": (lambda c: c.update(target_modules=["q_proj"]), None, "not in target_modules"),
        "name": (None, lambda sd: sd.update({"model.x.lora_A.weight": sd.pop(some_a(sd))}), "not base_model.model"),
        "half": (None, lambda sd: sd.pop(some_a(sd)), "only"),
        "no_r": (lambda c: c.pop("r"), None, "r missing"),
    }
    for name, (c, t, want) in cases.items():
        problems = _broken_copy(src, tmp_path / name, c, t)
        assert problems and any(want in p for p in problems), (name, problems)


def test_max_lora_rank_is_the_least_vllm_choice_that_holds_the_ranks():
    assert vllm_max_lora_rank([1]) == 1
    assert vllm_max_lora_rank([2, 4]) == 8
    assert vllm_max_lora_rank([16, 64]) == 64
    assert vllm_max_lora_rank([65]) == 128
    assert vllm_max_lora_rank([300]) == 320
    with pytest.raises(ValueError, match="above vLLM's largest"):
        vllm_max_lora_rank([513])


def test_best_adapter_per_task_is_the_lowest_val_loss_of_the_exported_weights():
    def row(task, job, best, final, kept="", adapter="a", rank=8, reason="completed"):
        return dict(task=task, job_id=job, best_val_loss=best, final_val_loss=final, kept_step=kept,
                    adapter_dir=adapter, rank=rank, exit_reason=reason)

    rows = [row("t", "t/a", "1.0", "2.0"),  # exported weights are the final ones: 2.0
            row("t", "t/b", "1.5", "3.0", kept="4", reason="overfitting"),  # kept best: 1.5
            row("t", "t/c", "0.5", "0.5", adapter=""),  # not exported
            row("t", "t/d", "nan", "nan"),  # diverged
            row("u", "u/a", "nan", "nan")]  # a task with nothing servable
    picks = best_adapters(rows)
    assert {t: r["job_id"] for t, r in picks.items()} == {"t": "t/b"}


def test_the_script_serves_each_task_s_best_adapter(tiny_run, tmp_path):
    cfg, out, rows, _ = tiny_run
    ckpt = tmp_path / "ckpt dir"  # a local checkpoint, with a space to quote
    ckpt.mkdir()
    cfg.model.path = str(ckpt)
    line = serve_script(cfg, out, rows)
    script = out / "serve_vllm.sh"
    best = min((r for r in rows), key=lambda r: float(r["final_val_loss"]))
    assert line == f"wrote {script}: vLLM serving of 1 task(s)' best adapter on {ckpt}"
    text = script.read_text().splitlines()
    assert text[0] == "#!/bin/sh" and script.stat().st_mode & 0o111
    assert f"#   add: {best['job_id']}" in "\n".join(text)
    assert text[-1] == (f"exec vllm serve '{ckpt}' --enable-lora --max-lora-rank 8 --max-loras 1 "
                        f"--lora-modules add={best['adapter_dir']} \"$@\"")
    cfg.model.path = str(tmp_path / "m.gguf")
    assert serve_script(cfg, out, rows).startswith("no serve_vllm.sh: the base is a GGUF file")


def test_no_script_when_an_adapter_would_be_rejected(tiny_run):
    _, out, rows, _ = tiny_run
    for r in rows:  # every adapter now carries a bias vLLM refuses
        p = out / r["adapter_dir"] / "adapter_config.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "bias": "all"}))
    path, line = write_serve_script(out, "base", rows)
    assert path is None and line.startswith("no serve_vllm.sh (for none of the 1 task(s)): vLLM would "
                                            "reject adapters/")
    assert not (out / "serve_vllm.sh").exists()
    no_export = [{**r, "adapter_dir": ""} for r in rows]
    assert write_serve_script(out, "base", no_export) == (
        None, "no serve_vllm.sh: no adapter was exported (run.export, or no config finished)")


def test_odd_task_names_use_vllm_s_json_form_and_a_set_tokenizer_is_served(tiny_run, tmp_path):
    _, out, rows, _ = tiny_run
    renamed = [{**r, "task": "a=b,c"} for r in rows]
    path, _ = write_serve_script(out, "base", renamed, tokenizer="/tok")
    last = path.read_text().splitlines()[-1]
    best = min(rows, key=lambda r: float(r["final_val_loss"]))
    item = json.dumps({"name": "a=b,c", "path": best["adapter_dir"]})
    assert last == (f"exec vllm serve base --enable-lora --max-lora-rank 8 --max-loras 1 --tokenizer /tok "
                    f"--lora-modules '{item}' \"$@\"")


def test_a_string_target_modules_is_a_regex_and_not_checked_as_a_list(tiny_run, tmp_path):
    _, out, rows, _ = tiny_run
    problems = _broken_copy(out / rows[0]["adapter_dir"], tmp_path / "regex",
                            lambda c: c.update(target_modules=".*(q|k|v|o|gate|up|down)_proj"))
    assert problems == []
