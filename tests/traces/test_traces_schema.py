"""Native trace schema: round trips, one TraceError (file, row, field) per bad input, atomic writes."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import traces.schema as schema
from alto.models import MODELS
from alto.policy.types import TaskSpec
from traces.loader import load_trace
from traces.schema import TraceError, read_native, validate_trace, write_native

HEADER = "task_id,arrival_s,tenant,model,gpus,dataset_size,seq_len,epochs,lrs,ranks,batch_sizes"
ROW1 = "a,0,ten,llama-3.1-8b,1,7473,1024,3,1e-05;0.0002,16;32,1;8"
ROW2 = "b,10.5,ten,qwen2.5-32b,2,100,2048,1.5,0.0001,16,4"
ROW3 = "c,20,other,llama-3.1-70b,4,5000,512,3,0.0003,128,2"

TASK_A = TaskSpec(
    "a", 0.0, "ten", "llama-3.1-8b", 1, 7473, 1024, 3.0, (1e-05, 2e-4), (16, 32), (1, 8)
)


def _write(tmp_path, text: str, name: str = "t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def _err(tmp_path, text: str) -> TraceError:
    p = _write(tmp_path, text)
    with pytest.raises(TraceError) as ei:
        read_native(p)
    assert ei.value.file == str(p)
    return ei.value


def test_read_parses_exact_values(tmp_path):
    tasks = read_native(_write(tmp_path, f"{HEADER}\n{ROW1}\n{ROW2}\n"))
    assert tasks[0] == TASK_A
    assert tasks[1] == TaskSpec(
        "b", 10.5, "ten", "qwen2.5-32b", 2, 100, 2048, 1.5, (1e-4,), (16,), (4,)
    )
    assert tasks[1].alpha_over_rank == 2.0  # column absent -> paper default alpha = 2r
    assert len(tasks[0].jobs()) == 8


def test_column_order_free_and_optional_alpha(tmp_path):
    text = "ranks,task_id,alpha_over_rank,arrival_s,tenant,model,gpus,dataset_size,seq_len,epochs,lrs,batch_sizes\n"
    text += "16,x,1.5,0,t,qwen2.5-7b,1,10,8,1,0.001,2\n16,y,,0,t,qwen2.5-7b,1,10,8,1,0.001,2\n"
    x, y = read_native(_write(tmp_path, text))
    assert (x.ranks, x.alpha_over_rank, y.alpha_over_rank) == ((16,), 1.5, 2.0)


def test_more_gpus_than_model_minimum_is_allowed(tmp_path):
    (t,) = read_native(_write(tmp_path, f"{HEADER}\na,0,t,llama-3.1-8b,4,10,8,1,0.001,8,1\n"))
    assert t.gpus == 4


# fmt: off
@pytest.mark.parametrize(
    "body, row, field, needle",
    [
        (f"{ROW1}\n{ROW2}\nc,x,t,llama-3.1-8b,1,10,8,1,0.001,8,1\n", 3, "arrival_s", "not a number: 'x'"),
        (f"{ROW1}\nc,-5,t,llama-3.1-8b,1,10,8,1,0.001,8,1\n", 2, "arrival_s", ">= 0"),
        (f"{ROW1}\nc,inf,t,llama-3.1-8b,1,10,8,1,0.001,8,1\n", 2, "arrival_s", "finite"),
        (f"{ROW1}\nc,0,,llama-3.1-8b,1,10,8,1,0.001,8,1\n", 2, "tenant", "non-empty"),
        (f"{ROW1}\nc,0,t,gpt-5,1,10,8,1,0.001,8,1\n", 2, "model", "known: llama-3.1-70b, llama-3.1-8b"),
        (f"{ROW1}\n{ROW2}\nc,0,t,llama-3.1-70b,2,10,8,1,0.001,8,1\n", 3, "gpus", "needs at least 4"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,0,10,8,1,0.001,8,1\n", 2, "gpus", "positive integer"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1.5,10,8,1,0.001,8,1\n", 2, "gpus", "must be an integer"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,0,8,1,0.001,8,1\n", 2, "dataset_size", "positive"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,10,-8,1,0.001,8,1\n", 2, "seq_len", "positive"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,10,8,0,0.001,8,1\n", 2, "epochs", "positive"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,10,8,1,,8,1\n", 2, "lrs", "empty list"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,10,8,1,0.1;nan,8,1\n", 2, "lrs", "finite"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,10,8,1,0.1;-0.2,8,1\n", 2, "lrs", "positive"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,10,8,1,0.1,16;0,1\n", 2, "ranks", "positive integers"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,10,8,1,0.1,16;32.5,1\n", 2, "ranks", "must be an integer"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,10,8,1,0.1,16;16,1\n", 2, "ranks", "repeated"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,10,8,1,0.1,16,2;-1\n", 2, "batch_sizes", "positive integers"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,10,8,1,0.1,16,2;;4\n", 2, "batch_sizes", "empty item"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,10,8,1,0.1,16,two\n", 2, "batch_sizes", "not a number"),
        (f"{ROW1}\nc/d,0,t,llama-3.1-8b,1,10,8,1,0.1,16,2\n", 2, "task_id", "not a valid id"),
        (f"{ROW1}\n{ROW2}\n{ROW1}\n", 3, "task_id", "duplicate task_id 'a' (first used in row 1)"),
        (f"{ROW1}\nc,0,t,llama-3.1-8b,1,10\n", 2, "seq_len", "row has 6 fields, header has 11"),
        (f"{ROW1}\n{ROW2},extra\n", 2, None, "row has 12 fields, header has 11"),
        # blank lines are skipped but counted, so row n stays on line n+1
        (f"{ROW1}\n\n{ROW2}\nc,0,t,llama-3.1-8b,1,10,8,1,0.1,16,0\n", 4, "batch_sizes", "positive"),
    ],
)
# fmt: on
def test_bad_row_names_file_row_field(tmp_path, body, row, field, needle):
    e = _err(tmp_path, f"{HEADER}\n{body}")
    assert (e.row, e.field) == (row, field)
    assert needle in e.problem
    where = f"row {row}" + (f", field '{field}'" if field else "")
    assert str(e) == f"{e.file}: {where}: {e.problem}"


def test_bad_alpha_over_rank(tmp_path):
    e = _err(tmp_path, f"{HEADER},alpha_over_rank\n{ROW1},2\n{ROW2},0\n")
    assert (e.row, e.field) == (2, "alpha_over_rank")


@pytest.mark.parametrize(
    "text, field, needle",
    [
        (HEADER.replace(",epochs", "") + "\n", "epochs", "missing column(s) epochs"),
        (HEADER.replace("batch_sizes", "batch_size") + "\n", "batch_size", "unknown column"),
        (HEADER + ",gpus\n", "gpus", "appears twice"),
        (HEADER + "\n", None, "no data rows"),
        (HEADER + "\n\n\n", None, "no data rows"),
        ("", None, "empty file"),
    ],
)
def test_file_level_errors_have_no_row(tmp_path, text, field, needle):
    e = _err(tmp_path, text)
    assert (e.row, e.field) == (None, field)
    assert needle in e.problem
    if field:
        assert str(e) == f"{e.file}: field '{field}': {e.problem}"
    else:
        assert str(e) == f"{e.file}: {e.problem}"


def test_missing_file(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        read_native(tmp_path / "nope.csv")


def test_trace_error_is_value_error_and_pickles():
    e = TraceError("f.csv", 3, "gpus", "bad")
    assert isinstance(e, ValueError)
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.file, e2.row, e2.field, e2.problem, str(e2)) == ("f.csv", 3, "gpus", "bad", "f.csv: row 3, field 'gpus': bad")


def test_validate_trace_cluster_and_empty():
    big = TaskSpec("big", 5.0, "t", "llama-3.1-70b", 4, 10, 8, 1.0, (1e-4,), (16,), (1,))
    validate_trace([TASK_A, big], "mem", cluster_gpus=4)
    with pytest.raises(TraceError) as ei:
        validate_trace([TASK_A, big], "mem", cluster_gpus=2)
    assert (ei.value.row, ei.value.field) == (2, "gpus")
    assert "'big' needs 4 GPUs but the cluster has only 2" in str(ei.value)
    with pytest.raises(TraceError, match="empty"):
        validate_trace([], "mem", None)
    with pytest.raises(TraceError) as ei:
        validate_trace([TASK_A, TASK_A], "mem")
    assert (ei.value.row, ei.value.field) == (2, "task_id")


def test_round_trip_exact(tmp_path):
    tasks = [TASK_A, TaskSpec("z.9", 1 / 3, "a,b \"q\"", "qwen2.5-32b", 8, 1, 1, 0.1, (0.1 + 0.2,), (7,), (3,), 0.5)]
    p = tmp_path / "out.csv"
    write_native(tasks, p)
    assert read_native(p) == tasks
    assert p.read_text().splitlines()[1] == "a,0,ten,llama-3.1-8b,1,7473,1024,3,1e-05;0.0002,16;32,1;8,2"


_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,8}", fullmatch=True)
_POS = st.floats(min_value=1e-9, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def _tasks(draw):
    ids = draw(st.lists(_ID, min_size=1, max_size=4, unique=True))
    out = []
    for tid in ids:
        model = draw(st.sampled_from(sorted(MODELS)))
        out.append(
            TaskSpec(
                task_id=tid,
                arrival_s=draw(st.floats(min_value=0, max_value=1e7, allow_nan=False)),
                tenant=draw(st.text(min_size=1, max_size=6).filter(lambda s: s.strip() and s == s.strip() and s.isprintable())),
                model=model,
                gpus=MODELS[model].gpus + draw(st.integers(0, 3)),
                dataset_size=draw(st.integers(1, 10**6)),
                seq_len=draw(st.integers(1, 8192)),
                epochs=draw(_POS),
                # (unique as job ids spell them: lrs that print alike are rejected)
                lrs=tuple(draw(st.lists(_POS, min_size=1, max_size=4, unique_by=lambda v: f"{v:g}"))),
                ranks=tuple(draw(st.lists(st.integers(1, 512), min_size=1, max_size=4, unique=True))),
                batch_sizes=tuple(draw(st.lists(st.integers(1, 64), min_size=1, max_size=4, unique=True))),
                alpha_over_rank=draw(_POS),
            )
        )
    return out


@settings(max_examples=60, deadline=None)
@given(tasks=_tasks())
def test_round_trip_property(tmp_path_factory, tasks):
    p = tmp_path_factory.mktemp("rt") / "t.csv"
    write_native(tasks, p)
    assert read_native(p) == tasks


def test_write_refuses_invalid_and_keeps_old_file(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("old content\n")
    bad = TaskSpec("c", 0.0, "t", "llama-3.1-70b", 2, 10, 8, 1.0, (1e-4,), (16,), (1,))
    with pytest.raises(TraceError) as ei:
        write_native([TASK_A, TASK_A.__class__(**{**TASK_A.__dict__, "task_id": "b"}), bad], p)
    assert (ei.value.row, ei.value.field) == (3, "gpus")
    assert p.read_text() == "old content\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["t.csv"]


@pytest.mark.parametrize("tenant", ["a\nb", "x\r", " x"])
def test_write_refuses_tenant_that_would_not_read_back(tmp_path, tenant):
    with pytest.raises(TraceError) as ei:
        write_native([TaskSpec(**{**TASK_A.__dict__, "tenant": tenant})], tmp_path / "t.csv")
    assert (ei.value.row, ei.value.field) == (1, "tenant")
    assert list(tmp_path.iterdir()) == []


def test_write_failure_mid_file_leaves_no_partial_output(tmp_path, monkeypatch):
    calls = []
    real = schema._row_of

    def flaky(task):
        calls.append(task.task_id)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(task)

    monkeypatch.setattr(schema, "_row_of", flaky)
    p = tmp_path / "new.csv"
    b = TaskSpec(**{**TASK_A.__dict__, "task_id": "b"})
    with pytest.raises(OSError, match="disk full"):
        write_native([TASK_A, b], p)
    assert calls == ["a", "b"]  # the first row was written to the temporary file
    assert list(tmp_path.iterdir()) == []  # ... which is gone; no partial new.csv


def test_load_trace_native_sorts_and_subsamples(tmp_path):
    p = _write(tmp_path, f"{HEADER}\n{ROW3}\n{ROW2}\n{ROW1}\n")
    assert [t.task_id for t in read_native(p)] == ["c", "b", "a"]  # file order
    assert [t.task_id for t in load_trace(p)] == ["a", "b", "c"]  # by arrival
    assert [(t.task_id, t.arrival_s) for t in load_trace(p, time_window=(5, 15))] == [("b", 10.5)]
    assert [t.task_id for t in load_trace(p, max_tasks=2)] == ["a", "b"]
    with pytest.raises(TraceError, match="no tasks inside time_window"):
        load_trace(p, time_window=(100, 200))
