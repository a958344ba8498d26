"""Figure of the multi-LoRA layer benchmark, drawn only from benchmarks/results/multi_lora.csv.

Run:  python3 analysis/plot_kernels.py [--csv benchmarks/results/multi_lora.csv]
                                       [--out analysis/figures/multi_lora.png] [--shapes A,B,...]

One panel per layer shape (default: issue #3's four Llama-3.1-8B projections; the CSV also
holds other shapes, e.g. SmolLM2's, measured at other adapter counts): fwd+bwd time of each variant relative to the base GEMM alone
(base = 1), against tokens T, one line style per adapter count N. Top row: eager calls, the
host's launch cost included (do_bench); bottom row: GPU time alone, the step replayed from a
CUDA graph (gpu_ratio_vs_base; runs from 2026-11-29 on, base and fused variants only). The
latest row per (gpu, shape, T, N, variant) is used; the dotted line is the 1.2x target.
"auto" (thick) is the latest row that measured the shipped code: the path
kernels.launch.auto_path picks (fused_stream, or fused_gemm for the k/v and square
projections) or the default "fused" from runs of the shipped code (N = 8, 32 and 64).
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

COLORS = {"auto": "k", "fused_split": "C0", "fused_one": "C9", "fused_pair": "C4", "loop": "C3",
          "separate": "C1"}
RULE_VARIANT = {("split", False): "fused_split", ("fused", False): "fused_one",
                ("fused", True): "fused_pair", ("stream", False): "fused_stream",
                ("gemm", False): "fused_gemm"}
STYLES = {8: "-", 32: "--", 64: ":"}


# Rows that measured today's shipped code (docs/kernels_log.md §3e-§3g): the rule's own variant
# or the shipped default "fused", from SHIPPED_SINCE[path] on, path = what the auto rule picks
# for the shape. gemm since 09:40Z, the first run with the ticketed split-K shrink and the
# rank-granular adapter tiles; stream since 10:05Z, with P fed untouched to the expand's dot
# too (only T = 4096 / 8192 re-measured; before: 07:00Z, relaxed atomics and vectorised rank-axis
# loads; stream since 05:54Z, gemm since 06:23Z). Earlier rows measured older kernels and are
# not drawn as "auto" (rows "fused_at_0aab245" re-measured the 07:00Z kernels at 09:4xZ).
# gemm since 11:15Z: the gemm path's GEMM in Gluon on Hopper (kernels/gemm_lora_gluon.py;
# rows "fused_gluon" of 11:02Z / 11:08Z measured it before it became the default, rows
# "fused_gemm_triton" measure the Triton GEMM since).
# Both since 12:23Z (session 11): the x and dY shrinks in Gluon on Hopper (kernels/shrink_gluon.py;
# rows "fused_sh_triton" measure the Triton shrink since, rows "fused_shgluon_*" its first
# builds; T = 4096 / 8192 only re-measured).
# gemm since 13:56Z (session 12): the Gluon GEMM's LoRA MMA cut to the rank (gm_rank_k), and
# the auto rule sending 4096² to the gemm path (its "fused" rows before measured the stream
# path); that run re-measured T = 2048-16384.
# Both since 14:08Z (the last run of session 12): the Gluon shrink's gated stream-K split.
# Both since 15:34Z (session 13): the Gluon shrink's row tile by tile count (sh_gl_bm "auto"),
# and on the gemm path the Gluon GEMM's fourth ring stage with C stored in halves.
# gemm since 16:55Z (session 14): S's rows masked in registers (gm_s_regs) and dA / dB on a
# second stream, dA enqueued after the dX GEMM (TUNE bwd_side); the stream path's kernels did
# not change.
SHIPPED_SINCE = {"stream": "2026-11-29T15:34Z", "gemm": "2026-11-29T16:55Z"}


def _is_current(variant: str, date: str, rule_variant: str, path: str) -> bool:
    return date >= SHIPPED_SINCE[path] and variant in (rule_variant, "fused")


LLAMA_8B_SHAPES = ("4096x14336", "14336x4096", "4096x4096", "4096x1024")


def load(path: str) -> pd.DataFrame:
    """Latest row of each (gpu, shape, T, N, variant); ratio_vs_base is within that row's run.
    Adds variant "auto": the latest row that measured today's shipped code (_is_current)."""
    from kernels.launch import auto_path

    df = pd.read_csv(path).sort_values("date")
    df = df.drop_duplicates(["gpu", "shape", "T", "N", "variant"], keep="last")
    picks = []
    for _, r in df.drop_duplicates(["gpu", "shape", "T", "N"]).iterrows():
        d_in, d_out = (int(v) for v in r["shape"].split("x"))
        rule = auto_path(int(r["T"]), d_in, d_out)  # (path, wgrad_pair)
        var = RULE_VARIANT[rule]
        case = df[(df["gpu"] == r["gpu"]) & (df["shape"] == r["shape"]) & (df["T"] == r["T"])
                  & (df["N"] == r["N"])]  # fmt: skip
        hit = case[[_is_current(v, d, var, rule[0])
                    for v, d in zip(case["variant"], case["date"], strict=True)]]  # fmt: skip
        if not hit.empty:
            picks.append(hit.iloc[-1].copy())
            picks[-1]["variant"] = "auto"
    return pd.concat([df, pd.DataFrame(picks)], ignore_index=True) if picks else df


