"""Native task-trace format: one CSV row per tuning task; read, write, validate.

A trace is a CSV file with a header row. Columns (order free, names exact):

    task_id, arrival_s, tenant, model, gpus, dataset_size, seq_len, epochs,
    lrs, ranks, batch_sizes [, alpha_over_rank]

Example (the header plus one task with the paper's 7-8B search space):

    task_id,arrival_s,tenant,model,gpus,dataset_size,seq_len,epochs,lrs,ranks,batch_sizes,alpha_over_rank
    t01,0,tenant-1,llama-3.1-8b,1,7473,1024,3,1e-05;5e-05;0.0002;0.0003;0.0005,16;32;64,1;2;4;8,2

Units and rules (each broken rule is a `TraceError` naming file, row and field):
- task_id: non-empty, letters/digits/`_.-`, starts with a letter or digit (it becomes part
  of job ids and adapter directory names); unique in the trace.
- arrival_s: seconds since the trace start, finite, >= 0 and at most 1e12 (a larger value is
  taken for a unit mistake: epoch milliseconds, microseconds or nanoseconds).
- tenant: non-empty printable text (who submitted the task).
- model: a key of `alto.models.MODELS`.
- gpus: integer >= the model's minimum `MODELS[model].gpus` (more is allowed).
- dataset_size (samples per epoch), seq_len (tokens): integers > 0.
- epochs: number > 0 (fractions allowed).
- lrs: ';'-separated floats > 0; ranks, batch_sizes: ';'-separated integers > 0.
  Lists are non-empty and hold no repeated value (a repeat would duplicate job ids).
- alpha_over_rank: optional column; number > 0; an empty cell means 2.0 (the paper's alpha = 2r).

Row numbers are 1-based data rows as the file shows them: row n is line n+1 (line 1 is
the header); blank lines are skipped but counted, so the number always matches an editor.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from alto.models import MODELS
from alto.policy.types import TaskSpec

REQUIRED_COLUMNS: tuple[str, ...] = (
    "task_id",
    "arrival_s",
    "tenant",
    "model",
    "gpus",
    "dataset_size",
    "seq_len",
    "epochs",
    "lrs",
    "ranks",
    "batch_sizes",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("alpha_over_rank",)
COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
LIST_SEP = ";"
DEFAULT_ALPHA_OVER_RANK = 2.0
_TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


MAX_ARRIVAL_S = 1e12  # arrival_s above it is taken for a unit mistake (epoch ms / µs / ns)


class TraceError(ValueError):
    """A trace file (or in-memory trace) breaks the schema.

    file: the trace's path (or a label for in-memory traces); row: 1-based data row, or
    None for file-level problems (missing column, empty trace); field: the column, or None.
    str() = "<file>: row <n>, field '<f>': <problem>" (parts that are None are left out).
    """

    def __init__(self, file: str | os.PathLike, row: int | None, field: str | None, problem: str):
        self.file = str(file)
        self.row = row
        self.field = field
        self.problem = problem
        where = [self.file]
        loc = []
        if row is not None:
            loc.append(f"row {row}")
        if field is not None:
            loc.append(f"field '{field}'")
        if loc:
            where.append(", ".join(loc))
        super().__init__(": ".join(where) + ": " + problem)

    def __reduce__(self):  # keep picklable despite the 4-argument constructor
        return (type(self), (self.file, self.row, self.field, self.problem))


class _Bad(Exception):
    """A problem with one field of one task; the caller adds file and row."""

    def __init__(self, field: str, problem: str):
        super().__init__(problem)
        self.field = field
        self.problem = problem


# ---------------------------------------------------------------- parsing one cell


def _float(field: str, text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise _Bad(field, f"not a number: {text!r}") from None
    if not math.isfinite(x):
        raise _Bad(field, f"must be finite, got {text!r}")
    return x


def _int(field: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    x = _float(field, text)  # accept "4.0" (pandas writes ints as floats), not "4.5"
    if x != int(x):
        raise _Bad(field, f"must be an integer, got {text!r}")
    return int(x)


def _list(field: str, text: str, parse) -> tuple:
    parts = [p.strip() for p in text.split(LIST_SEP)]
    if parts == [""]:
        raise _Bad(field, f"empty list; expected values separated by '{LIST_SEP}'")
    if "" in parts:
        raise _Bad(field, f"empty item in list {text!r} (stray '{LIST_SEP}'?)")
    return tuple(parse(field, p) for p in parts)


def _parse_task(cells: dict[str, str]) -> TaskSpec:
    """Cells (column -> stripped text) to a TaskSpec; raises _Bad on the first bad field."""
    alpha_text = cells.get("alpha_over_rank", "")
    task = TaskSpec(
        task_id=cells["task_id"],
        arrival_s=_float("arrival_s", cells["arrival_s"]),
        tenant=cells["tenant"],
        model=cells["model"],
        gpus=_int("gpus", cells["gpus"]),
        dataset_size=_int("dataset_size", cells["dataset_size"]),
        seq_len=_int("seq_len", cells["seq_len"]),
        epochs=_float("epochs", cells["epochs"]),
        lrs=_list("lrs", cells["lrs"], _float),
        ranks=_list("ranks", cells["ranks"], _int),
        batch_sizes=_list("batch_sizes", cells["batch_sizes"], _int),
        alpha_over_rank=(
            _float("alpha_over_rank", alpha_text) if alpha_text else DEFAULT_ALPHA_OVER_RANK
        ),
    )
    check_task(task)
    return task


# ---------------------------------------------------------------- semantic checks


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check_positive_list(field: str, values, want_int: bool) -> None:
    if not isinstance(values, tuple | list) or len(values) == 0:
        raise _Bad(field, "must be a non-empty list")
    kind = "integers" if want_int else "numbers"
    for v in values:
        if not (_is_int(v) if want_int else _is_real(v)) or v <= 0:
            raise _Bad(field, f"values must be positive {kind}, got {v!r}")
    if len(set(values)) != len(values):
        dup = sorted({v for v in values if list(values).count(v) > 1})
        raise _Bad(field, f"repeated value(s) {dup} would give duplicate job ids")
    printed = [f"{v:g}" for v in values]  # how job ids spell lrs (TaskSpec.jobs; ints exactly)
    if not want_int and len(set(printed)) != len(printed):
        clash = sorted({p for p in printed if printed.count(p) > 1})
        raise _Bad(field, f"values that print alike ({', '.join(clash)}, 6 significant digits) would "
                   "give duplicate job ids")


def check_task(task: TaskSpec) -> None:
    """Schema rules for one in-memory task (columns in file order); raises _Bad."""
    if not isinstance(task.task_id, str) or not _TASK_ID_RE.match(task.task_id):
        raise _Bad(
            "task_id",
            f"{task.task_id!r} is not a valid id (letters, digits, '_', '.', '-'; "
            "starting with a letter or digit)",
        )
    if not _is_real(task.arrival_s) or task.arrival_s < 0:
        raise _Bad("arrival_s", f"must be a finite number >= 0, got {task.arrival_s!r}")
    if task.arrival_s > MAX_ARRIVAL_S:  # float64 seconds lose sub-second steps far beyond it
        raise _Bad("arrival_s", f"{task.arrival_s!r} s is beyond {MAX_ARRIVAL_S:.0e} s (31,700 "
                   "years): a time in ms, µs or ns?")
    if not isinstance(task.tenant, str) or not task.tenant.strip():
        raise _Bad("tenant", "must be non-empty")
    if not task.tenant.isprintable() or task.tenant != task.tenant.strip():
        # a line break would split the CSV row; edge spaces would not survive a read
        raise _Bad("tenant", f"must be printable text without edge spaces, got {task.tenant!r}")
    if task.model not in MODELS:
        raise _Bad("model", f"unknown model {task.model!r}; known: {', '.join(sorted(MODELS))}")
    need = MODELS[task.model].gpus
    if not _is_int(task.gpus) or task.gpus <= 0:
        raise _Bad("gpus", f"must be a positive integer, got {task.gpus!r}")
    if task.gpus < need:
        raise _Bad(
            "gpus",
            f"model {task.model!r} needs at least {need} GPU(s); the task asks for {task.gpus}",
        )
    for name in ("dataset_size", "seq_len"):
        v = getattr(task, name)
        if not _is_int(v) or v <= 0:
            raise _Bad(name, f"must be a positive integer, got {v!r}")
    if not _is_real(task.epochs) or task.epochs <= 0:
        raise _Bad("epochs", f"must be a positive number, got {task.epochs!r}")
    _check_positive_list("lrs", task.lrs, want_int=False)
    _check_positive_list("ranks", task.ranks, want_int=True)
    _check_positive_list("batch_sizes", task.batch_sizes, want_int=True)
    if not _is_real(task.alpha_over_rank) or task.alpha_over_rank <= 0:
        raise _Bad("alpha_over_rank", f"must be a positive number, got {task.alpha_over_rank!r}")


def validate_trace(
    tasks: Sequence[TaskSpec], path: str | os.PathLike, cluster_gpus: int | None = None
) -> None:
    """Check a whole in-memory trace; raise TraceError on the first problem.

    Rows are 1-based positions in `tasks` (they match the file's rows when `tasks` is in
    file order, as `read_native` returns it). Checks: non-empty; each task's fields
    (see module doc); unique task ids; with cluster_gpus, no task needs more GPUs than
    the cluster has (field 'gpus').
    """
    if len(tasks) == 0:
        raise TraceError(path, None, None, "trace is empty: no tasks (no data rows)")
    if cluster_gpus is not None and (not _is_int(cluster_gpus) or cluster_gpus <= 0):
        raise ValueError(f"cluster_gpus must be a positive integer, got {cluster_gpus!r}")
    first_row: dict[str, int] = {}
    for i, task in enumerate(tasks, start=1):
        try:
            check_task(task)
        except _Bad as e:
            raise TraceError(path, i, e.field, e.problem) from None
        if task.task_id in first_row:
            raise TraceError(
                path,
                i,
                "task_id",
                f"duplicate task_id {task.task_id!r} (first used in row {first_row[task.task_id]})",
            )
        first_row[task.task_id] = i
        if cluster_gpus is not None and task.gpus > cluster_gpus:
            raise TraceError(
                path,
                i,
                "gpus",
                f"task {task.task_id!r} needs {task.gpus} GPUs but the cluster has only "
                f"{cluster_gpus}; it could never start (use a larger cluster or drop the task)",
            )


# ---------------------------------------------------------------- file I/O


def iter_csv(
    path: str | os.PathLike, required: tuple[str, ...], known: tuple[str, ...] | None = None
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (row, {column: stripped text}) for each non-blank data row of a headered CSV.

    row = line number - 1 (blank lines skipped but counted). Raises TraceError for: a
    missing or empty file, a repeated column, a column not in `known` (when given), a
    missing `required` column (all with row None), and a row whose field count differs
    from the header's (field = the first missing column, or None when there are too many).
    """
    p = Path(path)
    if not p.is_file():
        raise TraceError(path, None, None, "a folder, not a trace file" if p.is_dir() else "no such file")
    try:
        yield from _csv_rows(p, path, required, known)
    except UnicodeDecodeError as e:
        raise TraceError(path, None, None, f"not UTF-8 text (byte {e.start}: {e.reason})") from None


