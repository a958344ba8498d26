"""Microsoft Philly (ATC'19) cluster_job_log -> ALTO tasks.

Format source: https://github.com/msr-fiddle/philly-traces, README.md "Schema /
cluster_job_log" and analysis/Philly Trace Analysis.ipynb (which reads the file with
`json.load`: one JSON list of job objects, dates as '%Y-%m-%d %H:%M:%S'):

    [{"status": "Pass", "vc": "ee9e8c", "jobid": "application_1506638472019_14199",
      "attempts": [{"start_time": "2017-10-07 01:12:09", "end_time": "2017-10-07 01:13:23",
                    "detail": [{"ip": "m47", "gpus": ["gpu0", ..., "gpu7"]}]}, ...],
      "submitted_time": "2017-10-07 01:11:39", "user": "ce2f4c"}, ...]

status: Pass, Killed or Failed. A job may have no attempts; an attempt may lack
start_time/end_time (None, "" or "None"); a last attempt without end_time was still
running when the log was taken (README notes).

Mapping (on top of traces.converters' shared one), following the official notebook:
- jobid -> task_id; vc (the team's virtual cluster; `tenant_key="user"` for users) ->
  tenant; submitted_time -> arrival.
- gpus = total GPUs of the FIRST attempt's `detail` (the notebook's num_gpus).
- duration = last attempt's end_time - first attempt's start_time (the notebook's
  run_time, which includes retries) -> dataset_size.
- rows (jobs) kept: status in `keep_status` (default Pass and Killed: Killed jobs were
  stopped by their user after running; Failed are skipped), at least one attempt, known
  start and end time. Rows are 1-based positions in the JSON list.
- timestamps carry no time zone (local cluster time); they are read as naive times, so
  an arrival across a DST change may be off by an hour.
- malformed (TraceError with row and key): not a JSON list, a job that is not an object,
  a missing key, a bad timestamp, `detail`/`gpus` that are not lists, an end before the start.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

from alto.policy.types import TaskSpec
from traces.converters import RawJob, build_tasks, make_mapping, parse_time
from traces.schema import TraceError

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_KEEP_STATUS = ("Pass", "Killed")


def _load_json(path) -> list:
    p = Path(path)
    if not p.is_file():
        raise TraceError(path, None, None, "no such file")
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise TraceError(
            path, None, None, f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None
    except UnicodeDecodeError as e:
        raise TraceError(path, None, None, f"not UTF-8 text (byte {e.start}: {e.reason})") from None
    except (gzip.BadGzipFile, EOFError) as e:  # a .gz name on a file that is not (whole) gzip
        raise TraceError(path, None, None, f"not a readable gzip file ({e})") from None
    if not isinstance(data, list):
        raise TraceError(
            path, None, None, f"expected a JSON list of jobs, got {type(data).__name__}"
        )
    return data


def _time_or_none(path, row: int, key: str, value) -> float | None:
    if value is None or value == "" or value == "None":
        return None
    if not isinstance(value, str):
        raise TraceError(path, row, key, f"expected a '{DATE_FORMAT}' string, got {value!r}")
    return parse_time(path, row, key, value, DATE_FORMAT)


def _first_attempt_gpus(path, row: int, attempt) -> int:
    if not isinstance(attempt, dict):
        raise TraceError(path, row, "attempts[0]", "attempt is not a JSON object")
    detail = attempt.get("detail")
    if not isinstance(detail, list):
        raise TraceError(path, row, "attempts[0].detail", f"expected a list, got {detail!r}")
    n = 0
    for k, d in enumerate(detail):
        gpus = d.get("gpus") if isinstance(d, dict) else None
        if not isinstance(gpus, list):
            raise TraceError(
                path, row, f"attempts[0].detail[{k}].gpus", "expected a list of GPU ids"
            )
        n += len(gpus)
    return n


def convert_philly(
    path: str | os.PathLike,
    *,
    max_tasks: int | None = None,
    time_window: tuple[float, float] | None = None,
    keep_status: tuple[str, ...] = DEFAULT_KEEP_STATUS,
    tenant_key: str = "vc",
    stats: dict | None = None,
    **mapping,
) -> list[TaskSpec]:
    """Read a Philly cluster_job_log (JSON, optionally .gz) and map its jobs to tasks.

    tenant_key: "vc" (default) or "user". stats: if given, filled with skip-reason counts
    and "kept". mapping: options of traces.converters.Mapping.
    """
    if tenant_key not in ("vc", "user"):
        raise ValueError(f"tenant_key must be 'vc' or 'user', got {tenant_key!r}")
    m = make_mapping(mapping)
    skipped: Counter = Counter()
    jobs = []
    for row, job in enumerate(_load_json(path), start=1):
        if not isinstance(job, dict):
            raise TraceError(path, row, None, f"job is not a JSON object: {job!r:.60}")
        for key in ("jobid", "status", tenant_key, "submitted_time", "attempts"):
            if key not in job:
                raise TraceError(path, row, key, "missing key")
        submit = _time_or_none(path, row, "submitted_time", job["submitted_time"])
        if submit is None:
            raise TraceError(path, row, "submitted_time", "no submission time")
        attempts = job["attempts"]
        if not isinstance(attempts, list):
            raise TraceError(path, row, "attempts", f"expected a list, got {attempts!r:.60}")
        if job["status"] not in keep_status:
            skipped[f"status_{job['status']}"] += 1
            continue
        if not attempts:
            skipped["no_attempts"] += 1
            continue
        gpus = _first_attempt_gpus(path, row, attempts[0])
        if not isinstance(attempts[-1], dict):
            raise TraceError(path, row, "attempts[-1]", "attempt is not a JSON object")
        start = _time_or_none(path, row, "attempts[0].start_time", attempts[0].get("start_time"))
        end = _time_or_none(path, row, "attempts[-1].end_time", attempts[-1].get("end_time"))
        if start is None or end is None:
            skipped["no_duration"] += 1
            continue
        if end < start:
            raise TraceError(
                path, row, "attempts[-1].end_time", "ends before attempts[0].start_time"
            )
        jobs.append(RawJob(str(job["jobid"]), str(job[tenant_key]), submit, gpus, end - start, row))
    return build_tasks(
        jobs,
        path,
        m,
        skipped,
        max_tasks=max_tasks,
        time_window=time_window,
        stats=stats,
        source_fields={"task_id": "jobid", "tenant": tenant_key},
    )
