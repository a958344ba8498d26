"""`alto run` on llama-tiny driven by the real policies: exits, replay, faults, outputs."""

from __future__ import annotations

import csv
import io

import pytest
import torch
from safetensors.torch import load_file

from alto.executor.runner import Hooks
from alto.executor.session import CPU_DEFAULT_MAX_TOTAL_BATCH, run_config
from alto.policy.early_exit import EarlyExitConfig, make_early_exit
from alto.policy.task_tuner import TaskTuner
from alto.policy.types import Admit, Exit, ExitReason, LossReported, Pause


def _run(tmp_path, backbone, cfg, hooks=None, name="out"):
    log = io.StringIO()
    res = run_config(cfg, tmp_path / name, hooks=hooks, log=log, backbone=backbone)
    return res, log.getvalue()


def _jobs_csv(path):
    with open(path / "jobs.csv") as f:
        return {r["job_id"]: r for r in csv.DictReader(f)}


def test_huge_lr_exits_as_divergence(tmp_path, backbone, mkcfg):
    # lr 1e20 overflows the LoRA product to inf -> NaN loss. (On llama-tiny lr 1e4 only
    # saturates the loss at ln(260), a flat curve that the slope rule rightly keeps.)
    cfg = mkcfg(task={"search_space": {"lr": [1e-3, 1e20], "rank": [4], "batch_size": [2]}},
                   early_exit={"policy": "alto", "eval_every_frac": 0.125, "warmup_frac": 0.5})
    res, _ = _run(tmp_path, backbone, cfg)
    rows = _jobs_csv(res.out)
    assert rows["add/lr1e+20-r4-b2"]["exit_reason"] == "divergence"
    assert rows["add/lr0.001-r4-b2"]["exit_reason"] == "completed"
    assert int(rows["add/lr1e+20-r4-b2"]["samples_trained"]) < 16
    # the run's curves load in the simulator's recorded-curve reader (diverged loss -> inf)
    from sim.recorded_curves import RecordedCurves

    assert RecordedCurves([str(res.out / "curves.csv")]).recorded_tasks() == ["add"]
    assert "inf" in (res.out / "curves.csv").read_text()


def _replay(runner, cfg, out):
    """Feed the recorded loss events to a fresh tuner the way the runner does."""
    jobs = list(runner.tuner.jobs.values())
    tuner = TaskTuner(jobs, make_early_exit(EarlyExitConfig(**cfg.early_exit), jobs),
                      fits=lambda js: sum(j.batch_size for j in js) <= cfg.memory.max_total_batch)
    got = list(tuner.start())
    with open(out / "losses.csv") as f:
        for r in csv.DictReader(f):
            ev = LossReported(float(r["time_s"]), r["job_id"], int(r["step"]), int(r["samples"]),
                              float(r["train_loss"]), float(r["val_loss"]))
            got += tuner.on_loss(ev)
            if ev.job_id in tuner.active and ev.samples_seen >= tuner.jobs[ev.job_id].total_samples:
                got += tuner.on_complete(ev.time_s, ev.job_id)
    return got


def test_warmup_evicts_exactly_what_the_policy_names(tmp_path, backbone, mkcfg):
    # 8 configs, 2 slots (max_total_batch 4): warmup rotation, then the keep-25% cutoff
    cfg = mkcfg(task={"search_space": {"lr": [1e-3, 3e-3, 1e-2, 3e-2], "rank": [2, 4], "batch_size": [2]}},
                early_exit={"policy": "alto", "warmup_frac": 0.25, "eval_every_frac": 0.125},
                memory={"max_total_batch": 4})
    res, _ = _run(tmp_path, backbone, cfg)
    runner = res.runners[0]
    replayed = _replay(runner, cfg, res.out)
    assert replayed == runner.decisions  # the executor did exactly what the policy decided
    rows = _jobs_csv(res.out)
    evicted = {d.job_id for d in runner.decisions if isinstance(d, Exit) and d.reason == ExitReason.UNDERPERFORMING}
    assert evicted == {j for j, r in rows.items() if r["exit_reason"] == "underperforming"}
    assert len(evicted) == 6  # keep ceil(0.25 * 8) = 2
    assert any(isinstance(d, Pause) for d in runner.decisions)  # rotation happened
    assert sum(isinstance(d, Admit) and not d.resume for d in runner.decisions) == 8  # all warmed up
    for j, r in rows.items():
        if j not in evicted:
            assert r["exit_reason"] == "completed" and int(r["samples_trained"]) == 16


