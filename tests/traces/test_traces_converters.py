"""Converters: hand-written rows in each public format -> exact TaskSpecs; malformed rows -> TraceError.

Rows follow each format's documentation (see the converter docstrings); several are copied
from the formats' own README examples or data files. Expected values are computed by hand:
dataset_size = clip(round(duration_s * 2 / 3), 1000, 20000); arrival = submit - first kept submit.
"""

from __future__ import annotations

import json

import pytest

from alto.policy.types import TaskSpec
from traces.converters import round_gpus
from traces.loader import load_trace
from traces.schema import TraceError

SPACE_1GPU = ((1e-5, 5e-5, 2e-4, 3e-4, 5e-4), (16, 32, 64), (1, 2, 4, 8))
SPACE_MULTI = ((1e-5, 5e-5, 1e-4, 3e-4), (16, 32, 64, 128), (1, 2, 4, 8))
MODEL = {1: "llama-3.1-8b", 2: "qwen2.5-32b", 4: "llama-3.1-70b"}


def T(task_id: str, arrival: float, tenant: str, gpus: int, size: int) -> TaskSpec:
    space = SPACE_1GPU if gpus == 1 else SPACE_MULTI
    return TaskSpec(task_id, float(arrival), tenant, MODEL[gpus], gpus, size, 1024, 3.0, *space)


def _file(tmp_path, text: str, name: str):
    p = tmp_path / name
    p.write_text(text)
    return p


def _err(path, fmt: str, **kw) -> TraceError:
    with pytest.raises(TraceError) as ei:
        load_trace(path, fmt, **kw)
    assert ei.value.file == str(path)
    return ei.value


def _check_one_bad_cell(tmp_path, fmt, header, good_rows, row_no, column, value, field, needle):
    """Replace one cell of otherwise good CSV rows; the TraceError must name that row and field."""
    rows = [r.split(",") for r in good_rows]
    rows[row_no - 1][column] = value
    p = _file(tmp_path, header + "\n".join(",".join(r) for r in rows) + "\n", f"bad_{fmt}.csv")
    e = _err(p, fmt)
    assert (e.row, e.field) == (row_no, field)
    assert needle in e.problem


def test_round_gpus_rule():
    assert [round_gpus(g) for g in (0, 0.22, 1, 2, 3, 4, 5, 8, 64)] == [
        None,
        1,
        1,
        2,
        4,
        4,
        4,
        4,
        4,
    ]
    assert round_gpus(8, over_4="drop") is None and round_gpus(4, over_4="drop") == 4


# ---------------------------------------------------------------- AcmeTrace

# fmt: off
SEREN_HEADER = "job_id,user,node_num,gpu_num,cpu_num,type,state,submit_time,start_time,end_time,duration,queue,gpu_time\n"
SEREN_ROWS = [
    # rows 1-2: the README's trace_seren.csv example
    "5778432,u5907,1,8,128,Other,FAILED,2023-03-01 00:18:22+08:00,2023-03-01 00:18:54+08:00,2023-03-01 00:20:51+08:00,117,32,936.0",
    "5778469,u5907,1,8,128,Other,COMPLETED,2023-03-01 00:23:58+08:00,2023-03-01 00:24:11+08:00,2023-03-01 01:09:04+08:00,2693,13,21544.0",
    "5778500,u0001,1,0,16,Eval,COMPLETED,2023-03-01 00:30:00+08:00,2023-03-01 00:30:01+08:00,2023-03-01 00:31:41+08:00,100,1,0.0",
    "5778511,u0002,1,2,32,SFT,CANCELLED,2023-03-01 00:40:00+08:00,2023-03-01 00:40:05+08:00,2023-03-01 00:41:05+08:00,60,5,120.0",
    "5778520,u0002,1,3,48,SFT,COMPLETED,2023-03-01 01:00:00+08:00,2023-03-01 01:00:00+08:00,2023-03-01 02:15:00+08:00,4500,0,13500.0",
    # same instant as 02:00:00+08:00, written in UTC
    "5778530,u0003,1,1,16,Debug,COMPLETED,2023-02-28 18:00:00+00:00,2023-02-28 18:00:00+00:00,2023-03-01 04:00:00+00:00,36000,0,36000.0",
    "5778540,u0004,1,1,16,SFT,TIMEOUT,2023-03-01 00:45:00+08:00,2023-03-01 00:45:00+08:00,2023-03-01 04:45:00+08:00,14400,0,14400.0",
    "5778550,u0005,1,1,16,SFT,COMPLETED,2023-03-01 00:50:00+08:00,,,,,",
    "5778560,u0006,1,4,64,SFT,CANCELLED,2023-03-01 00:55:00+08:00,,,0,0,0.0",
]
SEREN_EXPECTED = [
    T("5778469", 0, "u5907", 4, 1795),  # 8 GPUs capped to 4; 2693 s -> 1795.3
    T("5778511", 962, "u0002", 2, 1000),  # 60 s -> 40, clipped up
    T("5778520", 2162, "u0002", 4, 3000),  # 3 GPUs rounded up to 4
    T("5778530", 5762, "u0003", 1, 20000),  # 36000 s -> 24000, clipped down
]
# fmt: on


