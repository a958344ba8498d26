"""`alto simulate`: load and validate the trace, simulate each policy, print and write results.

All input is validated before any output is written, and the result files are moved
into --out only once every policy has finished, so a bad trace leaves nothing behind.
--out may replace an earlier simulation's results (said on stderr), never a run's or an input's.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from alto.models import UnknownNameError
from alto.policy.early_exit import EarlyExitConfig
from sim.cluster import SimConfig
from sim.cost_model import CostModel
from sim.loss_curves import make_curve_source
from sim.policies import DEFAULT_POLICIES, POLICIES, get_policies
from sim.recorded_curves import UNFINISHED_EXITS, read_run_jobs, recorded_paths
from sim.results import check_out_dir, write_results
from sim.runner import format_table, result_tables, simulate_policies, stderr_progress


def resolve_trace(trace: str | None) -> tuple[Path, str]:
    """A bundled name or a path -> (path, label). Unknown names and missing files raise."""
    from traces.loader import BUNDLED, DEFAULT_TRACE

    name = trace or DEFAULT_TRACE
    if name in BUNDLED:
        return Path(BUNDLED[name]), f"bundled:{name}"
    p = Path(name)
    if not p.exists():
        raise FileNotFoundError(f"--trace: no such file {name!r} (bundled traces: {', '.join(BUNDLED)})")
    return p, str(p)


def _run_settings(path: str, flag: str) -> dict:
    """alto.executor.config.read_run_settings, its errors as ValueErrors naming ``flag``."""
    from alto.executor.config import ConfigError, read_run_settings

    try:
        return read_run_settings(path)
    except ConfigError as e:
        raise ValueError(f"{flag} {path}: {e}") from None


def _listed(names: list[str], first: int = 3) -> str:
    """The first few names, and "..." when there are more (for one-line notes)."""
    return ", ".join(names[:first]) + (", ..." if len(names) > first else "")


def early_exit_of(path: str) -> EarlyExitConfig:
    """The early-exit settings of an `alto run` config (YAML) or output folder (run.json),
    checked as `alto run` checks them; their `policy` key is left to each simulated policy.
    ValueError naming the file."""
    from alto.executor.config import ConfigError, parse_early_exit

    raw = _run_settings(path, "--early-exit")
    try:
        if raw.get("early_exit") is None:
            raise ConfigError("no early_exit section")
        return EarlyExitConfig(**parse_early_exit(raw["early_exit"]))
    except ConfigError as e:
        raise ValueError(f"--early-exit {path}: {e}") from None


def admission_of(path: str) -> tuple[int | None, int | None]:
    """(memory.max_total_batch, memory.max_active) of an `alto run` config (YAML) or output
    folder (run.json: the caps as applied, the CPU default included), checked as `alto run`
    checks them; (None, None) where neither is set. ValueError naming the file."""
    from alto.executor.config import ConfigError, parse_memory

    mem = _run_settings(path, "--admission-from").get("memory")
    try:
        m = parse_memory(mem)
    except ConfigError as e:
        raise ValueError(f"--admission-from {path}: {e}") from None
    return m.max_total_batch, m.max_active


def replay_tasks(run_dir: str, model: str | None = None) -> tuple[list, int | None]:
    """The tasks of an `alto run` output folder (its run.json) as trace tasks: one per run
    task, all arriving at 0 (the executor runs them one after another on its device), each
    with the run's grid, sequence length, epochs and training-sample count; and the val
    samples its evaluations scored (val_samples as applied) when its tasks agree, else None.
    ``model``: a catalogue model for the step costs and memory (default: the run's, when it
    is a ``random:<catalogue name>`` model). ValueError naming what is missing."""
    from alto.models import MODELS
    from alto.policy.types import TaskSpec

    s = _run_settings(run_dir, "--replay")
    path = str(s.get("model", {}).get("path", ""))
    name = model or (path.split(":", 1)[1] if path.startswith("random:") else None)
    if name not in MODELS:
        raise ValueError(f"--replay {run_dir}: the run's model {path!r} is no catalogue model "
                         f"({', '.join(sorted(MODELS))}); pass --replay-model NAME for its step costs")
    tasks = []
    for i, t in enumerate(s.get("tasks") or []):
        if "train_samples" not in t:
            raise ValueError(f"--replay {run_dir}: run.json tasks[{i}] has no train_samples (a run "
                             "from before it was recorded); write a trace and use --trace")
        tasks.append(TaskSpec(t["name"], 0.0, "replay", name, MODELS[name].gpus, int(t["train_samples"]),
                              int(t["max_seq_len"]), float(t["epochs"]), tuple(t["lrs"]), tuple(t["ranks"]),
                              tuple(t["batch_sizes"])))
    if not tasks:
        raise ValueError(f"--replay {run_dir}: run.json lists no task")
    vals = {int(t["val_samples"]) for t in s["tasks"] if "val_samples" in t}
    return tasks, (vals.pop() if len(vals) == 1 else None)


def _inputs(a, trace_path) -> list[tuple[str, Path]]:
    """(flag, path) of what --out must not overwrite: folders (the --replay run, the folders
    of the --curves recorded: paths) that --out must not be, and files (the trace, the
    --cost-table tables and their memory_ tables) that must not be among the results."""
    found = [(f"--replay {a.replay}", Path(a.replay))] if a.replay else []
    for p in recorded_paths(a.curves or ""):
        found.append((f"--curves recorded:{p}", Path(p) if Path(p).is_dir() else Path(p).parent))
    if not a.replay:
        found.append((f"--trace {a.trace}", Path(trace_path)))
    for t in a.cost_table or ():
        found += [(f"--cost-table {t}", Path(t)), (f"--cost-table {t}", Path(t).with_name(f"memory_{Path(t).name}"))]
    return found


def _refuse_unrecorded(run_dir: str, tasks: list, borrowed: dict) -> None:
    """ValueError for run tasks without a recorded evaluation: tasks the run never reached
    (no jobs.csv row, or interrupted ones only), or tasks all of whose configs ended before
    an evaluation (e.g. failed: nothing fit); --max-tasks when they are the last ones."""
    ended: dict[str, set] = {}
    try:
        for r in read_run_jobs(Path(run_dir) / "jobs.csv"):
            ended.setdefault(r.get("task", ""), set()).add(r.get("exit_reason", ""))
    except OSError:
        pass
    unrecorded = [t.task_id for t in tasks if t.task_id in borrowed]
    never = [t for t in unrecorded if not (ended.get(t, set()) - UNFINISHED_EXITS)]
    first = next(i for i, t in enumerate(tasks) if t.task_id in borrowed)
    hint = (f"; --max-tasks {first} replays the task(s) before" if first and
            all(t.task_id in borrowed for t in tasks[first:]) else "")
    if never:
        raise ValueError(f"--replay {run_dir}: task(s) {', '.join(never)} recorded no evaluation: the "
                         f"run stopped before them{hint}")
    reasons = "/".join(sorted(set().union(*(ended[t] for t in unrecorded))))
    raise ValueError(f"--replay {run_dir}: every config of task(s) {', '.join(unrecorded)} ended "
                     f"({reasons}) before an evaluation: no curve to replay{hint}")


def _unused_cost_tables(cost: CostModel, gpu_type: str, models: list[str]) -> dict[str, str]:
    """"gpu/model" of the --cost-table rows that price no simulated step -> why (meta.json's
    cost_tables_unused); each is said on stderr here, even with --quiet."""
    simulated = {(gpu_type, m) for m in models}
    unused = {}
    for gpu, model in sorted(cost.extra_keys - simulated):
        unused[f"{gpu}/{model}"] = (f"not simulated: the tasks run {', '.join(models)} "
                                    f"on --gpu-type {gpu_type}")
        print(f"note: --cost-table rows for {gpu}/{model} are not used ({unused[f'{gpu}/{model}']})",
              file=sys.stderr)
    for (gpu, model), lacking in cost.unused_extra.items():
        if (gpu, model) in simulated:
            unused[f"{gpu}/{model}"] = f"lacks {', '.join(lacking)} (--costs auto)"
            print(f"note: --cost-table rows for {gpu}/{model} are not used under --costs auto: they "
                  f"lack kernel(s) {', '.join(lacking)}, and auto never mixes measured and estimated "
                  "kernels of one model; --costs measured uses them", file=sys.stderr)
    return unused


def simulate_main(a) -> int:
    from traces.loader import conversion_summary, load_trace
    from traces.schema import validate_trace

    if a.gpus is None:  # the run's one device for a replay, else the paper's 8-GPU node
        a.gpus = 1 if a.replay else 8
    if a.gpus <= 0 or a.gpus_per_node <= 0:
        raise ValueError(f"--gpus and --gpus-per-node must be positive, got {a.gpus} and {a.gpus_per_node}")
    if a.workers is not None and a.workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: one per core), got {a.workers}")
    # (None: not given; an empty --policies "" is an error, not the default)
    policies = get_policies(",".join(DEFAULT_POLICIES) if a.policies is None else a.policies)
    stats: dict = {}  # a converter's skip / cap counts (meta.json trace_conversion)
    own_curves = False  # --replay without --curves: the run's own curves
    replay_evals = None  # the val samples a replayed run scored per evaluation
    if a.replay:
        if a.trace:
            raise ValueError("--replay builds the trace from the run; drop --trace")
        from alto.executor.config import RUN_SETTINGS

        path, label = Path(a.replay) / RUN_SETTINGS, f"replay:{a.replay}"
        tasks, replay_evals = replay_tasks(a.replay, a.replay_model)
        tasks = tasks[: a.max_tasks]
        own_curves = not a.curves  # (the run's own: each of its tasks should have some)
        a.curves = a.curves or f"recorded:{a.replay}"
        a.early_exit = a.early_exit or a.replay
        a.admission_from = a.admission_from or a.replay
    else:
        if a.replay_model:
            raise ValueError("--replay-model: only with --replay")
        path, label = resolve_trace(a.trace)
        kw = {} if a.max_tasks is None else {"max_tasks": a.max_tasks}
        if a.trace_format != "native":  # (a converter: it says what it dropped or capped)
            kw["stats"] = stats
        tasks = load_trace(path, a.trace_format, **kw)
        if what := conversion_summary(stats):
            print(f"note: --trace {a.trace} ({a.trace_format}): {what}", file=sys.stderr)
    replaced = check_out_dir(a.out, _inputs(a, path))
    validate_trace(tasks, path, cluster_gpus=a.gpus)
    if a.costs == "estimate" and a.cost_table:
        raise ValueError("--cost-table: measured tables are not used with --costs estimate")
    cost = CostModel.from_dir(costs=a.costs, extra=a.cost_table or ())
    models = sorted({t.model for t in tasks})
    unused_tables = _unused_cost_tables(cost, a.gpu_type, models)
    try:
        kernels = sorted({p.kernel for p in policies})
        provenance = {(m, k): cost.source(a.gpu_type, m, k) for m in models for k in kernels}
    except UnknownNameError as e:
        if not a.replay:
            raise
        raise UnknownNameError(f"{e.args[0]}; with --replay, pass --replay-model NAME for the step "
                               "costs of a model the tables hold") from None
    if a.seed is not None and a.curves:
        raise ValueError("--seed: seeds the default parametric curves only; with --curves give "
                         "parametric:SEED there (recorded curves have no seed)")
    seed = 0 if a.seed is None else a.seed
    curves = make_curve_source(a.curves or f"parametric:{seed}")
    stand_ins = getattr(curves, "curve_set_for", None)  # recorded curves: which set each task replays
    replayed = {} if stand_ins is None else {t.task_id: stand_ins(t.task_id) for t in tasks}
    borrowed = {t: c for t, c in replayed.items() if c != t}
    if a.replay and own_curves and borrowed:  # a task of the run that recorded nothing
        _refuse_unrecorded(a.replay, tasks, borrowed)
    exact_of = getattr(curves, "is_exact", None)
    neighbours = [j.job_id for t in tasks for j in t.jobs() if exact_of and not exact_of(t, j)]
    if neighbours:  # said even with --quiet: a grid that differs from the recorded one
        print(f"note: {len(neighbours)} config(s) have no recorded curve of their own (lr, rank, batch) "
              f"and replay the nearest recorded config's ({_listed(neighbours)})", file=sys.stderr)
    early_exit = early_exit_of(a.early_exit) if a.early_exit else EarlyExitConfig()
    if a.early_exit and early_exit.policy not in {p.early_exit for p in policies}:
        users = sorted(n for n, p in POLICIES.items() if p.early_exit == early_exit.policy)
        print(f"note: --early-exit {a.early_exit}: the run's early-exit policy is {early_exit.policy!r}, "
              f"which none of the simulated policies uses (each applies its own); "
              f"{', '.join(users) or 'no policy'} would", file=sys.stderr)
    max_total_batch, max_active = admission_of(a.admission_from) if a.admission_from else (None, None)
    too_big = [t.task_id for t in tasks if max_total_batch is not None and max(t.batch_sizes) > max_total_batch]
    if too_big:  # (alto run refuses such a config; here those configs end `failed`)
        print(f"note: --admission-from {a.admission_from}: max_total_batch {max_total_batch} is below the "
              f"largest batch size of {len(too_big)} task(s) ({_listed(too_big)}); those configs can "
              "never run and end failed", file=sys.stderr)
    # a replay scores as many val samples per evaluation as the run did, when its tasks
    # agree; else the simulator's default
    evals = {"eval_samples": replay_evals} if replay_evals is not None else {}
    cfg = SimConfig(gpus=a.gpus, gpus_per_node=a.gpus_per_node, gpu_type=a.gpu_type, workers=a.workers,
                    early_exit=early_exit, max_total_batch=max_total_batch, max_active=max_active, **evals)

    skipped = getattr(curves, "skipped_unfinished", [])
    if skipped:  # (an interrupted or killed `alto run`: those curves stop where it was cut)
        print(f"note: {len(skipped)} recorded job(s) did not finish in their run (interrupted, or no "
              f"row in its jobs.csv) and are left out of the curves ({_listed(skipped)})", file=sys.stderr)
    if borrowed:  # said even with --quiet: these tasks replay another task's curves
        shown = _listed([f"{t} -> {c}" for t, c in borrowed.items()], first=5)
        print(f"note: {len(borrowed)} of {len(tasks)} tasks have no recorded curves of their own "
              f"and replay another task's ({shown})", file=sys.stderr)
    if not a.quiet:
        print(f"simulating {len(tasks)} tasks from {label} on {a.gpus} x {a.gpu_type} "
              f"under {len(policies)} policies", file=sys.stderr)
        for (m, k), src in provenance.items():
            print(f"  step costs for {m}, {k} kernel: {src}", file=sys.stderr)
    runs = simulate_policies(tasks, policies, cfg, cost, curves, progress=None if a.quiet else stderr_progress)
    meta = {
        "trace": label, "trace_format": a.trace_format, "trace_conversion": stats,
        "eval_samples": cfg.eval_samples, "tasks": len(tasks), "gpus": a.gpus,
        "gpus_per_node": a.gpus_per_node, "gpu_type": a.gpu_type, "costs": a.costs, "curves": a.curves or f"parametric:{seed}",
        "cost_tables_added": list(a.cost_table or []),
        "cost_tables_unused": unused_tables,
        "cost_sources": {m: {k: src for (mm, k), src in provenance.items() if mm == m} for m in models},
        "curves_borrowed": borrowed,
        "curves_from_neighbours": len(neighbours),
        "early_exit": {k: v for k, v in dataclasses.asdict(early_exit).items() if k != "policy"},
        "early_exit_from": a.early_exit or "defaults",
        "admission": {"max_total_batch": max_total_batch, "max_active": max_active,
                      "from": a.admission_from or "the memory model alone"},
    }
    tables = result_tables(runs, meta)
    out = write_results(a.out, *tables)
    if replaced:  # said even with --quiet (the README's quickstart reruns into results/sim)
        print(f"note: --out {out}: replaced the earlier results there: {replaced}", file=sys.stderr)
    print(format_table(runs))
    for policy, summary in tables[0].items():
        if summary["configs_failed"]:
            why = "no GPU's memory" + (" or the --admission-from cap" if max_total_batch is not None else "")
            print(f"note: {policy}: {summary['configs_failed']} config(s) fit {why} and never "
                  f"ran ({summary['samples_failed']} samples; exit_reason failed in jobs.csv)")
    estimated = any("estimate" in s.lower() for d in meta["cost_sources"].values() for s in d.values())
    if estimated:
        print("note: some step costs are ESTIMATES (FLOPs/bandwidth model), not measurements; see meta.json")
    print(f"results: {out}/summary.json, {out}/tasks.csv (figures: alto figures {out})")
    return 0