def _weights(out, job):
    return load_file(str(out / "adapters" / job.replace("/", "__") / "adapter_model.safetensors"))


def test_oom_shrinks_admission_and_loses_no_adapter(tmp_path, backbone, mkcfg):
    cfg = mkcfg(task={"search_space": {"lr": [1e-3, 1e-2], "rank": [2, 4], "batch_size": [2]}},
                memory={"max_total_batch": 16})
    seen = []

    def oom(active, total):
        seen.append(total)
        return total > 4  # "device" holds 2 jobs of batch 2

    res, log = _run(tmp_path, backbone, cfg, Hooks(oom=oom))
    rows = _jobs_csv(res.out)
    assert len(rows) == 4
    assert all(r["exit_reason"] == "completed" and r["samples_trained"] == "16" for r in rows.values())
    assert "OOM" in log and seen[0] == 8 and max(seen[3:]) <= 4
    assert sum(isinstance(d, Pause) for d in res.runners[0].decisions) == 2
    assert sum(isinstance(d, Admit) and d.resume for d in res.runners[0].decisions) == 2


def _ctrl_c_at_step(n: int) -> Hooks:
    """Hooks whose step-start check raises KeyboardInterrupt at the n-th step (as Ctrl-C)."""
    calls = []

    def interrupt(active, total):
        calls.append(total)
        if len(calls) == n:
            raise KeyboardInterrupt
        return False

    return Hooks(oom=interrupt)


def test_ctrl_c_writes_finished_jobs(tmp_path, backbone, mkcfg):
    cfg = mkcfg(task={"search_space": {"lr": [1e-3], "rank": [2], "batch_size": [2, 8]}})
    res, _ = _run(tmp_path, backbone, cfg, _ctrl_c_at_step(4))
    assert res.interrupted
    rows = _jobs_csv(res.out)
    assert rows["add/lr0.001-r2-b8"]["exit_reason"] == "completed"
    assert rows["add/lr0.001-r2-b2"]["exit_reason"] == "interrupted"
    assert (res.out / "adapters" / "add__lr0.001-r2-b8" / "adapter_model.safetensors").is_file()


