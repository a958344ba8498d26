"""A/B of the backward's second-stream setting in a whole executor step, on a GPU machine.

    python3 benchmarks/ab_executor_side.py [--model llama-3.2-1b] [--points 32x1x512,32x2x512]
        [--rounds 4] [--iters 3]

Builds the model once (random weights) and, for each point NxBxL (N adapters, B rows of L
tokens each, ranks cycled from 16 / 32 / 64), times fused training steps with each setting in
turn, ``rounds`` times: TUNE["bwd_side_when"] "gpu_bound" (shipped), "always", and
TUNE["bwd_side"] None (one stream). Interleaving matters: on the H200 host single runs of the
1B step at B = 1 varied by 30 % (0.47 against 0.62 s). Prints each step time and how many
layers forked, and appends one row per (point, setting, round) to
benchmarks/results/ab_executor_side.csv.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alto.executor.lora_model import MultiLoraModel  # noqa: E402
from alto.executor.models import random_model  # noqa: E402
from alto.executor.profile import make_adapters, time_step  # noqa: E402
from alto.models import LORA_TARGETS  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402
from kernels import TUNE, side_stream  # noqa: E402

SETTINGS = {"gpu_bound": dict(bwd_side="db+da", bwd_side_when="gpu_bound"),
            "always": dict(bwd_side="db+da", bwd_side_when="always"),
            "one_stream": dict(bwd_side=None, bwd_side_when="gpu_bound")}  # fmt: skip
COLUMNS = ["date", "gpu", "torch", "model", "point", "setting", "round", "step_median_s",
           "step_p20_s", "step_p80_s", "layers_forked", "layers_one_stream"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-3.2-1b")
    ap.add_argument("--points", default="32x1x512,32x2x512")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/ab_executor_side.csv")
    args = ap.parse_args()
    dev = torch.device("cuda")
    mlm = MultiLoraModel(random_model(args.model, torch.bfloat16, dev, 0), LORA_TARGETS, fused_ops=True)
    mlm.use_impl("fused")
    shipped = {k: TUNE[k] for k in ("bwd_side", "bwd_side_when")}
    stamp = dict(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                 gpu=torch.cuda.get_device_name(), torch=torch.__version__, model=args.model)
    rows = []
    try:
        for point in args.points.split(","):
            n, b, seq = (int(v) for v in point.split("x"))
            ads = make_adapters(mlm, [(16, 32, 64)[i % 3] for i in range(n)], b)
            for rnd in range(args.rounds):
                for name, setting in SETTINGS.items():
                    TUNE.update(setting)
                    before = dict(side_stream.DECISIONS)
                    med, p20, p80 = time_step(mlm, ads, [b] * n, seq, mlm.model.config.vocab_size,
                                              warmup=1, iters=args.iters)  # fmt: skip
                    forked = side_stream.DECISIONS["side"] - before["side"]
                    one = side_stream.DECISIONS["one_stream"] - before["one_stream"]
                    print(f"{point} round {rnd} {name:10s} {med * 1e3:8.1f} ms "
                          f"(p20 {p20 * 1e3:.1f}, p80 {p80 * 1e3:.1f}); forked {forked}, "
                          f"one stream {one}", flush=True)  # fmt: skip
                    rows.append(dict(stamp, point=point, setting=name, round=rnd,
                                     step_median_s=f"{med:.5g}", step_p20_s=f"{p20:.5g}",
                                     step_p80_s=f"{p80:.5g}", layers_forked=forked,
                                     layers_one_stream=one))  # fmt: skip
            del ads
    finally:
        TUNE.update(shipped)
        append_results(args.out, COLUMNS, rows)


if __name__ == "__main__":
    main()
