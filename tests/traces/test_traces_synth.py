"""synth_trace: determinism, Poisson arrivals, model mix, search spaces; the bundled traces."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from traces.loader import BUNDLED, DEFAULT_TRACE, load_trace
from traces.schema import TraceError, read_native, write_native
from traces.synth import paper_search_space, synth_trace, write_bundled

# The paper's grids, typed in from the paper (not imported from the code under test).
LRS_7_8B = (1e-5, 5e-5, 2e-4, 3e-4, 5e-4)
LRS_32_70B = (1e-5, 5e-5, 1e-4, 3e-4)


def test_same_seed_identical_different_seed_differs():
    a = synth_trace(50, seed=3)
    assert a == synth_trace(50, seed=3)
    b = synth_trace(50, seed=4)
    assert [t.arrival_s for t in a] != [t.arrival_s for t in b]
    assert [t.model for t in a] != [t.model for t in b]


def test_poisson_rate_and_exponential_gaps():
    rate = 6.0  # per hour -> mean gap 600 s
    tasks = synth_trace(2000, seed=11, rate_per_hour=rate)
    arr = np.array([0.0] + [t.arrival_s for t in tasks])
    gaps = np.diff(arr)
    assert np.all(gaps >= 0) and tasks[0].arrival_s > 0
    # standard error of the mean gap: 600 / sqrt(2000) = 13.4 s; allow 4 of them
    assert abs(gaps.mean() - 600.0) < 54.0
    # exponential: std == mean (coefficient of variation 1)
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.1


def test_model_mix_frequencies_and_gpus():
    tasks = synth_trace(2000, seed=5, model_mix={"qwen2.5-7b": 3, "llama-3.1-70b": 1})
    c = Counter(t.model for t in tasks)
    assert set(c) == {"qwen2.5-7b", "llama-3.1-70b"}
    assert abs(c["llama-3.1-70b"] / 2000 - 0.25) < 0.04  # 4 sigma of a binomial(2000, .25)
    assert {t.gpus for t in tasks if t.model == "llama-3.1-70b"} == {4}
    assert {t.gpus for t in tasks if t.model == "qwen2.5-7b"} == {1}


def test_paper_grids_and_small_grid():
    (t,) = synth_trace(1, seed=0, model_mix={"llama-3.1-70b": 1})
    assert (t.lrs, t.ranks, t.batch_sizes, t.epochs) == (
        LRS_32_70B,
        (16, 32, 64, 128),
        (1, 2, 4, 8),
        3.0,
    )
    assert len(t.jobs()) == 64
    (t,) = synth_trace(1, seed=0, model_mix={"llama-3.1-8b": 1})
    assert (t.lrs, t.ranks, t.batch_sizes) == (LRS_7_8B, (16, 32, 64), (1, 2, 4, 8))
    assert len(t.jobs()) == 60
    (t,) = synth_trace(1, seed=0, grid="small")
    assert len(t.jobs()) == 8
    assert paper_search_space("qwen2.5-32b")[0] == LRS_32_70B


def test_datasets_tenants_and_validity(tmp_path):
    tasks = synth_trace(300, seed=1, n_tenants=3)
    assert {(t.dataset_size, t.seq_len) for t in tasks} <= {
        (7473, 1024),
        (10000, 2048),
        (20000, 2048),
    }
    assert {t.tenant for t in tasks} == {"tenant-1", "tenant-2", "tenant-3"}
    assert [t.arrival_s for t in tasks] == sorted(t.arrival_s for t in tasks)
    p = tmp_path / "s.csv"
    write_native(tasks, p)
    assert read_native(p) == tasks


@pytest.mark.parametrize(
    "kw",
    [
        {"n_tasks": 0, "seed": 0},
        {"n_tasks": 3, "seed": 0, "rate_per_hour": 0.0},
        {"n_tasks": 3, "seed": 0, "model_mix": {"gpt-5": 1.0}},
        {"n_tasks": 3, "seed": 0, "model_mix": {"qwen2.5-7b": -1.0}},
        {"n_tasks": 3, "seed": 0, "grid": "huge"},
    ],
)
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        synth_trace(**kw)


# ---------------------------------------------------------------- bundled traces


def test_paper_11_is_the_papers_scenario():
    assert DEFAULT_TRACE == "paper-11" and BUNDLED["paper-11"].name == "paper_11tasks.csv"
    tasks = load_trace(DEFAULT_TRACE)
    assert len(tasks) == 11 and {t.arrival_s for t in tasks} == {0.0}
    by_model = Counter(t.model for t in tasks)
    assert by_model == {"llama-3.1-70b": 2, "qwen2.5-32b": 3, "llama-3.1-8b": 3, "qwen2.5-7b": 3}
    assert sorted(t.gpus for t in tasks) == [1] * 6 + [2] * 3 + [4] * 2
    assert sum(len(t.jobs()) for t in tasks) == 2 * 64 + 3 * 64 + 6 * 60
    assert {t.epochs for t in tasks} == {3.0}
    load_trace(DEFAULT_TRACE, cluster_gpus=8)  # fits the paper's 8-GPU node
    with pytest.raises(TraceError) as ei:
        load_trace(DEFAULT_TRACE, cluster_gpus=2)
    assert ei.value.field == "gpus"


def test_online_day():
    tasks = load_trace("online-day", cluster_gpus=16)
    assert len(tasks) == 40
    assert 0 < tasks[0].arrival_s and 20 * 3600 < tasks[-1].arrival_s < 28 * 3600


def test_committed_bundled_files_match_generator(tmp_path):
    for p in write_bundled(tmp_path):
        assert (
            p.read_bytes() == BUNDLED[{v.name: k for k, v in BUNDLED.items()}[p.name]].read_bytes()
        )


def test_load_trace_options():
    assert [t.task_id for t in load_trace("online-day", max_tasks=3)] == [
        t.task_id for t in load_trace("online-day")[:3]
    ]
    with pytest.raises(TraceError, match="unknown trace format 'csv'"):
        load_trace("paper-11", "csv")