@pytest.fixture
def seren(tmp_path):
    return _file(tmp_path, SEREN_HEADER + "\n".join(SEREN_ROWS) + "\n", "trace_seren.csv")


def test_acme_seren_exact(seren):
    stats: dict = {}
    assert load_trace(seren, "acme", stats=stats) == SEREN_EXPECTED
    assert stats == {
        "state_FAILED": 1,
        "state_TIMEOUT": 1,
        "cpu_only": 1,
        "no_duration": 1,
        "zero_duration": 1,
        "kept": 4,
        "capped_to_4_gpus": 1,  # the 8-GPU job 5778469
    }


def test_acme_options(seren):
    ids = lambda ts: [(t.task_id, t.arrival_s) for t in ts]  # noqa: E731
    assert ids(load_trace(seren, "acme", over_4="drop")) == [
        ("5778511", 0),
        ("5778520", 1200),
        ("5778530", 4800),
    ]
    assert ids(load_trace(seren, "acme", time_window=(900, 3000))) == [
        ("5778511", 0),
        ("5778520", 1200),
    ]
    assert ids(load_trace(seren, "acme", max_tasks=2)) == [("5778469", 0), ("5778511", 962)]
    assert ids(load_trace(seren, "acme", types=("SFT",))) == [("5778511", 0), ("5778520", 1200)]
    (t,) = load_trace(
        seren, "acme", max_tasks=1, samples_per_s=1.0, seq_len=2048, grid="small", min_samples=500
    )
    assert (t.dataset_size, t.seq_len, len(t.jobs())) == (898, 2048, 8)  # 2693 / 3 = 897.7
    with pytest.raises(TypeError, match="samples_per_sec"):
        load_trace(seren, "acme", samples_per_sec=1.0)


def test_acme_kalos_header(tmp_path):
    header = (
        "job_id,user,node_num,gpu_num,cpu_num,mem_per_pod_GB,shared_mem_per_pod,type,state,"
        "submit_time,start_time,end_time,fail_time,stop_time,duration,queue,gpu_time\n"
    )
    rows = (  # the README's trace_kalos.csv example, plus one hand-written row
        "dlctk696s0jbvitv,uf794,8,64,960,1000,100.0,Other,FAILED,2023-05-17 11:00:58+00:00,2023-05-17 11:01:08+00:00,2023-05-17 11:01:16+00:00,2023-05-17 11:01:16+00:00,,18,10.0,1152.0\n"
        "dlc1t2ypl09b8qtp,uf794,8,64,960,1000,100.0,Other,CANCELLED,2023-05-17 11:28:42+00:00,2023-05-17 11:28:54+00:00,2023-05-17 11:30:04+00:00,,2023-05-17 11:30:04+00:00,82,12.0,5248.0\n"
        "dlcabc,uf001,1,4,64,500,50.0,SFT,COMPLETED,2023-05-17 12:00:00+00:00,2023-05-17 12:00:10+00:00,2023-05-17 14:00:10+00:00,,,7200,10.0,28800.0\n"
    )
    p = _file(tmp_path, header + rows, "trace_kalos.csv")
    assert load_trace(p, "acme") == [
        T("dlc1t2ypl09b8qtp", 0, "uf794", 4, 1000),
        T("dlcabc", 1878, "uf001", 4, 4800),
    ]


@pytest.mark.parametrize(
    "row_no, column, value, field, needle",
    [
        (2, 3, "eight", "gpu_num", "not a number: 'eight'"),
        (1, 7, "yesterday", "submit_time", "not a timestamp"),
        (4, 10, "-5", "duration", "negative duration"),
        (5, 10, "4500s", "duration", "not a number"),
        (6, 0, "5778469", "job_id", "duplicate job id '5778469' (first in row 2)"),
        (6, 1, "", "user", "non-empty"),
    ],
)
def test_acme_malformed(tmp_path, row_no, column, value, field, needle):
    _check_one_bad_cell(
        tmp_path, "acme", SEREN_HEADER, SEREN_ROWS, row_no, column, value, field, needle
    )