def _csv_rows(p: Path, path, required, known):
    """read_csv_rows' reading, for a file that exists (decoding errors go to the caller)."""
    with open(p, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate an Excel BOM
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise TraceError(path, None, None, f"empty file: expected a header row {required}")
        _check_header(path, header, required, known)
        for values in reader:
            row = reader.line_num - 1
            if not values or (len(values) == 1 and not values[0].strip()):
                continue  # blank line
            if len(values) != len(header):
                missing = header[len(values)] if len(values) < len(header) else None
                hint = "truncated row?" if missing else "unquoted ',' inside a value?"
                raise TraceError(
                    path,
                    row,
                    missing,
                    f"row has {len(values)} fields, header has {len(header)} ({hint})",
                )
            yield row, {h: v.strip() for h, v in zip(header, values, strict=True)}


def _check_header(path, header: list[str], required, known) -> None:
    seen: set[str] = set()
    for h in header:
        if h in seen:
            raise TraceError(path, None, h, "column appears twice in the header")
        seen.add(h)
        if known is not None and h not in known:
            raise TraceError(
                path, None, h, f"unknown column; the schema's columns are {', '.join(known)}"
            )
    missing = [c for c in required if c not in seen]
    if missing:
        raise TraceError(
            path,
            None,
            missing[0],
            f"missing column(s) {', '.join(missing)}; header has {', '.join(header)}",
        )


def read_native(path: str | os.PathLike) -> list[TaskSpec]:
    """Read and validate a native CSV trace; tasks come back in file order.

    Raises TraceError (file, row, field) for every schema violation: see the module doc.
    """
    tasks: list[TaskSpec] = []
    first_row: dict[str, int] = {}
    for row, cells in iter_csv(path, REQUIRED_COLUMNS, known=COLUMNS):
        try:
            task = _parse_task(cells)
        except _Bad as e:
            raise TraceError(path, row, e.field, e.problem) from None
        if task.task_id in first_row:
            raise TraceError(
                path,
                row,
                "task_id",
                f"duplicate task_id {task.task_id!r} (first used in row {first_row[task.task_id]})",
            )
        first_row[task.task_id] = row
        tasks.append(task)
    if not tasks:
        raise TraceError(path, None, None, "trace is empty: header but no data rows")
    return tasks


def _fmt_float(x: float) -> str:
    """Shortest text that reads back to exactly x (repr), without a trailing '.0'."""
    r = repr(float(x))
    return r[:-2] if r.endswith(".0") else r


def _row_of(task: TaskSpec) -> list[str]:
    return [
        task.task_id,
        _fmt_float(task.arrival_s),
        task.tenant,
        task.model,
        str(int(task.gpus)),
        str(int(task.dataset_size)),
        str(int(task.seq_len)),
        _fmt_float(task.epochs),
        LIST_SEP.join(_fmt_float(x) for x in task.lrs),
        LIST_SEP.join(str(int(x)) for x in task.ranks),
        LIST_SEP.join(str(int(x)) for x in task.batch_sizes),
        _fmt_float(task.alpha_over_rank),
    ]


def give_mode_of(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Give a temporary file (mkstemp makes it 0600) the mode ``target`` has, or, when
    ``target`` does not exist yet, the mode a plainly created file would get (0666 less the
    umask); called before the temporary file replaces ``target``."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)


def write_native(tasks: Sequence[TaskSpec], path: str | os.PathLike) -> None:
    """Validate, then write tasks (in the given order) as a native CSV trace.

    Atomic: rows go to a temporary file in the target directory, which replaces `path`
    only after everything was written and flushed; on any error `path` is untouched
    (absent or with its old content) and the temporary file is removed.
    Floats are written with repr, so read_native(path) gives back equal TaskSpecs.
    """
    validate_trace(tasks, path)
    p = Path(path)
    if p.is_dir():  # (checked here: mkstemp's own errors would name its temporary file)
        raise TraceError(path, None, None, "is a folder; expected a file to write")
    if not p.parent.is_dir():
        raise TraceError(path, None, None, f"folder {p.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or ".")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(COLUMNS)
            for task in tasks:
                w.writerow(_row_of(task))
            f.flush()
            os.fsync(f.fileno())
        give_mode_of(tmp, p)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
