"""The `alto` command line.

    alto simulate [--trace FILE|NAME] [--trace-format native|acme|philly|openb] [--gpus N]
                  [--policies a,b,...|all] [--out DIR]
    alto trace synth --tasks N --seed S --out FILE [--overwrite]
    alto trace convert --trace-format F IN --out FILE [--overwrite]
    alto run CONFIG.yaml --out DIR          (real training; needs the [train] extra)
    alto profile ...                        (measures cost tables on this device)
    alto figures DIR

Heavy imports (simpy, torch, matplotlib) happen inside the sub-command that needs them,
so `alto simulate` never imports torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alto.models import UnknownNameError

DEFAULT_OUT = "results/sim"


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a task trace on a GPU cluster under several policies")
    p.add_argument("--trace", default=None, help="trace file, or a bundled name (paper-11 [default], online-day)")
    p.add_argument("--trace-format", default="native", choices=["native", "acme", "philly", "openb"])
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs in the cluster (default 8; with --replay 1, the run's one device)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--gpu-type", default="H200", help="GPU type in the cost tables (default H200)")
    p.add_argument("--policies", default=None, help="comma-separated policies, or 'all' (default: sequential,mlora,lorafusion,alto)")
    p.add_argument("--costs", default="auto", choices=["auto", "estimate", "measured"],
                   help="step-cost tables: auto (measured where they cover every kernel of a model, "
                        "else estimates) [default], estimate, or measured (may mix)")
    p.add_argument("--cost-table", action="append", default=None, metavar="CSV",
                   help="a measured step-cost table to use beside the bundled ones (as `alto profile "
                        "--out CSV` writes it; its memory_CSV beside it too, if any); repeatable")
    p.add_argument("--curves", default=None, help="loss curves: parametric[:SEED] (default) or recorded:PATH")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the default parametric loss curves (default 0; with --curves, give it there)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes simulating task training in parallel (default 0: one per core; same results)")
    p.add_argument("--max-tasks", type=int, default=None, help="keep only the first N tasks of the trace")
    run = "RUN: an `alto run` config (YAML) or output folder (its run.json)"
    p.add_argument("--early-exit", default=None, metavar="RUN",
                   help=f"take the early-exit settings from {run}, e.g. to replay its curves with "
                        "recorded:; default: the paper's")
    p.add_argument("--admission-from", default=None, metavar="RUN",
                   help="also cap every task's admission as RUN did (memory max_total_batch, "
                        "max_active), beside the memory model: replays a run's queueing and warmup "
                        f"rotation ({run}); default: the memory model alone")
    p.add_argument("--replay", default=None, metavar="RUN_DIR",
                   help="replay an `alto run` output folder: its tasks as the trace (from run.json), "
                        "its recorded curves, early-exit settings and admission caps (each unless given), "
                        "on one GPU unless --gpus says otherwise")
    p.add_argument("--replay-model", default=None, metavar="NAME",
                   help="with --replay: the catalogue model whose step costs and memory stand in for "
                        "the run's. Default: the run's random:<name> model, but only if the cost tables "
                        "have rows for it; if not (e.g. llama-tiny of configs/tiny.yaml) the replay stops "
                        "with an error asking for this flag: pass e.g. --replay-model smollm2-135m")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_simulate)


def _add_trace(sub) -> None:
    p = sub.add_parser("trace", help="make or convert task traces")
    tsub = p.add_subparsers(dest="trace_cmd", required=True)
    s = tsub.add_parser("synth", help="synthetic trace: Poisson arrivals over a model mix")
    s.add_argument("--tasks", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--rate-per-hour", type=float, default=None, help="mean arrivals per hour")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused without)")
    s.set_defaults(func=cmd_trace_synth)
    c = tsub.add_parser("convert", help="convert a public cluster trace into the native task schema")
    c.add_argument("input")
    c.add_argument("--trace-format", required=True, choices=["acme", "philly", "openb"])
    c.add_argument("--max-tasks", type=int, default=None)
    c.add_argument("--out", required=True)
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused without)")
    c.set_defaults(func=cmd_trace_convert)


def _add_executor(sub) -> None:
    try:
        from alto.executor.cli_hooks import add_profile_args, add_run_args, profile_main, run_main
    except ImportError as e:  # torch missing: keep the sub-commands, explain on use
        msg = f"needs the training extra (pip install -e '.[train]'): {e}"
        for name in ("run", "profile"):
            p = sub.add_parser(name, help=f"({msg})")
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=lambda a, _m=msg: (_ for _ in ()).throw(UserError(_m)))
        return
    r = sub.add_parser("run", help="train a LoRA search for real on this machine's GPU (or CPU)")
    add_run_args(r)
    r.set_defaults(func=run_main)
    p = sub.add_parser("profile", help="measure step-time and memory tables on this device")
    add_profile_args(p)
    p.set_defaults(func=profile_main)


def _add_figures(sub) -> None:
    p = sub.add_parser("figures", help="draw paper-style figures from an `alto simulate` output folder")
    p.add_argument("dir")
    p.add_argument("--out", default=None, help="figure folder (default DIR/figures)")
    p.set_defaults(func=cmd_figures)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="alto", description="ALTO: LoRA hyperparameter tuning on shared GPUs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_simulate(sub)
    _add_trace(sub)
    _add_executor(sub)
    _add_figures(sub)
    return ap


def cmd_simulate(a) -> int:
    from sim.cli_simulate import simulate_main

    return simulate_main(a)


def cmd_trace_synth(a) -> int:
    from traces.schema import write_native
    from traces.synth import synth_trace

    if a.tasks <= 0:
        raise UserError(f"--tasks must be positive, got {a.tasks}")
    if a.seed < 0:  # (numpy's own message names no flag)
        raise UserError(f"--seed must be >= 0, got {a.seed}")
    _refuse_existing_out(a)
    kw = {} if a.rate_per_hour is None else {"rate_per_hour": a.rate_per_hour}
    tasks = synth_trace(a.tasks, a.seed, **kw)
    write_native(tasks, a.out)
    print(f"wrote {len(tasks)} tasks to {a.out} (last arrival {tasks[-1].arrival_s / 3600:.2f} h)")
    return 0


def _refuse_existing_out(a) -> None:
    """A trace command's --out file that exists (e.g. the bundled default trace) is replaced
    only with --overwrite."""
    if Path(a.out).is_file() and not a.overwrite:
        raise UserError(f"--out {a.out}: exists; pass --overwrite to replace it, or choose another file")


def cmd_trace_convert(a) -> int:
    from traces.loader import conversion_summary, load_trace
    from traces.schema import write_native

    kw = {} if a.max_tasks is None else {"max_tasks": a.max_tasks}
    if Path(a.out).resolve() == Path(a.input).resolve():
        raise UserError(f"--out {a.out}: is the input trace; the conversion would replace it")
    _refuse_existing_out(a)
    stats: dict = {}
    tasks = load_trace(a.input, a.trace_format, stats=stats, **kw)
    write_native(tasks, a.out)
    what = conversion_summary(stats)
    print(f"converted {len(tasks)} tasks from {a.input} ({a.trace_format}) to {a.out}" + (f": {what}" if what else ""))
    return 0


def cmd_figures(a) -> int:
    from analysis.figures import make_figures

    if not Path(a.dir, "summary.json").exists():
        if Path(a.dir, "run.json").exists():  # (simulate refuses to write into a run's folder)
            raise UserError(f"{a.dir}: an `alto run` folder, not simulation results; run `alto simulate "
                            f"--replay {a.dir} --out DIR` and then `alto figures DIR`")
        raise UserError(f"{a.dir}: no summary.json here; run `alto simulate --out {a.dir}` first")
    paths = make_figures(a.dir, a.out)
    for p in paths:
        print(p)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, UnknownNameError, FileNotFoundError) as e:
        # (any other KeyError is a bug: its traceback stays)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"alto {args.cmd}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be written (a file where a folder goes, rights)
        where = f": {e.filename}" if e.filename else ""
        print(f"alto {args.cmd}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alto {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
