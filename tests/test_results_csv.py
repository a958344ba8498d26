"""benchmarks.results_csv: the one writer of benchmark rows (header evolution, no lost rows)."""

from __future__ import annotations

import csv

import pytest

from benchmarks.results_csv import append_results


def read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_new_file_then_append(tmp_path):
    path = tmp_path / "sub" / "r.csv"
    append_results(path, ["a", "b"], [dict(a=1, b=2)])
    append_results(path, ["a", "b"], [dict(a=3, b=4)])
    assert read(path) == [["a", "b"], ["1", "2"], ["3", "4"]]


def test_gained_column_rewrites_header_and_keeps_rows(tmp_path):
    path = tmp_path / "r.csv"
    append_results(path, ["a", "b"], [dict(a=1, b=2)])
    append_results(path, ["a", "c", "b"], [dict(a=5, c=6, b=7)])
    assert read(path) == [["a", "c", "b"], ["1", "", "2"], ["5", "6", "7"]]


def test_dropped_column_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "r.csv"
    append_results(path, ["a", "b"], [dict(a=1, b=2)])
    with pytest.raises(ValueError, match=r"r\.csv: header has column\(s\) \['b'\]"):
        append_results(path, ["a"], [dict(a=3)])
    assert read(path) == [["a", "b"], ["1", "2"]]
