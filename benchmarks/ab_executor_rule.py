"""A/B of the auto path rule in the executor's 8B step, on a GPU machine.

    python3 benchmarks/ab_executor_rule.py [--rounds 2]

Runs ``bench_executor.py --part throughput --tp-points 16x1:0`` alternately with the shipped
``kernels.launch.auto_path`` and with the rule before session 12 (gemm path only where
4·d_out <= d_in, i.e. the square projections on the stream path), ``rounds`` times each.
bench_executor appends one row per run to benchmarks/results/executor_throughput_h200.csv
without naming the rule: the rows alternate shipped / before, in the order printed here (the
session-12 rows had the rule added to their note by hand). Single runs vary by about 1-2 %,
hence the alternation.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import bench_executor  # noqa: E402
from kernels import launch  # noqa: E402

SHIPPED = launch.auto_path


def before_session_12(t: int, d_in: int, d_out: int) -> tuple[str, bool]:
    """auto_path's signature over launch.narrow_outputs_rule (the rule before session 12)."""
    return launch.narrow_outputs_rule(d_in, d_out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    for _ in range(args.rounds):
        for name, rule in (("shipped rule", SHIPPED), ("rule before session 12", before_session_12)):
            launch.auto_path = rule
            print("==", name, flush=True)
            sys.argv = ["bench_executor.py", "--part", "throughput", "--tp-points", "16x1:0",
                        "--tp-baselines", "0", "--tp-memory", "0"]
            bench_executor.main()
    launch.auto_path = SHIPPED


if __name__ == "__main__":
    main()