def test_peft_export_loads_and_matches(tmp_path, backbone, mkcfg):
    peft = pytest.importorskip("peft")
    import transformers as tf

    from alto.executor.lora_model import MultiLoraModel

    cfg = mkcfg(task={"search_space": {"lr": [3e-2], "rank": [4], "batch_size": [4]}})
    res, _ = _run(tmp_path, backbone, cfg)
    adir = res.out / "adapters" / "add__lr0.03-r4-b4"
    base = tf.AutoModelForCausalLM.from_pretrained(str(res.out / "base_model"))
    pm = peft.PeftModel.from_pretrained(base, str(adir)).eval()
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = pm(input_ids=ids).logits
        model = backbone[0]
        mlm = MultiLoraModel(model, cfg.tasks[0].target_modules)
        ad = mlm.new_adapter(res.runners[0].tuner.jobs["add/lr0.03-r4-b4"], seed=0)
        sd = load_file(str(adir / "adapter_model.safetensors"))
        ad.load_state_tensors({k.removeprefix("base_model.model."): v for k, v in sd.items()})
        mlm.ctx.adapters, mlm.ctx.seg_lens = [ad], [ids.numel()]
        got = model.lm_head(model.model(input_ids=ids).last_hidden_state)
        mlm.clear()
        plain = model.lm_head(model.model(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, want, atol=1e-4)  # the adapter changes the outputs


def test_overfitting_exit_keeps_best_val_weights(tmp_path, backbone, mkcfg):
    # tau_gap 0, patience 2: exits as overfitting after two evals in a row with val > EMA(train);
    # noisy val curves make the best eval an earlier one
    cfg = mkcfg(task={"search_space": {"lr": [3e-2, 1e-1, 3e-1], "rank": [4], "batch_size": [2]}, "epochs": 4},
                early_exit={"policy": "alto", "tau_gap": 0.0, "patience": 2, "warmup_frac": 0.9,
                            "keep_ratio": 1.0, "eval_every_frac": 0.05})
    res, _ = _run(tmp_path, backbone, cfg)
    runner = res.runners[0]
    over = [r for r in _jobs_csv(res.out).values() if r["exit_reason"] == "overfitting"]
    assert over, "no overfitting exit: the scenario no longer exercises the rule"
    for r in over:
        assert r["kept_step"] == r["best_val_step"]
        ad = runner.mlm.new_adapter(runner.tuner.jobs[r["job_id"]], seed=0)
        sd = _weights(res.out, r["job_id"])
        ad.load_state_tensors({k.removeprefix("base_model.model."): v for k, v in sd.items()})
        mlm = runner.mlm
        from alto.executor.lora_model import MultiLoraModel

        runner.mlm = MultiLoraModel(backbone[0], cfg.tasks[0].target_modules)  # re-inject (run removed it)
        try:
            (val,) = runner.evaluate([ad])
        finally:
            runner.mlm.remove()
            runner.mlm = mlm
        # the exported weights are the best-val snapshot: they reproduce best_val_loss
        assert val == pytest.approx(float(r["best_val_loss"]), rel=1e-5)
    assert any(int(r["kept_step"]) < int(r["steps_trained"]) for r in over)  # an earlier step was kept


def test_asha_policy_runs(tmp_path, backbone, mkcfg):
    cfg = mkcfg(task={"search_space": {"lr": [1e-3, 1e-2, 1e-1, 1.0], "rank": [2], "batch_size": [2]}},
                early_exit={"policy": "asha", "asha_grace_frac": 0.125, "asha_reduction": 2})
    res, _ = _run(tmp_path, backbone, cfg)
    reasons = [r["exit_reason"] for r in _jobs_csv(res.out).values()]
    assert set(reasons) <= {"asha", "completed"} and "asha" in reasons and "completed" in reasons


@pytest.mark.parametrize("fault", ["nan", "inf_grad"])
def test_faulty_adapter_diverges_and_leaves_neighbours_untouched(tmp_path, backbone, mkcfg, fault):
    """One adapter's step-2 fault: a NaN loss ("nan"), or an overflowed gradient under a finite
    loss ("inf_grad"; stepping on it would make the weights non-finite, which on the gemm path
    reach its row-tile neighbours). Either way: no optimizer step (its weights stay finite), NaN
    loss reported, divergence exit; the neighbours train exactly as without the fault."""
    ss = {"lr": [1e-2], "rank": [2, 4, 8], "batch_size": [2]}
    cfg = mkcfg(task={"search_space": ss})
    bad = "add/lr0.01-r4-b2"
    hooks = Hooks(**{fault: lambda j, step: j == bad and step == 2})
    res_bad, _ = _run(tmp_path, backbone, cfg, hooks, fault)
    res_ok, _ = _run(tmp_path, backbone, cfg, None, "ok")
    rows = _jobs_csv(res_bad.out)
    assert rows[bad]["exit_reason"] == "divergence" and rows[bad]["steps_trained"] == "3"
    for j in ("add/lr0.01-r2-b2", "add/lr0.01-r8-b2"):
        assert rows[j]["exit_reason"] == "completed"
        a, b = _weights(res_bad.out, j), _weights(res_ok.out, j)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    # the faulty adapter got no update from its faulty step: its weights are finite
    assert all(torch.isfinite(v).all() for v in _weights(res_bad.out, bad).values())


def test_grads_finite_flags_each_adapter():
    """NaN / -inf anywhere in an adapter's gradients (any module, A or B) flags it alone; a
    finite gradient whose L2 norm overflows fp32 does not."""
    from alto.executor.lora_model import Adapter, grads_finite
    from alto.policy.types import JobConfig

    shapes = {"l0.q": (4, 6), "l1.v": (4, 2)}
    ads = [Adapter(JobConfig(f"t/{i}", "t", 1e-3, 2, 1, 4.0, 10), shapes, "cpu", seed=i) for i in range(5)]
    ads[0].flat_grad.fill_(1.0)
    ads[1].params["l1.v"][1].grad[1, 0] = float("nan")  # B of the last module
    ads[3].params["l0.q"][0].grad[0, 0] = float("-inf")  # A of the first module
    ads[4].flat_grad.fill_(2e19)  # finite, but its L2 norm overflows fp32
    assert grads_finite(ads).tolist() == [True, False, True, False, True]


def test_adapter_factors_are_views_of_one_buffer_and_train_like_separate_ones():
    """Each factor and its gradient live in the adapter's flat buffers; zero_grad keeps the
    gradient buffers (zeroed, not None); a step equals AdamW over the separate factors."""
    from alto.executor.lora_model import Adapter
    from alto.policy.types import JobConfig

    shapes = {"l0.q": (5, 7), "l0.down": (3, 5)}
    ad = Adapter(JobConfig("t/0", "t", 1e-2, 3, 1, 6.0, 10), shapes, "cpu", seed=0, weight_decay=0.1)
    ref = [p.detach().clone().requires_grad_() for p in ad.parameters()]
    opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1)
    assert [tuple(p.shape) for p in ad.parameters()] == [(3, 5), (7, 3), (3, 3), (5, 3)]
    assert sum(p.numel() for p in ad.parameters()) == ad.master.numel()
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        for p, r in zip(ad.parameters(), ref, strict=True):
            grad = torch.randn(p.shape, generator=g)
            p.grad.add_(grad)  # as autograd / stack_padded accumulate
            r.grad = grad.clone()
        ad.step()
        opt.step()
        ad.zero_grad()
        assert all(p.grad is not None and not p.grad.any() for p in ad.parameters())
        assert ad.params["l0.q"][0].data_ptr() == ad.master.data_ptr()
    for p, r in zip(ad.parameters(), ref, strict=True):
        assert torch.allclose(p, r, rtol=1e-6, atol=1e-7)
    ad.to("cpu")  # a move rebinds the views: still one buffer
    ad.params["l0.down"][1].data.fill_(1.0)
    assert ad.master[-15:].eq(1.0).all()


