"""The one way benchmark scripts record results: append rows to a CSV in benchmarks/results/."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence


def append_results(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping],
                   extrasaction: str = "raise") -> None:
    """Append rows to the CSV at path, writing the header first if the file is new (its folder
    is created). extrasaction: "raise" (a key outside columns is an error) or "ignore"."""
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction=extrasaction)
        if new:
            w.writeheader()
        w.writerows(rows)