def test_acme_structure_errors(tmp_path):
    e = _err(_file(tmp_path, SEREN_HEADER.replace(",duration", ""), "a.csv"), "acme")
    assert (e.row, e.field) == (None, "duration")
    e = _err(_file(tmp_path, SEREN_HEADER + SEREN_ROWS[1] + "\n5778470,u1,1,8\n", "b.csv"), "acme")
    assert (e.row, e.field) == (2, "cpu_num")
    e = _err(_file(tmp_path, SEREN_HEADER + SEREN_ROWS[0] + "\n", "c.csv"), "acme")
    assert e.row is None and "state_FAILED: 1" in e.problem


# ---------------------------------------------------------------- Philly


def _attempt(start, end, *machines):
    return {
        "start_time": start,
        "end_time": end,
        "detail": [{"ip": ip, "gpus": g} for ip, g in machines],
    }


# fmt: off
GPUS8 = [f"gpu{i}" for i in range(8)]
PHILLY_JOBS = [
    {"status": "Failed", "vc": "aaa111", "jobid": "application_1_1", "user": "u1",
     "submitted_time": "2017-10-07 01:00:00",
     "attempts": [_attempt("2017-10-07 01:00:10", "2017-10-07 01:00:20", ("m1", ["gpu0"]))]},
    # the README's example entry
    {"status": "Pass", "vc": "ee9e8c", "jobid": "application_1506638472019_14199",
     "attempts": [_attempt("2017-10-07 01:12:09", "2017-10-07 01:13:23", ("m47", GPUS8)),
                  _attempt("2017-10-07 01:13:30", "2017-10-09 06:53:12", ("m412", GPUS8))],
     "submitted_time": "2017-10-07 01:11:39", "user": "ce2f4c"},
    {"status": "Killed", "vc": "b2", "jobid": "application_1_3", "user": "u3",
     "submitted_time": "2017-10-07 02:11:39",
     "attempts": [_attempt("2017-10-07 02:12:00", "2017-10-07 02:20:00", ("m1", ["gpu0"]), ("m2", ["gpu3"])),
                  _attempt("2017-10-07 02:30:00", "2017-10-07 03:02:00", ("m1", ["gpu0"]), ("m2", ["gpu3"]))]},
    {"status": "Pass", "vc": "b2", "jobid": "application_1_4", "user": "u4",
     "submitted_time": "2017-10-07 02:00:00", "attempts": []},
    {"status": "Pass", "vc": "b2", "jobid": "application_1_5", "user": "u5",
     "submitted_time": "2017-10-07 02:00:00",
     "attempts": [_attempt("2017-10-07 02:00:05", None, ("m3", ["gpu1"]))]},
    {"status": "Pass", "vc": "c3", "jobid": "application_1_6", "user": "u6",
     "submitted_time": "2017-10-07 01:41:39",
     "attempts": [_attempt("2017-10-07 01:42:00", "2017-10-07 02:42:00", ("m5", ["gpu2"]))]},
]
# fmt: on


def _philly(tmp_path, jobs, name="cluster_job_log"):
    return _file(tmp_path, json.dumps(jobs, indent=2), name)


def test_philly_exact(tmp_path):
    stats: dict = {}
    got = load_trace(_philly(tmp_path, PHILLY_JOBS), "philly", stats=stats)
    assert got == [
        T("application_1506638472019_14199", 0, "ee9e8c", 4, 20000),  # 193263 s run; 8 GPUs -> 4
        T("application_1_6", 1800, "c3", 1, 2400),  # 3600 s
        T(
            "application_1_3", 3600, "b2", 2, 2000
        ),  # 2 machines x 1 GPU; first start to last end = 3000 s
    ]
    assert stats == {"status_Failed": 1, "no_attempts": 1, "no_duration": 1, "kept": 3, "capped_to_4_gpus": 1}
    by_user = load_trace(_philly(tmp_path, PHILLY_JOBS, "j2"), "philly", tenant_key="user")
    assert [t.tenant for t in by_user] == ["ce2f4c", "u6", "u3"]


def _with(i, **changes):
    jobs = json.loads(json.dumps(PHILLY_JOBS))
    jobs[i].update(changes)
    return jobs


