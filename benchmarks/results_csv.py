"""The one way benchmark scripts record results: append rows to a CSV in benchmarks/results/."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence


def _line_ending(path) -> str:
    """The line terminator of the file's header line ("\r\n" or "\n")."""
    with open(path, "rb") as f:
        first = f.readline()
    return "\r\n" if first.endswith(b"\r\n") else "\n"


def _ends_with_newline(path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def append_results(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping],
                   extrasaction: str = "raise") -> None:
    """Append rows to the CSV at path, writing the header first if the file is new (its folder
    is created). extrasaction: "raise" (a key outside columns is an error) or "ignore".

    Appended lines keep the file's own line ending; a new file gets "\n", as the files in
    benchmarks/results/ have (so rows written into a fresh file on the GPU machine can be
    concatenated onto them).
    If the file's header lacks some of ``columns`` (a script gained a column), the file is
    rewritten once with the new header, earlier rows keeping their values and leaving the new
    columns empty. A header with a column that ``columns`` lacks, or a row longer than its
    header, is an error naming the file: rows are never dropped or written under the wrong
    header, and the file is left as it was.
    """
    rows = list(rows)
    columns = list(columns)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    end = "\n" if new else _line_ending(path)
    if not new:
        with open(path, newline="") as f:
            old = next(csv.reader(f), [])
        if old != columns:
            missing = [c for c in old if c not in columns]
            if missing:
                raise ValueError(f"{path}: header has column(s) {missing} that this writer lacks")
            _rewrite_with_header(path, columns, end)
        elif not _ends_with_newline(path):
            with open(path, "a", newline="") as f:
                f.write(end)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction=extrasaction, lineterminator=end)
        if new:
            w.writeheader()
        w.writerows(rows)


def _rewrite_with_header(path, columns: list[str], end: str) -> None:
    """Rewrite the CSV at path under a wider header (atomically: a temp file, then a rename)."""
    with open(path, newline="") as f:
        kept = list(csv.DictReader(f))
    for i, row in enumerate(kept, start=2):
        if None in row:
            raise ValueError(f"{path}: row {i} has more fields than the header")
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, lineterminator=end)
            w.writeheader()
            w.writerows(kept)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
