"""The simulator replays a real `alto run` decision for decision.

`alto run configs/tiny.yaml` (CPU, 12 configs: 4 diverge, 6 stop at the warmup cutoff, 2
complete) writes its loss curves; `alto simulate` on a one-task trace of the same grid,
with those curves (`recorded:`), the run's early-exit settings (`--early-exit`) and its
admission caps (`--admission-from`; each from the config or from the run's run.json), must stop every config at the same sample count for
the same reason. Without the caps the simulator admits all 12 at once (its memory model
fits them), so no config waits at the warmup boundary and the cutoff comes later.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from alto.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TRACE = ("task_id,arrival_s,tenant,model,gpus,dataset_size,seq_len,epochs,lrs,ranks,batch_sizes,alpha_over_rank\n"
         "add,0,t,smollm2-135m,1,64,16,2,0.001;0.01;1e+20,4;8,2;4,2\n")  # tiny.yaml's task and grid


def _exits(path: Path) -> dict[str, tuple[int, str]]:
    with open(path, newline="") as f:
        return {r["job_id"]: (int(r["samples_trained"]), r["exit_reason"]) for r in csv.DictReader(f)}


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a 12-config CPU run: 15x faster on 2 cores than with their threads
    yield
    torch.set_num_threads(n)


def test_replay_of_a_real_run_stops_every_config_where_the_run_did(tmp_path, one_thread, capsys):
    run = tmp_path / "run"
    assert main(["run", str(CONFIGS / "tiny.yaml"), "--out", str(run)]) == 0
    real = _exits(run / "jobs.csv")
    assert sorted(r for _, r in real.values()) == ["completed"] * 2 + ["divergence"] * 4 + ["underperforming"] * 6
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    base = ["simulate", "--trace", str(trace), "--gpus", "1", "--policies", "alto", "--quiet",
            "--curves", f"recorded:{run}", "--early-exit", str(CONFIGS / "tiny.yaml")]
    assert main([*base, "--admission-from", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / "s")]) == 0
    assert _exits(tmp_path / "s" / "jobs.csv") == real
    # the run's own folder (its run.json) serves both flags the same way
    by_run = ["simulate", "--trace", str(trace), "--gpus", "1", "--policies", "alto", "--quiet",
              "--curves", f"recorded:{run}", "--early-exit", str(run), "--admission-from", str(run)]
    assert main([*by_run, "--out", str(tmp_path / "r")]) == 0
    assert _exits(tmp_path / "r" / "jobs.csv") == real
    # --replay: the trace from run.json too (llama-tiny has no step costs: SmolLM2's stand in)
    assert main(["simulate", "--replay", str(run), "--replay-model", "smollm2-135m",
                 "--policies", "alto", "--quiet", "--out", str(tmp_path / "rp")]) == 0
    assert _exits(tmp_path / "rp" / "jobs.csv") == real
    meta = json.loads((tmp_path / "rp" / "meta.json").read_text())
    assert (meta["trace"], meta["gpus"]) == (f"replay:{run}", 1)  # the run's one device
    capsys.readouterr()
    assert main(["simulate", "--replay", str(run), "--gpus", "1", "--policies", "alto",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no 'fused' costs for model 'llama-tiny'" in err, err
    assert "with --replay, pass --replay-model NAME" in err
    # diverged configs stop at the step whose loss was non-finite, not at their next evaluation
    assert {real[j][0] for j in real if "lr1e+20" in j} == {4, 8}  # 2 steps of batch 2 / 4
    assert main([*base, "--out", str(tmp_path / "free")]) == 0
    free = _exits(tmp_path / "free" / "jobs.csv")
    late = [j for j in real if real[j][1] == "underperforming" and free[j][0] > real[j][0]]
    assert late  # no queue: configs past their warmup boundary train on until the cutoff


def test_replay_of_an_asha_run_matches_it_too(tmp_path, one_thread):
    """ASHA decides by the order in which configs reach a rung: the simulator reports the
    configs due at one step in the executor's order (by rank, then admission). In admission
    order alone, 1 of these 12 configs stopped at 32 samples instead of the run's 4."""
    cfg = (CONFIGS / "tiny.yaml").read_text().replace("data/add_", f"{CONFIGS}/data/add_")
    cfg = cfg.replace("early_exit: {policy: alto, warmup_frac: 0.2,", "early_exit: {policy: asha,")
    assert "policy: asha" in cfg
    (tmp_path / "asha.yaml").write_text(cfg)
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "asha.yaml"), "--out", str(run)]) == 0
    real = _exits(run / "jobs.csv")
    assert {r for _, r in real.values()} >= {"asha", "completed"}
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    assert main(["simulate", "--trace", str(trace), "--gpus", "1", "--policies", "alto-asha", "--quiet",
                 "--curves", f"recorded:{run}", "--early-exit", str(run), "--admission-from", str(run),
                 "--out", str(tmp_path / "s")]) == 0
    assert _exits(tmp_path / "s" / "jobs.csv") == real
