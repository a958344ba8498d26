"""Alibaba cluster-trace-gpu-v2023 ("openb") pod lists -> ALTO tasks.

Format source: https://github.com/alibaba/clusterdata, cluster-trace-gpu-v2023/README.md
and the header of cluster-trace-gpu-v2023/csv/openb_pod_list_default.csv (also every
other openb_pod_list_*.csv):

    name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,
    deletion_time,scheduled_time
    e.g. openb-pod-0017,88000,327680,8,1000,,Burstable,Succeeded,9437497,10769854,9437497
         openb-pod-0061,11908,47104,1,1000,,BE,Pending,10001278,10001403,

num_gpu: GPUs requested (0-8); gpu_milli: the share of one GPU for GPU-sharing pods
(num_gpu == 1), in thousandths; qos: Burstable, BE, LS, Guaranteed, ...; pod_phase:
Succeeded, Running, Pending, Failed; times are integer seconds on the trace's own clock
(scheduled_time is empty for pods never scheduled).

Mapping (on top of traces.converters' shared one):
- name -> task_id, qos -> tenant, creation_time -> arrival, num_gpu -> gpus (a shared
  GPU, gpu_milli < 1000, counts as one whole GPU: LoRA tasks do not share a GPU),
  deletion_time - scheduled_time -> duration -> dataset_size.
- rows kept: pod_phase in `keep_phases` (default Succeeded and Running: Running pods have
  a deletion_time in this trace, so they ran for a known time; Failed and Pending are
  skipped), num_gpu > 0, a non-empty scheduled_time.
- malformed (TraceError with row and column): non-numeric num_gpu / times, or
  deletion_time before scheduled_time.
"""

from __future__ import annotations

import os
from collections import Counter

from alto.policy.types import TaskSpec
from traces.converters import RawJob, build_tasks, make_mapping, parse_number
from traces.schema import TraceError, iter_csv

REQUIRED = (
    "name",
    "num_gpu",
    "qos",
    "pod_phase",
    "creation_time",
    "deletion_time",
    "scheduled_time",
)
DEFAULT_KEEP_PHASES = ("Succeeded", "Running")


def convert_openb(
    path: str | os.PathLike,
    *,
    max_tasks: int | None = None,
    time_window: tuple[float, float] | None = None,
    keep_phases: tuple[str, ...] = DEFAULT_KEEP_PHASES,
    stats: dict | None = None,
    **mapping,
) -> list[TaskSpec]:
    """Read an openb_pod_list_*.csv and map its GPU pods to tasks.

    stats: if given, filled with skip-reason counts and "kept".
    mapping: options of traces.converters.Mapping (samples_per_s, epochs, seq_len, ...).
    """
    m = make_mapping(mapping)
    skipped: Counter = Counter()
    jobs = []
    for row, c in iter_csv(path, REQUIRED):
        gpus = parse_number(path, row, "num_gpu", c["num_gpu"])
        created = parse_number(path, row, "creation_time", c["creation_time"])
        if c["pod_phase"] not in keep_phases:
            skipped[f"phase_{c['pod_phase'] or 'empty'}"] += 1
            continue
        if not c["scheduled_time"]:
            skipped["never_scheduled"] += 1
            continue
        start = parse_number(path, row, "scheduled_time", c["scheduled_time"])
        end = parse_number(path, row, "deletion_time", c["deletion_time"])
        if end < start:
            raise TraceError(
                path, row, "deletion_time", f"{end:g} is before scheduled_time {start:g}"
            )
        jobs.append(RawJob(c["name"], c["qos"], created, gpus, end - start, row))
    return build_tasks(
        jobs,
        path,
        m,
        skipped,
        max_tasks=max_tasks,
        time_window=time_window,
        stats=stats,
        source_fields={"task_id": "name", "tenant": "qos"},
    )