def _tree(path):
    """Every file under path with its bytes (what a user would lose)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_an_earlier_run_is_never_overwritten_or_mixed_without_overwrite(tmp_path, backbone, mkcfg):
    """--out holding a run: refused before anything is written (its files stay byte for
    byte); with overwrite, that run's entries go first, so no old adapter sits beside the
    new ones, and unrelated files stay. A data file that fails to load leaves the folder as it
    was even with overwrite (it used to truncate losses.csv and curves.csv first)."""
    from alto.executor.outputs import OutputDirError

    two = mkcfg(task={"search_space": {"lr": [1e-3, 1e-2], "rank": [4], "batch_size": [2]}})
    res, _ = _run(tmp_path, backbone, two)
    (res.out / "notes.txt").write_text("mine")
    before = _tree(res.out)
    assert len(list((res.out / "adapters").iterdir())) == 2
    one = mkcfg(task={"search_space": {"lr": [1e-3], "rank": [4], "batch_size": [2]}})
    with pytest.raises(OutputDirError, match="already holds a run .*--overwrite"):
        run_config(one, res.out, log=io.StringIO(), backbone=backbone)
    assert _tree(res.out) == before
    (tmp_path / "empty_val.jsonl").write_text("")
    bad = mkcfg(task={"data": {"jsonl": {"train": "train.jsonl", "val": "empty_val.jsonl"}}})
    with pytest.raises(ValueError, match="empty_val.jsonl holds no samples"):
        run_config(bad, res.out, log=io.StringIO(), backbone=backbone, overwrite=True)
    assert _tree(res.out) == before
    run_config(one, res.out, log=io.StringIO(), backbone=backbone, overwrite=True)
    assert [p.name for p in (res.out / "adapters").iterdir()] == ["add__lr0.001-r4-b2"]
    assert list(_jobs_csv(res.out)) == ["add/lr0.001-r4-b2"]
    assert (res.out / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputDirError, match="exists and is not a folder"):
        run_config(one, tmp_path / "afile", log=io.StringIO(), backbone=backbone)


def test_run_json_records_the_settings_as_applied(tmp_path, backbone, mkcfg):
    """run.json holds what the run trained with, including the admission cap a CPU run gets
    when its config sets none (a replay needs it), and `alto simulate` reads it."""
    import json

    from sim.cli_simulate import admission_of, early_exit_of

    cfg = mkcfg(memory={})
    assert cfg.memory.max_total_batch is None
    res = run_config(cfg, tmp_path / "o", log=io.StringIO(), backbone=backbone)
    settings = json.loads((res.out / "run.json").read_text())
    assert settings["memory"]["max_total_batch"] == CPU_DEFAULT_MAX_TOTAL_BATCH
    assert (settings["device"], settings["lora_impl"]) == ("cpu", "reference")
    assert settings["tasks"][0]["lrs"] == cfg.tasks[0].lrs
    assert admission_of(str(res.out)) == (CPU_DEFAULT_MAX_TOTAL_BATCH, None)
    assert early_exit_of(str(res.out)).warmup_frac == cfg.early_exit.get("warmup_frac", 0.05)
    with pytest.raises(ValueError, match="not an `alto run` output folder"):
        admission_of(str(tmp_path))


def test_ctrl_c_in_the_first_task_records_the_second_task_s_configs_and_replay_names_it(
        tmp_path, backbone, mkcfg, capsys):
    """Tasks never started used to get no jobs.csv row at all, and `alto simulate --replay`
    then simulated them on the first task's curves as if they had run."""
    import dataclasses

    from alto.cli import main

    cfg = mkcfg(task={"search_space": {"lr": [1e-3], "rank": [2], "batch_size": [2, 8]}})
    cfg.tasks.append(dataclasses.replace(cfg.tasks[0], name="add2"))  # the same task, renamed
    res, _ = _run(tmp_path, backbone, cfg, _ctrl_c_at_step(4))
    rows = _jobs_csv(res.out)
    assert {j: r["exit_reason"] for j, r in rows.items() if j.startswith("add2/")} == {
        "add2/lr0.001-r2-b2": "interrupted", "add2/lr0.001-r2-b8": "interrupted"}
    assert rows["add2/lr0.001-r2-b2"]["samples_trained"] == "0"
    capsys.readouterr()
    base = ["simulate", "--replay", str(res.out), "--replay-model", "smollm2-135m", "--policies", "alto",
            "--quiet"]
    assert main([*base, "--out", str(tmp_path / "sim")]) == 2
    err = capsys.readouterr().err
    assert "task(s) add2 recorded no evaluation: the run stopped before them; --max-tasks 1 replays" in err
    assert main([*base, "--max-tasks", "1", "--out", str(tmp_path / "sim1")]) == 0


