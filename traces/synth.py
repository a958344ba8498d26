"""Synthetic task traces, the paper's search spaces, and the bundled traces' generator.

Scenario of `synth_trace`: tuning tasks arrive as a Poisson process (exponential
inter-arrival times with mean 3600 / rate_per_hour seconds, the first task at the first
draw, not at 0). Each task draws, independently and in this order of RNG calls:
inter-arrivals (all tasks), models (from `model_mix`), datasets (uniform over `datasets`),
tenants (uniform over `n_tenants`). One `numpy.random.Generator(PCG64(seed))` drives all
draws, so the same arguments give the same trace, bit for bit.

Regenerate the committed CSVs (traces/bundled/) with:

    python3 -m traces.synth --write-bundled
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from alto.models import MODELS
from alto.policy.types import TaskSpec
from traces.schema import write_native

# ---------------------------------------------------------------- search spaces (paper §eval)

# 7-8B models (1 GPU): 5 lr x 3 rank x 4 batch = 60 configs.
SPACE_SMALL_MODEL = ((1e-5, 5e-5, 2e-4, 3e-4, 5e-4), (16, 32, 64), (1, 2, 4, 8))
# 32-70B models (2-4 GPUs): 4 lr x 4 rank x 4 batch = 64 configs.
SPACE_LARGE_MODEL = ((1e-5, 5e-5, 1e-4, 3e-4), (16, 32, 64, 128), (1, 2, 4, 8))
# Not from the paper: a 2x2x2 = 8-config corner of the paper grids, for fast experiments.
SPACE_SMALL_GRID = ((5e-5, 2e-4), (16, 64), (2, 8))

EPOCHS = 3.0  # paper: 3 epochs for every task

Space = tuple[tuple[float, ...], tuple[int, ...], tuple[int, ...]]


def paper_search_space(model: str, grid: str = "paper") -> Space:
    """(lrs, ranks, batch_sizes) for `model`.

    grid="paper": the paper's grid by model class: models that need >= 2 GPUs
    (32B, 70B) get the 64-config space, all others the 60-config 7-8B space.
    grid="small": SPACE_SMALL_GRID for every model (8 configs; not from the paper).
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(sorted(MODELS))}")
    if grid == "small":
        return SPACE_SMALL_GRID
    if grid != "paper":
        raise ValueError(f"grid must be 'paper' or 'small', got {grid!r}")
    return SPACE_LARGE_MODEL if MODELS[model].gpus >= 2 else SPACE_SMALL_MODEL


# ---------------------------------------------------------------- dataset choices

# (name, samples per epoch, max sequence length in tokens). GSM8K's train split has 7473
# examples; Tulu-3 SFT and OpenThoughts3 are large, so the paper uses subsets of them (their
# sizes are not given in the paper: 10k and 20k here are our choice).
DATASETS: tuple[tuple[str, int, int], ...] = (
    ("gsm8k", 7473, 1024),
    ("tulu3-10k", 10_000, 2048),
    ("tulu3-20k", 20_000, 2048),
    ("openthoughts-10k", 10_000, 2048),
    ("openthoughts-20k", 20_000, 2048),
)

# Default model mix of synth_trace (weights, normalised): mostly 1-GPU tasks, some 32B
# (2 GPUs) and fewer 70B (4 GPUs). A modelling choice, not a measured distribution.
DEFAULT_MODEL_MIX: dict[str, float] = {
    "llama-3.1-8b": 0.3,
    "qwen2.5-7b": 0.3,
    "qwen2.5-32b": 0.25,
    "llama-3.1-70b": 0.15,
}


def _normalised_mix(model_mix: dict[str, float]) -> tuple[list[str], np.ndarray]:
    if not model_mix:
        raise ValueError("model_mix is empty")
    names = list(model_mix)
    for name in names:
        if name not in MODELS:
            raise ValueError(
                f"model_mix: unknown model {name!r}; known: {', '.join(sorted(MODELS))}"
            )
    w = np.array([float(model_mix[n]) for n in names])
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"model_mix weights must be finite, >= 0 and not all 0: {model_mix}")
    return names, w / w.sum()


