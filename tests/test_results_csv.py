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
    assert path.read_bytes() == b"a,b\n1,2\n3,4\n"


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


def test_appends_keep_the_files_line_ending_and_missing_final_newline(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"a,b\n1,2")  # LF file without a final newline
    append_results(path, ["a", "b"], [dict(a=3, b=4)])
    assert path.read_bytes() == b"a,b\n1,2\n3,4\n"
    append_results(path, ["a", "b", "c"], [dict(a=5, b=6, c=7)])
    assert path.read_bytes() == b"a,b,c\n1,2,\n3,4,\n5,6,7\n"


def test_row_longer_than_header_is_an_error_and_leaves_the_file(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"a,b\r\n1,2,9\r\n")
    with pytest.raises(ValueError, match=r"r\.csv: row 2 has more fields than the header"):
        append_results(path, ["a", "b", "c"], [dict(a=3, b=4, c=5)])
    assert path.read_bytes() == b"a,b\r\n1,2,9\r\n"
    assert not (tmp_path / "r.csv.tmp").exists()
