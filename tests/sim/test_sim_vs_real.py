"""The simulator, replaying a real run's loss curves, makes the real run's decisions.

traces/curves/smollm2_gsm_symbolic_h200.csv was recorded by `alto run
configs/smollm2_gsm.yaml` on an H200 (SmolLM2-135M, reasoning-gym gsm_symbolic, 256 train
samples, 1 epoch, seq 192, the paper's 60-config grid, ALTO policy with paper defaults).
That run ended with 45 underperforming exits, 1 overfitting exit and 14 completed configs
(benchmarks/results/executor_search_h200.csv). Early-exited configs stop being recorded
where the executor stopped them, so the samples each config trained are in the file.

The same task simulated with those curves must stop every config at exactly the sample
count the executor stopped it at: both drivers run the same policy objects on the same
losses at the same evaluation points. traces/curves/smollm2_random_gsm_symbolic_h200.csv is
a second run of that shape (random init, the session-18 executor), checked the same way.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from alto.policy.types import TaskSpec
from sim.cluster import ClusterSim, SimConfig
from sim.cost_model import CostModel
from sim.policies import POLICIES
from sim.recorded_curves import RecordedCurves

CURVE_DIR = Path(__file__).resolve().parents[2] / "traces" / "curves"
GRID = ((1e-5, 5e-5, 2e-4, 3e-4, 5e-4), (16, 32, 64), (1, 2, 4, 8))


@pytest.mark.parametrize("curves_file,curve_set,reasons", [
    # SmolLM2-135M-Instruct (GGUF), 2026-11-28
    ("smollm2_gsm_symbolic_h200.csv", "smollm2-gsm_symbolic",
     {"underperforming": 45, "overfitting": 1, "completed": 14}),
    # the session-18 executor on a random-init SmolLM2 shape, 2026-11-29 (one config diverged,
    # at 232 samples)
    ("smollm2_random_gsm_symbolic_h200.csv", "smollm2-random-gsm_symbolic",
     {"underperforming": 45, "divergence": 1, "completed": 14}),
])
def test_replayed_real_curves_give_the_real_decisions(curves_file, curve_set, reasons):
    path = CURVE_DIR / curves_file
    real_samples: dict[str, int] = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            real_samples[r["job_id"]] = max(real_samples.get(r["job_id"], 0), int(r["samples"]))
    task = TaskSpec("gsm_symbolic", 0.0, "t", "smollm2-135m", 1, 256, 192, 1.0, *GRID)
    curves = RecordedCurves(path, curve_task={"gsm_symbolic": curve_set})
    sim = ClusterSim([task], POLICIES["alto"], SimConfig(gpus=1), CostModel.from_dir(), curves)
    (outcome,) = sim.run()
    sim_samples = {j.job.job_id: j.samples_trained for j in outcome.jobs}
    assert len(real_samples) == 60
    assert sim_samples == real_samples
    assert Counter(j.exit_reason.value for j in outcome.jobs) == reasons
