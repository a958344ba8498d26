"""Interleaved A/B of layer-step variants (GPU time, CUDA graphs), for differences of a few %.

    python3 benchmarks/ab_layer.py --variants fused,fused_session12 --cells 4096x4096x4096x32 \\
        [--rounds 15] [--replays 20]

Why: bench_multi_lora.py times each variant once, one after the other, and a cell's ratio
moves by 2-8 % from run to run (clocks, the L2's state), as much as the changes under test.
Here every variant of a cell (bench_multi_lora.FUSED_VARIANTS names, plus "base") is captured
once in its own CUDA graph, then the graphs are replayed in ``rounds`` rounds, the variants'
order rotated each round; each round times ``replays`` back-to-back replays of one graph with
CUDA events (``rounds`` is rounded up to a multiple of the variant count, so every variant
runs in every slot equally often; runs of session 13 before this rounding used 8 or 20
rounds as given). Reported per variant: the median over rounds of ms per step, its ratio to the
base's median, and how many rounds it beat the first fused variant in the same round (a
paired count: drift between rounds cancels). Rows go to benchmarks/results/ab_layer.csv.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # (imported as a module too)
from bench_multi_lora import make_inputs, shape_of, step_fn  # noqa: E402

from benchmarks.results_csv import append_results  # noqa: E402

COLUMNS = ["date", "gpu", "torch", "triton", "shape", "T", "N", "variant", "rounds", "replays",
           "median_ms", "min_ms", "ratio_to_base", "wins_vs_ref", "ref"]  # fmt: skip


def capture(fn) -> torch.cuda.CUDAGraph:
    """fn captured in a graph on a side stream, after two eager runs on that stream (kernels
    compiled, the layout's tables and the stream's split-K workspace built outside capture)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    torch.cuda.synchronize()
    return graph


def time_replays(graph: torch.cuda.CUDAGraph, replays: int) -> float:
    """ms per replay over ``replays`` back-to-back replays."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()  # (the first replay after another graph's may see a colder L2)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def round_orders(variants: list[str], rounds: int) -> list[list[str]]:
    """The variants' order in each round: rotated by one per round, over ``rounds`` rounded up
    to a multiple of len(variants), so that every variant runs in every slot equally often."""
    n = len(variants)
    return [variants[r % n:] + variants[: r % n] for r in range(-(-rounds // n) * n)]


def ab_cell(shape: str, t: int, n: int, variants: list[str], rounds: int,
            replays: int) -> dict[str, list[float]]:  # fmt: skip
    """ms per step of each variant, one entry per round (order rotated each round)."""
    inp = make_inputs(*shape_of(shape), t, n)
    graphs = {v: capture(step_fn(v, inp)) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for order in round_orders(variants, rounds):
        for v in order:
            times[v].append(time_replays(graphs[v], replays))
    del graphs
    torch.cuda.empty_cache()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", required=True,
                   help="comma-separated; the first is the reference of wins_vs_ref")
    p.add_argument("--cells", required=True, help="SHAPExTxN, comma-separated")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/ab_layer.csv")
    args = p.parse_args()
    import triton

    variants = ["base"] + [v for v in args.variants.split(",") if v != "base"]
    ref = variants[1]
    rounds = len(round_orders(variants, args.rounds))
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    for cell in args.cells.split(","):
        *shape_parts, t, n = cell.split("x")
        shape, t, n = "x".join(shape_parts), int(t), int(n)
        times = ab_cell(shape, t, n, variants, rounds, args.replays)
        base = statistics.median(times["base"])
        rows = []
        for v in variants:
            med = statistics.median(times[v])
            wins = sum(a < b for a, b in zip(times[v], times[ref], strict=True))
            rows.append(dict(date=date, gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                             triton=triton.__version__, shape=shape, T=t, N=n, variant=v,
                             rounds=rounds, replays=args.replays, median_ms=f"{med:.4f}",
                             min_ms=f"{min(times[v]):.4f}", ratio_to_base=f"{med / base:.3f}",
                             wins_vs_ref=wins, ref=ref))  # fmt: skip
            print(f"{shape:>11} T={t:>5} N={n:>2} {v:>22}: {med:.4f} ms  x{med / base:.3f}  "
                  f"beat {ref} in {wins}/{rounds}", flush=True)
        append_results(args.out, COLUMNS, rows)


if __name__ == "__main__":
    main()
