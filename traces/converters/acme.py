"""AcmeTrace (Shanghai AI Lab, NSDI'24) job traces -> ALTO tasks.

Format source: https://github.com/InternLM/AcmeTrace, README.md "Schema and Description /
1. Job Trace" (files data/job_trace/trace_seren.csv and trace_kalos.csv; the repository's
analysis.ipynb reads them with a plain `pd.read_csv`, so the first line is the header):

    trace_seren.csv: job_id,user,node_num,gpu_num,cpu_num,type,state,submit_time,
                     start_time,end_time,duration,queue,gpu_time
    trace_kalos.csv: job_id,user,node_num,gpu_num,cpu_num,mem_per_pod_GB,
                     shared_mem_per_pod,type,state,submit_time,start_time,end_time,
                     fail_time,stop_time,duration,queue,gpu_time
    e.g. 5778469,u5907,1,8,128,Other,COMPLETED,2023-03-01 00:23:58+08:00,
         2023-03-01 00:24:11+08:00,2023-03-01 01:09:04+08:00,2693,13,21544.0

`duration` is end_time - start_time in seconds; `state` is one of COMPLETED, CANCELLED,
FAILED, TIMEOUT, NODE_FAIL (the README counts the last two as failed); `type` is the
workload type (Eval, Pretrain, SFT, MLLM, Debug, Other, per analysis.ipynb).

Mapping (on top of traces.converters' shared one):
- columns used: job_id -> task_id, user -> tenant, gpu_num -> gpus, submit_time -> arrival,
  duration -> dataset_size; both files work (only these columns are required, plus
  `state`, and `type` when `types` is given).
- rows kept: state in `keep_states` (default COMPLETED and CANCELLED: the job really ran
  and its submission loaded the cluster; FAILED/TIMEOUT/NODE_FAIL and anything else are
  skipped), gpu_num > 0, a non-empty duration.
- malformed (TraceError with row and column): a non-numeric gpu_num or duration, a
  negative duration, a submit_time that is not an ISO-8601 timestamp.
"""

from __future__ import annotations

import os
from collections import Counter

from alto.policy.types import TaskSpec
from traces.converters import RawJob, build_tasks, make_mapping, parse_number, parse_time
from traces.schema import TraceError, iter_csv

REQUIRED = ("job_id", "user", "gpu_num", "state", "submit_time", "duration")
DEFAULT_KEEP_STATES = ("COMPLETED", "CANCELLED")


def convert_acme(
    path: str | os.PathLike,
    *,
    max_tasks: int | None = None,
    time_window: tuple[float, float] | None = None,
    keep_states: tuple[str, ...] = DEFAULT_KEEP_STATES,
    types: tuple[str, ...] | None = None,
    stats: dict | None = None,
    **mapping,
) -> list[TaskSpec]:
    """Read an AcmeTrace job CSV (Seren or Kalos) and map its jobs to tasks.

    types: keep only these workload types (e.g. ("SFT",)); None keeps all.
    stats: if given, filled with skip-reason counts and "kept".
    mapping: options of traces.converters.Mapping (samples_per_s, epochs, seq_len, ...).
    """
    m = make_mapping(mapping)
    required = REQUIRED + (("type",) if types is not None else ())
    skipped: Counter = Counter()
    jobs = []
    for row, c in iter_csv(path, required):
        gpus = parse_number(path, row, "gpu_num", c["gpu_num"])
        submit = parse_time(path, row, "submit_time", c["submit_time"])
        if c["state"] not in keep_states:
            skipped[f"state_{c['state'] or 'empty'}"] += 1
            continue
        if types is not None and c["type"] not in types:
            skipped["type_filtered"] += 1
            continue
        if not c["duration"]:
            skipped["no_duration"] += 1
            continue
        duration = parse_number(path, row, "duration", c["duration"])
        if duration < 0:
            raise TraceError(path, row, "duration", f"negative duration {duration:g} s")
        jobs.append(RawJob(c["job_id"], c["user"], submit, gpus, duration, row))
    return build_tasks(
        jobs,
        path,
        m,
        skipped,
        max_tasks=max_tasks,
        time_window=time_window,
        stats=stats,
        source_fields={"task_id": "job_id", "tenant": "user"},
    )