def synth_trace(
    n_tasks: int,
    seed: int,
    rate_per_hour: float = 4.0,
    model_mix: dict[str, float] | None = None,
    *,
    datasets: tuple[tuple[str, int, int], ...] = DATASETS,
    n_tenants: int = 4,
    grid: str = "paper",
    epochs: float = EPOCHS,
    id_prefix: str = "syn",
) -> list[TaskSpec]:
    """A seeded synthetic trace of `n_tasks` tuning tasks, sorted by arrival.

    rate_per_hour: Poisson arrival rate (tasks per hour); mean inter-arrival 3600/rate s.
    model_mix: model -> weight (normalised); default DEFAULT_MODEL_MIX. gpus = the model's
    minimum GPU count. datasets: (name, size, seq_len) choices, uniform. Tenants are
    "tenant-1".."tenant-<n_tenants>". grid: "paper" or "small" (see paper_search_space).
    Arrival times are rounded to 0.1 s. Task ids: "<id_prefix>-<i:04d>-<model>-<dataset>".
    """
    if not isinstance(n_tasks, int) or n_tasks <= 0:
        raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
    if not (math.isfinite(rate_per_hour) and rate_per_hour > 0):
        raise ValueError(f"rate_per_hour must be > 0, got {rate_per_hour!r}")
    if n_tenants <= 0:
        raise ValueError(f"n_tenants must be > 0, got {n_tenants!r}")
    if not datasets:
        raise ValueError("datasets is empty")
    names, probs = _normalised_mix(model_mix or DEFAULT_MODEL_MIX)
    rng = np.random.Generator(np.random.PCG64(seed))
    gaps = rng.exponential(3600.0 / rate_per_hour, size=n_tasks)  # seconds
    arrivals = np.cumsum(gaps)
    model_idx = rng.choice(len(names), size=n_tasks, p=probs)
    data_idx = rng.integers(0, len(datasets), size=n_tasks)
    tenant_idx = rng.integers(1, n_tenants + 1, size=n_tasks)
    tasks = []
    for i in range(n_tasks):
        model = names[int(model_idx[i])]
        dname, dsize, seq = datasets[int(data_idx[i])]
        lrs, ranks, batches = paper_search_space(model, grid)
        tasks.append(
            TaskSpec(
                task_id=f"{id_prefix}-{i:04d}-{model}-{dname}",
                arrival_s=round(float(arrivals[i]), 1),
                tenant=f"tenant-{int(tenant_idx[i])}",
                model=model,
                gpus=MODELS[model].gpus,
                dataset_size=int(dsize),
                seq_len=int(seq),
                epochs=float(epochs),
                lrs=lrs,
                ranks=ranks,
                batch_sizes=batches,
            )
        )
    return tasks


# ---------------------------------------------------------------- bundled traces

# The paper's multi-task scenario: 11 tasks on 8 GPUs, all submitted at time 0, mixing 70B
# (4 GPUs), 32B (2 GPUs) and 7-8B (1 GPU) models. The paper does not list the 11 tasks, so
# this mix (2 x 70B, 3 x 32B, 6 x 7-8B) and the dataset per task are OUR choice.
PAPER_11_MIX: tuple[tuple[str, str, str], ...] = (
    # (model, dataset name from DATASETS, tenant)
    ("llama-3.1-70b", "gsm8k", "tenant-1"),
    ("llama-3.1-70b", "tulu3-10k", "tenant-2"),
    ("qwen2.5-32b", "gsm8k", "tenant-3"),
    ("qwen2.5-32b", "openthoughts-10k", "tenant-1"),
    ("qwen2.5-32b", "tulu3-20k", "tenant-2"),
    ("llama-3.1-8b", "gsm8k", "tenant-3"),
    ("llama-3.1-8b", "tulu3-20k", "tenant-1"),
    ("llama-3.1-8b", "openthoughts-10k", "tenant-2"),
    ("qwen2.5-7b", "gsm8k", "tenant-3"),
    ("qwen2.5-7b", "tulu3-10k", "tenant-1"),
    ("qwen2.5-7b", "openthoughts-20k", "tenant-2"),
)

ONLINE_DAY = {"n_tasks": 40, "seed": 20260424, "rate_per_hour": 40 / 24}  # contended at ~32 GPUs


def paper_11_tasks() -> list[TaskSpec]:
    """The bundled "paper-11" trace: PAPER_11_MIX, all at t=0, paper grids, 3 epochs."""
    by_name = {d[0]: d for d in DATASETS}
    tasks = []
    for i, (model, dname, tenant) in enumerate(PAPER_11_MIX, start=1):
        _, size, seq = by_name[dname]
        lrs, ranks, batches = paper_search_space(model)
        tasks.append(
            TaskSpec(
                task_id=f"t{i:02d}-{model}-{dname}",
                arrival_s=0.0,
                tenant=tenant,
                model=model,
                gpus=MODELS[model].gpus,
                dataset_size=size,
                seq_len=seq,
                epochs=EPOCHS,
                lrs=lrs,
                ranks=ranks,
                batch_sizes=batches,
            )
        )
    return tasks


def online_day_tasks() -> list[TaskSpec]:
    """The bundled "online-day" trace: 40 Poisson arrivals at 40/24 per hour (~24 h)."""
    return synth_trace(**ONLINE_DAY, id_prefix="day")


BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_FILES = {"paper-11": "paper_11tasks.csv", "online-day": "online_day.csv"}
BUNDLED_MAKERS = {"paper-11": paper_11_tasks, "online-day": online_day_tasks}


def write_bundled(out_dir: Path = BUNDLED_DIR) -> list[Path]:
    """(Re)write the bundled CSVs into out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fname in BUNDLED_FILES.items():
        path = out_dir / fname
        write_native(BUNDLED_MAKERS[name](), path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-bundled", action="store_true", help="rewrite traces/bundled/*.csv")
    ap.add_argument("--tasks", type=int, help="number of tasks of a synthetic trace")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate-per-hour", type=float, default=4.0, help="Poisson rate, tasks/h")
    ap.add_argument("--grid", choices=("paper", "small"), default="paper")
    ap.add_argument("--out", type=Path, help="output CSV (native schema)")
    args = ap.parse_args(argv)
    if args.write_bundled:
        for p in write_bundled():
            print(p)
        return
    if args.tasks is None or args.out is None:
        ap.error("give --write-bundled, or --tasks N and --out FILE")
    write_native(synth_trace(args.tasks, args.seed, args.rate_per_hour, grid=args.grid), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
