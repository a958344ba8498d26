"""The one way benchmark scripts record results: append rows to a CSV in benchmarks/results/."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence


def append_results(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping],
                   extrasaction: str = "raise") -> None:
    """Append rows to the CSV at path, writing the header first if the file is new (its folder
    is created). extrasaction: "raise" (a key outside columns is an error) or "ignore".

    If the file's header lacks some of ``columns`` (a script gained a column), the file is
    rewritten once with the new header, earlier rows keeping their values and leaving the new
    columns empty. A header with a column that ``columns`` lacks is an error naming the file:
    rows are never dropped or written under the wrong header.
    """
    rows = list(rows)
    columns = list(columns)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    if not new:
        with open(path, newline="") as f:
            old = next(csv.reader(f), [])
        if old != columns:
            missing = [c for c in old if c not in columns]
            if missing:
                raise ValueError(f"{path}: header has column(s) {missing} that this writer lacks")
            with open(path, newline="") as f:
                kept = list(csv.DictReader(f))
            tmp = f"{path}.tmp"
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=columns)
                w.writeheader()
                w.writerows(kept)
            os.replace(tmp, path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction=extrasaction)
        if new:
            w.writeheader()
        w.writerows(rows)
