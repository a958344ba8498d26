"""Book-keeping of one task's adapter slots in simulated training.

All adapters in a task's slots take one optimizer step together per co-located step,
so the task has one step counter `G`. A job admitted at step g0 with s0 samples has
trained s0 + (G - g0)·batch samples at step G; nothing needs touching per step. A heap
holds each in-slot job's next evaluation as a step number, so finding the next event is
O(log n) and only the jobs due are touched, however many adapters share the GPUs.

Heap entries are (due_step, admit_seq, version, job_id). admit_seq orders jobs due at
the same step by admission, as the tuner lists them; a job that leaves its slot bumps
its version, which turns its old entries stale (dropped when they surface).
"""

from __future__ import annotations

import heapq

from alto.policy.types import JobConfig


class TaskSlots:
    """Which jobs are in slots, how far each has trained, and which is due next."""

    def __init__(self, jobs: list[JobConfig]):
        self.by_id = {j.job_id: j for j in jobs}
        self.step = 0  # G: co-located steps this task has run
        self.samples = dict.fromkeys(self.by_id, 0)  # valid for jobs out of a slot
        self.steps = dict.fromkeys(self.by_id, 0)
        self.in_slot: dict[str, JobConfig] = {}  # admission order, like TaskTuner.active
        self._base: dict[str, tuple[int, int, int]] = {}  # job -> (G, samples, steps) at admit
        self._heap: list[tuple[int, int, int, str]] = []
        self._version = dict.fromkeys(self.by_id, 0)
        self._seq = 0
        self._seqs: dict[str, int] = {}  # job -> admission sequence number of its current slot
        self.changed = True  # slot composition changed since the last step-time lookup

    def trained(self, jid: str) -> tuple[int, int]:
        """(samples, steps) of job jid at the current step."""
        if jid not in self.in_slot:
            return self.samples[jid], self.steps[jid]
        g0, s0, st0 = self._base[jid]
        j = self.by_id[jid]
        return min(j.total_samples, s0 + (self.step - g0) * j.batch_size), st0 + self.step - g0

    def admit(self, jid: str, next_eval: int) -> None:
        self.in_slot[jid] = self.by_id[jid]
        self._base[jid] = (self.step, self.samples[jid], self.steps[jid])
        self._seq += 1
        self._seqs[jid] = self._seq
        self._push(jid, next_eval)
        self.changed = True

    def leave(self, jid: str) -> None:
        """Take jid out of its slot (pause, exit or completion), freezing its progress."""
        if jid in self.in_slot:
            self.samples[jid], self.steps[jid] = self.trained(jid)
            del self.in_slot[jid]
            self._version[jid] += 1
            self.changed = True

    def reschedule(self, jid: str, next_eval: int, samples: int) -> None:
        """After an evaluation of an in-slot job at `samples`: queue its next one."""
        self._version[jid] += 1
        self._push(jid, next_eval, samples)

    def _push(self, jid: str, next_eval: int, samples: int | None = None) -> None:
        j = self.by_id[jid]
        if samples is None:
            samples, _ = self.trained(jid)
        need = max(1, -((samples - next_eval) // j.batch_size))  # ceil, at least one step
        heapq.heappush(self._heap, (self.step + need, self._seqs[jid], self._version[jid], jid))

    def next_due_step(self) -> int | None:
        """Step of the earliest pending evaluation among in-slot jobs; None if no job is in a slot."""
        h = self._heap
        while h and (h[0][3] not in self.in_slot or h[0][2] != self._version[h[0][3]]):
            heapq.heappop(h)
        return h[0][0] if h else None

    def pop_due(self) -> list[str]:
        """Advance to the next due step; return the jobs due there in the executor's order:
        by rank, then by admission (alto/executor/runner.py orders a step's adapters by
        rank, stably, and reports their losses in that order; ASHA's decisions depend on
        the order of reports at a rung)."""
        due_step = self.next_due_step()
        self.step = due_step
        out = []
        h = self._heap
        while h and h[0][0] == due_step:
            _, seq, ver, jid = heapq.heappop(h)
            if jid in self.in_slot and ver == self._version[jid]:
                out.append((self.by_id[jid].rank, seq, jid))
        return [jid for _, _, jid in sorted(out)]
