"""CostModel: exact table reproduction, hand-computed interpolation, overrides, errors.

Tiny hand-made tables live in tmp_path; the committed estimate tables are checked for
the orderings the paper relies on (fused beats loop and sequential) and for agreement
with the script that generates them.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from alto.models import MODELS
from sim.cost_model import (
    DEFAULT_PROFILE_DIR,
    MEMORY_COLUMNS,
    STEP_COLUMNS,
    CostModel,
    append_rows,
    read_csv_table,
    write_rows,
)

EST = "estimate: test"


def row(n, t, s, kernel="fused", rank=16, source=EST, gpu="G", model="llama-3.1-8b"):
    return {"gpu": gpu, "model": model, "kernel": kernel, "n_adapters": n, "tokens_per_step": t,
            "mean_rank": rank, "step_time_s": s, "source": source, "date": "2026-11-28"}


MEM = [{"gpu": "G", "model": "llama-3.1-8b", "k0_bytes": 10.0, "k1_bytes_per_token": 2.0,
        "hbm_bytes": 100.0, "source": EST}]
# n=1: 1.0 s at 1000 tokens, 2.0 s at 3000; n=3: 3.0 s and 5.0 s.
GRID = [row(1, 1000, 1.0), row(1, 3000, 2.0), row(3, 1000, 3.0), row(3, 3000, 5.0)]


@pytest.fixture(scope="module")
def committed() -> CostModel:
    return CostModel.from_dir()


def test_reproduces_every_committed_row_exactly(committed):
    rows = read_csv_table(DEFAULT_PROFILE_DIR / "step_costs.csv", STEP_COLUMNS,
                          {"n_adapters": int, "tokens_per_step": int, "mean_rank": float, "step_time_s": float})
    assert len(rows) == 2 * 7 * (3 * 7 * 6 + 6)  # gpus x models x (kernels x n x T + single x T)
    for r in rows:
        got = committed.predict(r["gpu"], r["model"], r["kernel"], r["n_adapters"], r["tokens_per_step"],
                                [int(r["mean_rank"])] * r["n_adapters"])
        assert got == r["step_time_s"], r


def test_interpolation_midpoints_and_extrapolation_by_hand():
    cm = CostModel(GRID, MEM)
    p = lambda n, t: cm.predict("G", "llama-3.1-8b", "fused", n, t, [16] * n)
    assert p(1, 2000) == pytest.approx(1.5)
    assert p(3, 2000) == pytest.approx(4.0)
    assert p(2, 2000) == pytest.approx(2.75)  # (1.5 + 4.0) / 2
    assert p(2, 1000) == pytest.approx(2.0)
    assert p(1, 5000) == pytest.approx(3.0)  # last slope 0.5 ms/token: 2.0 + 2000 * 0.0005
    assert p(1, 10) == pytest.approx(1.0)  # slope would give 0.505: floored at the smallest value
    assert p(5, 1000) == pytest.approx(5.0)  # slope in n: 1.0 s per adapter
    assert p(6, 3000) == pytest.approx(9.5)  # n=3 -> 5.0, slope (5-2)/2 = 1.5 per adapter


def test_rank_correction_through_lora_flop_share():
    cm = CostModel([row(1, 1000, 1.0)], MEM)
    # llama-3.1-8b: P(r=1) = 32 layers * 81920 = 2,621,440; N = 8,030,261,248.
    lora = 6 * 2_621_440 * 16
    phi = lora / (4 * 8_030_261_248 + lora)
    assert cm.predict("G", "llama-3.1-8b", "fused", 1, 1000, [32]) == pytest.approx(1 + phi)
    assert cm.predict("G", "llama-3.1-8b", "fused", 2, 1000, [8, 24]) == pytest.approx(1.0)  # mean 16


def test_measured_rows_override_estimates_for_their_key():
    measured = row(3, 2000, 7.0, source="measured: G 2026-11-28 alto profile")
    cm = CostModel(GRID + [measured] + [row(1, 1000, 4.0, kernel="loop")], MEM)
    assert cm.source("G", "llama-3.1-8b", "fused") == "measured: G 2026-11-28 alto profile"
    assert cm.predict("G", "llama-3.1-8b", "fused", 1, 1000, [16]) == 7.0  # only measured points used
    assert cm.source("G", "llama-3.1-8b", "loop") == EST
    assert cm.predict("G", "llama-3.1-8b", "loop", 1, 1000, [16]) == 4.0


def test_later_row_wins_at_same_point():
    cm = CostModel(GRID + [row(1, 1000, 1.25)], MEM)
    assert cm.predict("G", "llama-3.1-8b", "fused", 1, 1000, [16]) == 1.25


@pytest.mark.parametrize("gpu", ["H100", "H200"])
def test_fused_beats_loop_and_sequential_in_committed_tables(committed, gpu):
    for model in committed.models():
        for t in (1024, 4096, 32768):
            for n in (8, 16, 32, 64):
                fused = committed.predict(gpu, model, "fused", n, t, [16] * n)
                assert fused < committed.predict(gpu, model, "loop", n, t, [16] * n), (model, t, n)
                # n sequential jobs, each with its share of the tokens
                single = committed.predict(gpu, model, "single", 1, t // n, [16])
                assert n * single > fused, (model, t, n)
            # same on comm-bound multi-GPU steps (FSDP all-gather floor), slower otherwise
            lf = committed.predict(gpu, model, "lorafusion", 8, t, [16] * 8)
            fused = committed.predict(gpu, model, "fused", 8, t, [16] * 8)
            assert lf > fused if MODELS[model].gpus == 1 else lf >= fused, (model, t)


def test_single_calibrated_on_measured_peft_throughput(committed):
    # GPU.md, H200, HF PEFT Llama-3.1-8B r16 seq 1024: batch 1 -> 4441 tok/s, batch 4 -> 9085.
    for tokens, tok_s in ((1024, 4441.0), (4096, 9085.0)):
        t = committed.predict("H200", "llama-3.1-8b", "single", 1, tokens, [16])
        assert tokens / t == pytest.approx(tok_s, rel=1e-4)


def test_unknown_keys_and_bad_arguments_name_the_culprit(committed):
    with pytest.raises(KeyError, match="'A100'.*H100, H200"):
        committed.predict("A100", "llama-3.1-8b", "fused", 1, 1024, [16])
    with pytest.raises(KeyError, match="'gpt-5'.*llama-3.1-8b"):
        committed.predict("H200", "gpt-5", "fused", 1, 1024, [16])
    with pytest.raises(ValueError, match="'bmm'.*fused, loop, lorafusion, single"):
        committed.predict("H200", "llama-3.1-8b", "bmm", 1, 1024, [16])
    with pytest.raises(ValueError, match="single"):
        committed.predict("H200", "llama-3.1-8b", "single", 2, 1024, [16, 16])
    with pytest.raises(ValueError, match="ranks"):
        committed.predict("H200", "llama-3.1-8b", "fused", 2, 1024, [16])
    with pytest.raises(KeyError, match="'llama-tiny'.*H200/llama-3.1-8b"):
        committed.memory("H200", "llama-tiny")
    with pytest.raises(KeyError, match="'llama-tiny'"):
        committed.source("H200", "llama-tiny", "fused")


def test_memory_estimate_by_hand():
    estimates = CostModel.from_dir(costs="estimate")  # the measured 8B row would take over
    k0, k1, hbm = estimates.memory("H200", "llama-3.1-8b")
    assert k0 == pytest.approx(2 * 8_030_261_248 + 2 * 2**30, rel=1e-5)  # bf16 weights + 2 GiB
    # checkpoints 32*4096*2 + layer set (6*4096 + 2*1024 + 4*14336)*2 + logits 10*128256
    assert k1 == pytest.approx(262_144 + 167_936 + 1_282_560, rel=1e-5)
    assert hbm == 141e9
    k0_70, _, _ = estimates.memory("H100", "llama-3.1-70b")
    assert k0_70 < 80e9 and k0_70 > 2 * 70.5e9 / 4  # a quarter of the weights + FSDP buffers


def test_bad_csv_names_file_row_and_field(tmp_path: Path):
    write_rows(tmp_path / "memory.csv", MEMORY_COLUMNS, MEM)
    rows = [row(1, 1000, 1.0), row(2, 1000, "fast")]
    write_rows(tmp_path / "step_costs.csv", STEP_COLUMNS, rows)
    with pytest.raises(ValueError, match=r"step_costs.csv: row 2: field 'step_time_s'"):
        CostModel.from_dir(tmp_path)
    with open(tmp_path / "step_costs.csv", "w") as f:
        f.write("gpu,model,kernel\nG,llama-3.1-8b,fused\n")
    with pytest.raises(ValueError, match=r"step_costs.csv: missing column"):
        CostModel.from_dir(tmp_path)


def test_append_rows_is_atomic_and_measured_rows_take_over(tmp_path: Path):
    write_rows(tmp_path / "memory.csv", MEMORY_COLUMNS, MEM)
    write_rows(tmp_path / "step_costs.csv", STEP_COLUMNS, GRID)
    append_rows(tmp_path / "step_costs.csv", [row(1, 1000, 0.5, source="measured: G x"),
                                              row(1, 2000, 0.75, source="measured: G x")])
    append_rows(tmp_path / "memory.csv", [dict(MEM[0], k0_bytes=20.0, source="measured: G x")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.csv", "step_costs.csv"]
    cm = CostModel.from_dir(tmp_path)
    assert cm.predict("G", "llama-3.1-8b", "fused", 4, 3000, [16] * 4) == pytest.approx(1.0)
    assert cm.memory("G", "llama-3.1-8b") == (20.0, 2.0, 100.0)
    with pytest.raises(ValueError, match="exactly the columns"):
        append_rows(tmp_path / "step_costs.csv", [{"gpu": "G"}])
    with open(tmp_path / "step_costs.csv") as f:
        assert len(list(csv.reader(f))) == 1 + len(GRID) + 2  # failed append left it intact


def test_committed_tables_match_the_generator():
    from traces.profiles import estimate_costs as ec

    with open(DEFAULT_PROFILE_DIR / "step_costs.csv", newline="") as f:
        committed_rows = list(csv.DictReader(f))
    assert committed_rows == [{k: str(v) for k, v in r.items()} for r in ec.step_rows()]
    assert math.isclose(ec.MFU_BASE, 0.661, abs_tol=0.001)  # fitted: documents the calibration


def test_from_dir_uses_measured_tables_only_where_they_cover_every_kernel(tmp_path):
    meas = "measured: test"
    est_rows = [row(1, 1024, 1.0), row(1, 2048, 2.0), row(1, 1024, 3.0, kernel="loop"), row(1, 2048, 6.0, kernel="loop")]
    write_rows(tmp_path / "step_costs.csv", STEP_COLUMNS, est_rows)
    write_rows(tmp_path / "memory.csv", MEMORY_COLUMNS, [])
    write_rows(tmp_path / "measured_a.csv", STEP_COLUMNS, [row(1, 1024, 10.0, source=meas), row(1, 2048, 20.0, source=meas)])
    q = lambda c, k: c.predict("G", "llama-3.1-8b", k, 1, 1024, [16])
    # only fused is measured: auto keeps both kernels on estimates, measured mixes
    assert (q(CostModel.from_dir(tmp_path), "fused"), q(CostModel.from_dir(tmp_path), "loop")) == (1.0, 3.0)
    assert (q(CostModel.from_dir(tmp_path, "measured"), "fused"), q(CostModel.from_dir(tmp_path, "measured"), "loop")) == (10.0, 3.0)
    # loop measured too: auto switches the whole (gpu, model) to measured rows
    write_rows(tmp_path / "measured_b.csv", STEP_COLUMNS, [row(1, 1024, 30.0, kernel="loop", source=meas), row(1, 2048, 60.0, kernel="loop", source=meas)])
    auto = CostModel.from_dir(tmp_path)
    assert (q(auto, "fused"), q(auto, "loop")) == (10.0, 30.0)
    assert auto.source("G", "llama-3.1-8b", "loop") == meas
    est = CostModel.from_dir(tmp_path, "estimate")
    assert (q(est, "fused"), q(est, "loop")) == (1.0, 3.0)
    with pytest.raises(ValueError, match="costs"):
        CostModel.from_dir(tmp_path, "guess")
