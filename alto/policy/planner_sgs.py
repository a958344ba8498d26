"""Schedule generation for rigid tasks on a pool of identical GPUs (the planners' heuristics).

Model (shared by every planner, see `alto.policy.planner`): `total_gpus` identical GPUs;
a task needs `g` of them at once for `d` seconds (rigid, not preemptible, any `g` GPUs of
the pool will do); running tasks hold their GPUs until their expected end. A schedule is
feasible iff at every instant the GPUs in use (running + started pending) are <= total_gpus.
Any such schedule can be mapped onto specific GPU ids greedily in start order, so the
cumulative view loses nothing (the MILP's explicit GPU assignment is equivalent).

Three generators, all deterministic and clock-free (P pending, R running tasks):

* `strict_order_starts` -- no overtaking: task k starts at the earliest time >= the start of
  task k-1 (and >= its release) at which it fits. Starts are non-decreasing, so from that
  start on the free capacity only grows and a min-heap of end events suffices:
  O(P log P + R log R). Used by "fifo" and "sjf".
* `serial_sgs_starts` -- the serial schedule generation scheme (SGS): in priority order,
  each task starts at the earliest time >= its release at which `g` GPUs are free for
  the whole of [t, t + d), given every task placed before it. Later tasks may therefore
  backfill holes left in front of earlier ones without delaying them (those are already
  placed): conservative backfilling. Over all priority orders it yields every active
  schedule, which is what the exact search and the brute-force tests enumerate. Used by
  "lpt" and as ALTO's heuristic.
* `parallel_sgs_starts` -- the parallel (time-advancing) SGS, i.e. greedy list scheduling
  with aggressive backfilling: at each event start the best-priority tasks that fit now.
  O((P + R)(#sizes + log P)). Used by the extra "lpt-greedy" baseline only: in the SimPy
  cluster (2,000 tasks, 1,024 GPUs, overloaded) it was ~7x cheaper per call before the
  serial SGS was batched and vectorised, but gave a 17% longer makespan (222.7 h vs
  189.4 h), because nothing reserves GPUs for a waiting 4-GPU task.

`Profile` keeps the free capacity as a step function on numpy arrays (`times[k]`,
`free[k]` = free GPUs on [times[k], times[k+1]), the last step runs to +inf with
free == total). Placing a task costs two searchsorted calls, a window min, a window
update and up to two inserts (tail shifts), all at C speed; when the first candidate
window fails, one vectorised pass over the rest of the profile finds the first window that
fits. `first_fit[g]` remembers the earliest step with >= g free GPUs, which only moves
right because placements only consume capacity. Runs of identical tasks are placed in
batches (see `serial_sgs_starts`). Worst case O(P * steps) element operations, but the
per-placement Python overhead is constant (see benchmarks/bench_planner.py).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np


class Profile:
    """Free GPUs over time as a step function; mutated by `reserve`.

    times[:n]: strictly increasing breakpoints (seconds), times[0] == now.
    free[:n]:  free[k] GPUs on [times[k], times[k+1]); free[n-1] == total (all work done).
    Both are numpy arrays with spare capacity, so window min, window update and inserts
    (a shift of the tail) run at C speed even when a window spans thousands of steps.
    """

    __slots__ = ("times", "free", "n", "first_fit")

    def __init__(
        self, now_s: float, total_gpus: int, busy: Sequence[tuple[float, int]], capacity: int = 64
    ):
        # busy: (end_s, gpus) of work already fixed (running tasks); ends <= now are free now.
        ends: dict[float, int] = {}
        in_use = 0
        for end_s, g in busy:
            if end_s > now_s:
                ends[end_s] = ends.get(end_s, 0) + g
                in_use += g
        keys = sorted(ends)
        n = 1 + len(keys)
        cap = max(capacity, 2 * n)
        self.times = np.empty(cap)
        self.free = np.empty(cap, dtype=np.int64)
        self.times[0] = now_s
        self.times[1:n] = keys
        self.free[0] = total_gpus - in_use
        self.free[1:n] = self.free[0] + np.cumsum([ends[e] for e in keys], dtype=np.int64)
        self.n = n
        self.first_fit: dict[int, float] = {}

    def copy(self) -> Profile:
        other = Profile.__new__(Profile)
        other.times = self.times.copy()
        other.free = self.free.copy()
        other.n = self.n
        other.first_fit = self.first_fit.copy()
        return other

    def earliest_fit(self, g: int, d: float, release_s: float) -> tuple[float, int, int]:
        """Earliest t >= release_s with >= g free GPUs on all of [t, t + d).

        Returns (t, k, m): k the index of the step containing t, m the fewest free GPUs on
        [t, t + d) (>= g). Always succeeds because the last step is unbounded with
        free == total >= g.
        """
        n = self.n
        times, free = self.times[:n], self.free[:n]
        lo = self.first_fit.get(g, self.times[0])
        from_lo = release_s <= lo
        k = int(times.searchsorted(max(release_s, lo), "right")) - 1
        if free[k] < g:
            k += int((free[k:] >= g).argmax())  # exists: free[n-1] == total
            t = float(times[k])
        else:
            t = max(release_s, float(times[k]))
        if from_lo:
            # No step before k has g free GPUs, and capacity never comes back.
            self.first_fit[g] = float(times[k])
        e = max(int(times.searchsorted(t + d, "left")), k + 1)  # steps k..e-1 cover [t, t+d)
        m = int(free[k:e].min())
        if m >= g:
            return t, k, m
        # Slow path, one vectorised pass instead of window-by-window restarts: a window
        # can only start at a step i >= k with free >= g; it fits iff the run of such steps
        # from i lasts d, i.e. times[next too-full step after i] - times[i] >= d.
        sub = free[k:]
        ok = sub >= g
        idx = np.where(ok, len(sub), np.arange(len(sub)))
        next_bad = np.minimum.accumulate(idx[::-1])[::-1]  # first too-full step >= i
        end_t = np.append(times[k:], np.inf)[next_bad]
        start_t = times[k:]
        fits = ok & (end_t - start_t >= d)
        fits[0] = False  # step k itself failed above
        k += int(fits.argmax())
        t = float(times[k])
        e = max(int(times.searchsorted(t + d, "left")), k + 1)
        return t, k, int(free[k:e].min())

    def _insert(self, i: int, t: float, f: int) -> None:
        n = self.n
        if n == len(self.times):
            self.times = np.concatenate([self.times, np.empty(n)])
            self.free = np.concatenate([self.free, np.empty(n, dtype=np.int64)])
        self.times[i + 1 : n + 1] = self.times[i:n]
        self.free[i + 1 : n + 1] = self.free[i:n]
        self.times[i] = t
        self.free[i] = f
        self.n = n + 1

    def reserve(self, t: float, k: int, g: int, d: float) -> None:
        """Take g GPUs on [t, t + d); (t, k) as returned by `earliest_fit`."""
        if d <= 0.0:
            return
        if self.times[k] < t:  # start inside step k (release date): split it
            k += 1
            self._insert(k, t, int(self.free[k - 1]))
        end = t + d
        e = int(self.times[: self.n].searchsorted(end, "left"))
        if e == self.n or self.times[e] != end:
            self._insert(e, end, int(self.free[e - 1]))
        self.free[k:e] -= g


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
    """Serial SGS. tasks: (gpus, duration_s, release_s) in priority order -> start_s per task.

    A run of identical consecutive tasks (same g, d, release; traces draw tasks from a few
    model x dataset types) is placed in batches: if the window at the earliest fit t has
    m free GPUs, the next min(run, m // g) of them all start at t (placing them one by one
    would put each at t), and the rest of the run cannot start before t. Same result as
    one-by-one, with one profile update per distinct start instead of per task.
    """
    if _all_fit_now(now_s, total_gpus, busy, tasks):
        return [now_s] * len(tasks)
    prof = Profile(now_s, total_gpus, busy, capacity=2 * len(tasks) + len(busy) + 2)
    starts: list[float] = []
    i, n = 0, len(tasks)
    while i < n:
        g, d, rel = task = tasks[i]
        j = i + 1
        while j < n and tasks[j] == task:
            j += 1
        left = j - i
        while left:
            t, k, m = prof.earliest_fit(g, d, rel)
            c = min(left, m // g) if d > 0.0 else left
            prof.reserve(t, k, c * g, d)
            starts += [t] * c
            left -= c
            rel = t  # capacity only shrinks: the rest of the run starts at t or later
        i = j
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


def parallel_sgs_starts(
    now_s: float,
    total_gpus: int,
    busy: Sequence[tuple[float, int]],
    tasks: Sequence[tuple[int, float, float]],
) -> list[float]:
    """Parallel (time-advancing) SGS. tasks: (gpus, duration_s, release_s) in priority order.

    At each decision time t (now, then every end and release), repeatedly start the
    highest-priority released task that fits in the GPUs free at t, until none fits; then
    advance t. Greedy list scheduling: no reservations, so a big task waits until enough
    GPUs are free at one decision time (smaller tasks behind it may take GPUs first).
    Released tasks wait in one heap per distinct size keyed by priority index, so picking
    the best fitting task costs O(#sizes): O((P + R) (#sizes + log P)) in all.
    """
    if _all_fit_now(now_s, total_gpus, busy, tasks):
        return [now_s] * len(tasks)
    ends = [(e, g) for e, g in busy if e > now_s]
    heapq.heapify(ends)
    free = total_gpus - sum(g for _, g in ends)
    later = [(rel, i) for i, (_, _, rel) in enumerate(tasks) if rel > now_s]
    heapq.heapify(later)
    queues: dict[int, list[int]] = {}
    for i, (g, _, rel) in enumerate(tasks):
        if rel <= now_s:
            queues.setdefault(g, []).append(i)  # ascending index: already a heap
    sizes = sorted({g for g, _, _ in tasks})
    starts = [0.0] * len(tasks)
    left = len(tasks)
    t = now_s
    while left:
        while True:  # start the best fitting released task, repeatedly
            best_g, best_i = 0, len(tasks)
            for g in sizes:
                if g > free:
                    break
                q = queues.get(g)
                if q and q[0] < best_i:
                    best_g, best_i = g, q[0]
            if not best_g:
                break
            heapq.heappop(queues[best_g])
            d = tasks[best_i][1]
            starts[best_i] = t
            left -= 1
            if d > 0.0:
                heapq.heappush(ends, (t + d, best_g))
                free -= best_g
        if not left:
            break
        # Advance to the next end or release; take every event at that instant.
        t = min(ends[0][0] if ends else math.inf, later[0][0] if later else math.inf)
        while ends and ends[0][0] <= t:
            free += heapq.heappop(ends)[1]
        while later and later[0][0] <= t:
            i = heapq.heappop(later)[1]
            heapq.heappush(queues.setdefault(tasks[i][0], []), i)
    return starts
