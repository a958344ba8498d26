"""Registry of cluster policies the simulator compares.

A cluster policy is a *combination* of shared `alto.policy` pieces plus the kernel
cost class the step times are drawn from. Nothing here decides anything itself:
the early-exit rules, the intra-task packing and the inter-task planner all live in
`alto.policy`, so the same objects drive the real executor.

| name              | kernel cost  | early exit | planner | backfill | adapters at once      |
|-------------------|--------------|------------|---------|----------|-----------------------|
| sequential        | single       | none       | fifo    | -        | 1                     |
| mlora             | loop         | none       | fifo    | yes      | all that fit          |
| lorafusion        | lorafusion   | none       | fifo    | yes      | all that fit (groups of 4) |
| alto              | fused        | alto       | alto    | yes      | all that fit          |
| alto-no-ee        | fused        | none       | alto    | yes      | all that fit          |
| alto-fifo         | fused        | alto       | fifo    | yes      | all that fit          |
| alto-sjf          | fused        | alto       | sjf     | yes      | all that fit          |
| alto-no-backfill  | fused        | alto       | alto    | no       | all that fit (waves)  |
| alto-asha         | fused        | asha       | alto    | yes      | all that fit          |

Baselines use FIFO placement because that is what a plain shared cluster does;
the `alto-fifo` and `alto-sjf` ablations isolate the planner's share of ALTO's gain
(SJF orders by the same worst-case duration predictions the ALTO planner uses).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterPolicy:
    """One row of the table above.

    kernel: cost class passed to CostModel.predict ("single"|"loop"|"lorafusion"|"fused").
    early_exit: alto.policy.early_exit policy name ("alto"|"asha"|"none").
    planner: alto.policy.planner name ("alto"|"fifo"|"sjf"|"lpt").
    backfill: refill a freed adapter slot at once (False: refill only when the task's slots are all empty).
    max_active: cap on co-located adapters per task (None: the memory model decides).
    """

    name: str
    kernel: str
    early_exit: str
    planner: str
    backfill: bool = True
    max_active: int | None = None


POLICIES: dict[str, ClusterPolicy] = {
    p.name: p
    for p in [
        ClusterPolicy("sequential", "single", "none", "fifo", True, 1),
        ClusterPolicy("mlora", "loop", "none", "fifo"),
        ClusterPolicy("lorafusion", "lorafusion", "none", "fifo"),
        ClusterPolicy("alto", "fused", "alto", "alto"),
        ClusterPolicy("alto-no-ee", "fused", "none", "alto"),
        ClusterPolicy("alto-fifo", "fused", "alto", "fifo"),
        ClusterPolicy("alto-sjf", "fused", "alto", "sjf"),
        ClusterPolicy("alto-no-backfill", "fused", "alto", "alto", backfill=False),
        ClusterPolicy("alto-asha", "fused", "asha", "alto"),
    ]
}

DEFAULT_POLICIES = ("sequential", "mlora", "lorafusion", "alto")


def get_policies(names: str | list[str]) -> list[ClusterPolicy]:
    """Parse "a,b,c" (or "all") into policies; ValueError names an unknown one."""
    if isinstance(names, str):
        names = list(POLICIES) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for n in names:
        if n not in POLICIES:
            raise ValueError(f"--policies: unknown policy {n!r}; known: {', '.join(POLICIES)} (or 'all')")
        if POLICIES[n] in out:  # (its rows would be written twice under one summary entry)
            raise ValueError(f"--policies: {n!r} is listed twice")
        out.append(POLICIES[n])
    if not out:
        raise ValueError("--policies: no policy given")
    return out