def test_export_completed_includes_overfitting_exits_with_their_best_weights(tmp_path, backbone, mkcfg):
    """`export: completed` used to drop a config stopped for overfitting with its best-val
    weights kept, although that is the task's result; the task could end with no adapter."""
    cfg = mkcfg(task={"search_space": {"lr": [3e-2, 1e-1, 3e-1], "rank": [4], "batch_size": [2]}, "epochs": 4},
                early_exit={"policy": "alto", "tau_gap": 0.0, "patience": 2, "warmup_frac": 0.9,
                            "keep_ratio": 1.0, "eval_every_frac": 0.05},
                run={"log_every": 1000, "export": "completed"})
    res, _ = _run(tmp_path, backbone, cfg)
    rows = _jobs_csv(res.out).values()
    over = [r for r in rows if r["exit_reason"] == "overfitting"]
    assert over and all(r["adapter_dir"] and r["kept_step"] for r in over)
    assert all(bool(r["adapter_dir"]) == (r["exit_reason"] in ("completed", "overfitting")) for r in rows)


def test_ctrl_c_while_the_base_model_is_saved_still_leaves_a_row_per_config(tmp_path, backbone, mkcfg,
                                                                             monkeypatch):
    """The setup (run.json, base_model/) ran outside the interrupt handler: a Ctrl-C there
    left a folder without jobs.csv that later runs refused."""
    import alto.executor.session as session

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(session, "save_base_model", interrupted)
    cfg = mkcfg(task={"search_space": {"lr": [1e-3, 1e-2], "rank": [2], "batch_size": [2]}})
    res, _ = _run(tmp_path, backbone, cfg)
    assert res.interrupted
    assert {j: r["exit_reason"] for j, r in _jobs_csv(res.out).items()} == {
        "add/lr0.001-r2-b2": "interrupted", "add/lr0.01-r2-b2": "interrupted"}
