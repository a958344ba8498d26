"""Schedule generation for rigid tasks on a pool of identical GPUs (the planners' heuristics).

Model (shared by every planner, see `alto.policy.planner`): `total_gpus` identical GPUs;
a task needs `g` of them at once for `d` seconds (rigid, not preemptible, any `g` GPUs of
the pool will do); running tasks hold their GPUs until their expected end. A schedule is
feasible iff at every instant the GPUs in use (running + started pending) are <= total_gpus.
Any such schedule can be mapped onto specific GPU ids greedily in start order, so the
cumulative view loses nothing (the MILP's explicit GPU assignment is equivalent).

Two generators, both deterministic and clock-free:

* `strict_order_starts` -- no overtaking: task k starts at the earliest time >= the start of
  task k-1 (and >= its release) at which it fits. Starts are non-decreasing, so from that
  start on the free capacity only grows and a min-heap of end events suffices:
  O(P log P + R log R) for P pending and R running tasks. Used by "fifo" and "sjf".
* `serial_sgs_starts` -- the serial schedule generation scheme (SGS): in priority order,
  each task starts at the earliest time >= its release at which `g` GPUs are free for
  the whole of [t, t + d), given every task placed before it. Later tasks may therefore
  backfill holes left in front of earlier ones without delaying them (those are already
  placed). Used by "lpt" and as ALTO's heuristic; over all priority orders it yields every
  active schedule, which is what the brute-force reference in the tests enumerates.

`Profile` keeps the free capacity as a step function on sorted Python lists
(`times[k]`, `free[k]` = free GPUs on [times[k], times[k+1]), the last step runs to +inf
with free == total). Placing a task costs a bisect, a forward scan over the steps its
window covers and two list inserts (memmove); `first_fit[g]` remembers the earliest step
with >= g free GPUs, which only moves right because placements only consume capacity.
Worst case O(P * steps) = O(P^2); in practice the scan is short (see bench_planner.py).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Sequence


class Profile:
    """Free GPUs over time as a step function; mutated by `reserve`.

    times: strictly increasing breakpoints (seconds), times[0] == now.
    free:  free[k] GPUs on [times[k], times[k+1]); free[-1] == total (all work done).
    """

    __slots__ = ("times", "free", "first_fit")

    def __init__(self, now_s: float, total_gpus: int, busy: Sequence[tuple[float, int]]):
        # busy: (end_s, gpus) of work already fixed (running tasks); ends <= now are free now.
        ends: dict[float, int] = {}
        in_use = 0
        for end_s, g in busy:
            if end_s > now_s:
                ends[end_s] = ends.get(end_s, 0) + g
                in_use += g
        self.times = [now_s]
        self.free = [total_gpus - in_use]
        for end_s in sorted(ends):
            self.times.append(end_s)
            self.free.append(self.free[-1] + ends[end_s])
        self.first_fit: dict[int, float] = {}

    def copy(self) -> Profile:
        other = Profile.__new__(Profile)
        other.times = self.times.copy()
        other.free = self.free.copy()
        other.first_fit = self.first_fit.copy()
        return other

    def earliest_fit(self, g: int, d: float, release_s: float) -> tuple[float, int]:
        """Earliest t >= release_s with >= g free GPUs on all of [t, t + d).

        Returns (t, k) with k the index of the step containing t. Always succeeds because
        the last step is unbounded with free == total >= g.
        """
        times, free = self.times, self.free
        lo = self.first_fit.get(g, times[0])
        from_lo = release_s <= lo
        k = bisect_right(times, max(release_s, lo)) - 1
        t = max(release_s, times[k])
        while free[k] < g:
            k += 1
            t = times[k]
        if from_lo:
            # No step before k has g free GPUs, and capacity never comes back.
            self.first_fit[g] = times[k]
        while True:
            # Steps k..e-1 cover [t, t + d); min() and the slice run at C speed.
            e = bisect_left(times, t + d, k + 1)
            if min(free[k:e]) >= g:
                return t, k
            # Every window starting in [t, times[jb]] covers the last too-full step jb.
            jb = e - 1
            while free[jb] >= g:
                jb -= 1
            k = jb + 1
            while free[k] < g:
                k += 1
            t = times[k]

    def reserve(self, t: float, k: int, g: int, d: float) -> None:
        """Take g GPUs on [t, t + d); (t, k) as returned by `earliest_fit`."""
        if d <= 0.0:
            return
        times, free = self.times, self.free
        if times[k] < t:  # start inside step k (release date): split it
            k += 1
            times.insert(k, t)
            free.insert(k, free[k - 1])
        end = t + d
        e = bisect_left(times, end, k)
        if e == len(times) or times[e] != end:
            times.insert(e, end)
            free.insert(e, free[e - 1])
        free[k:e] = map((-g).__add__, free[k:e])


def _all_fit_now(
    now_s: float,
    total_gpus: int,
    busy: Sequence[tuple[float, int]],
    tasks: Sequence[tuple[int, float, float]],
) -> bool:
    """Fast path, O(P + R): everything is released and fits at once, so every task starts now
    (capacity only grows after now, so this is what both generators would compute)."""
    need = 0
    for g, _, rel in tasks:
        if rel > now_s:
            return False
        need += g
    return need + sum(g for e, g in busy if e > now_s) <= total_gpus


def serial_sgs_starts(
    now_s: float,
    total_gpus: int,
    busy: Sequence[tuple[float, int]],
    tasks: Sequence[tuple[int, float, float]],
) -> list[float]:
    """Serial SGS. tasks: (gpus, duration_s, release_s) in priority order -> start_s per task."""
    if _all_fit_now(now_s, total_gpus, busy, tasks):
        return [now_s] * len(tasks)
    prof = Profile(now_s, total_gpus, busy)
    starts = []
    for g, d, rel in tasks:
        t, k = prof.earliest_fit(g, d, rel)
        prof.reserve(t, k, g, d)
        starts.append(t)
    return starts


def strict_order_starts(
    now_s: float,
    total_gpus: int,
    busy: Sequence[tuple[float, int]],
    tasks: Sequence[tuple[int, float, float]],
) -> list[float]:
    """No-overtaking list scheduling. tasks: (gpus, duration_s, release_s) in queue order.

    Task k starts at the earliest t >= max(start of task k-1, release) with g GPUs free at t;
    since nothing placed starts after t, capacity is non-decreasing from t and the task
    fits for its whole duration.
    """
    if _all_fit_now(now_s, total_gpus, busy, tasks):
        return [now_s] * len(tasks)
    heap = [(e, g) for e, g in busy if e > now_s]
    heapq.heapify(heap)
    free = total_gpus - sum(g for _, g in heap)
    t = now_s
    starts = []
    for g, d, rel in tasks:
        if rel > t:
            t = rel
        while heap and heap[0][0] <= t:
            free += heapq.heappop(heap)[1]
        while free < g:
            e, gg = heapq.heappop(heap)
            t = e
            free += gg
            while heap and heap[0][0] <= t:
                free += heapq.heappop(heap)[1]
        starts.append(t)
        if d > 0.0:
            heapq.heappush(heap, (t + d, g))
            free -= g
    return starts