def plot(df: pd.DataFrame, out: str) -> None:
    shapes = list(dict.fromkeys(df["shape"]))
    rows_of = [("ratio_vs_base", "eager (host included)"), ("gpu_ratio_vs_base", "GPU only (graph)")]
    if "gpu_ratio_vs_base" not in df or df["gpu_ratio_vs_base"].isna().all():
        rows_of = rows_of[:1]
    fig, axes = plt.subplots(len(rows_of), len(shapes), figsize=(4.2 * len(shapes), 3.6 * len(rows_of)),
                             squeeze=False)  # fmt: skip
    for row, (metric, what) in zip(axes, rows_of, strict=True):
        for ax, shape in zip(row, shapes, strict=True):
            sub = df[(df["shape"] == shape) & df[metric].notna()]
            for var, color in COLORS.items():
                for n, style in STYLES.items():
                    pts = sub[(sub["variant"] == var) & (sub["N"] == n)].sort_values("T")
                    if pts.empty:
                        continue
                    label = f"{var} N={n}" if shape == shapes[0] and metric == "ratio_vs_base" else None
                    ax.plot(pts["T"], pts[metric], style, color=color, marker="o",
                            ms=3, label=label, lw=2.2 if var == "auto" else 1.0)  # fmt: skip
            ax.axhline(1.2, color="k", lw=0.8, ls=(0, (1, 3)))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{shape}, {what}", fontsize=9)
            ax.set_xlabel("tokens T")
            ax.set_ylabel("time / base GEMM (fwd + dX)")
            ax.grid(alpha=0.3, which="both")
    gpu = df["gpu"].iloc[0]
    fig.suptitle(f"multi-LoRA linear fwd+bwd, {gpu}, torch {df['torch'].iloc[0]}, "
                 f"triton {df['triton'].iloc[0]} (runs {df['date'].min()} .. {df['date'].max()})", fontsize=10)  # fmt: skip
    fig.legend(loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=130)
    print("wrote", out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--csv", default="benchmarks/results/multi_lora.csv")
    p.add_argument("--out", default="analysis/figures/multi_lora.png")
    p.add_argument("--shapes", default=",".join(LLAMA_8B_SHAPES), help="d_inxd_out panels, in order")
    args = p.parse_args()
    df = load(args.csv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    missing = [s for s in shapes if s not in set(df["shape"])]
    if missing:
        raise SystemExit(f"--shapes: {', '.join(missing)} not in {args.csv}")
    plot(df[df["shape"].isin(shapes)], args.out)


if __name__ == "__main__":
    main()
