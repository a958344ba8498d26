"""The one policy package: every decision ALTO makes, for both drivers.

Pure Python (numpy/scipy only); never reads a clock: time arrives inside events.

- `types`: events (LossReported, JobExited, TaskArrived, TaskFinished, GpusFreed),
  decisions (Admit, Pause, Exit, StartTask), JobConfig, TaskSpec, ExitReason.
- `early_exit`: ALTO's rules (divergence, overfitting, warmup cutoff), ASHA, none.
- `memory`: M(B) = k0 + k1·B·L, least-squares fit with a safety margin.
- `task_tuner`: one task's admission, backfill, warmup rotation and cutoff.
- `planner`: inter-task planning (exact MILP / LPT list scheduling, FIFO, SJF).
- `placement`: node-aware GPU pool.
"""