# fmt: off
@pytest.mark.parametrize(
    "jobs, row, field, needle",
    [
        (_with(1, submitted_time="2017/10/07 01:11:39"), 2, "submitted_time", "not a timestamp"),
        (_with(2, attempts=[{"start_time": "2017-10-07 02:12:00", "end_time": "2017-10-07 02:20:00",
                             "detail": [{"ip": "m1", "gpus": "gpu0"}]}]),
         3, "attempts[0].detail[0].gpus", "expected a list"),
        (_with(5, attempts=[_attempt("2017-10-07 01:42:00", "2017-10-07 01:40:00", ("m5", ["gpu2"]))]),
         6, "attempts[-1].end_time", "ends before"),
        (_with(0, attempts="none"), 1, "attempts", "expected a list"),
        (PHILLY_JOBS[:1] + ["oops"], 2, None, "not a JSON object"),
    ],
)
# fmt: on
def test_philly_malformed(tmp_path, jobs, row, field, needle):
    e = _err(_philly(tmp_path, jobs), "philly")
    assert (e.row, e.field, needle in e.problem) == (row, field, True)


def test_philly_missing_key_and_bad_file(tmp_path):
    jobs = json.loads(json.dumps(PHILLY_JOBS))
    del jobs[3]["submitted_time"]
    e = _err(_philly(tmp_path, jobs), "philly")
    assert (e.row, e.field, e.problem) == (4, "submitted_time", "missing key")
    e = _err(_file(tmp_path, '{"jobs": []}', "d.json"), "philly")
    assert (e.row, e.field) == (None, None) and "JSON list" in e.problem
    e = _err(_file(tmp_path, "[{", "e.json"), "philly")
    assert "not valid JSON" in e.problem


# ---------------------------------------------------------------- Alibaba openb (gpu-v2023)

# fmt: off
OPENB_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
OPENB_ROWS = [
    # rows 1-7 are copied from csv/openb_pod_list_default.csv
    "openb-pod-0016,32000,65536,0,0,,LS,Running,8962274,12902960,8962277",
    "openb-pod-0017,88000,327680,8,1000,,Burstable,Succeeded,9437497,10769854,9437497",
    "openb-pod-0022,4000,15258,1,220,,BE,Running,9679175,9973826,9679175",
    "openb-pod-0033,3152,5600,1,1000,,BE,Failed,9965463,9965645,9965463",
    "openb-pod-0035,16000,32768,1,1000,V100M16|V100M32,LS,Running,9967058,9968575,9967063",
    "openb-pod-0056,12000,49152,1,1000,,LS,Succeeded,9999740,9999855,9999740",
    "openb-pod-0061,11908,47104,1,1000,,BE,Pending,10001278,10001403,",
    # hand-written, following the README's column definitions
    "openb-pod-9001,16000,65536,2,1000,,LS,Succeeded,10003000,10009000,10003100",
    "openb-pod-9002,4000,8192,1,1000,,LS,Running,10004000,10004100,",
]
# fmt: on


def test_openb_exact(tmp_path):
    p = _file(tmp_path, OPENB_HEADER + "\n".join(OPENB_ROWS) + "\n", "openb_pod_list_default.csv")
    stats: dict = {}
    assert load_trace(p, "openb", stats=stats) == [
        T("openb-pod-0017", 0, "Burstable", 4, 20000),  # 8 GPUs -> 4; 1332357 s
        T("openb-pod-0022", 241678, "BE", 1, 20000),  # shared GPU (220 milli) -> 1 GPU
        T("openb-pod-0035", 529561, "LS", 1, 1008),  # 1512 s from scheduled to deleted
        T("openb-pod-0056", 562243, "LS", 1, 1000),  # 115 s -> 77, clipped up
        T("openb-pod-9001", 565503, "LS", 2, 3933),  # 5900 s
    ]
    assert stats == {
        "cpu_only": 1,
        "phase_Failed": 1,
        "phase_Pending": 1,
        "never_scheduled": 1,
        "kept": 5,
        "capped_to_4_gpus": 1,
    }


@pytest.mark.parametrize(
    "row_no, column, value, field, needle",
    [
        (3, 3, "one", "num_gpu", "not a number"),
        (2, 8, "", "creation_time", "not a number: ''"),
        (6, 9, "9999000", "deletion_time", "before scheduled_time"),
        (8, 10, "soon", "scheduled_time", "not a number"),
    ],
)
def test_openb_malformed(tmp_path, row_no, column, value, field, needle):
    _check_one_bad_cell(
        tmp_path, "openb", OPENB_HEADER, OPENB_ROWS, row_no, column, value, field, needle
    )


@pytest.mark.parametrize(("name", "data", "problem"), [
    ("log.gz", b"garbage, not gzip", "not a readable gzip file"),
    ("log.json", b"[\xff]", "not UTF-8 text"),
])
def test_philly_unreadable_file_names_it(tmp_path, name, data, problem):
    """These used to report only the decoder's message, without the file."""
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(TraceError, match=problem) as e:
        load_trace(p, "philly")
    assert str(p) in str(e.value)
