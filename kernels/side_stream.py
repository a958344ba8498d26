"""A second CUDA stream for the backward's weight-gradient reductions (TUNE["bwd_side"]).

On the stream and gemm paths dB = Sᵀ dY needs only the forward's S and dY, so it can run while
the shrink of dY computes dS; dA = dSᵀ x needs dS, and can run beside the dX GEMM. Both are
small, latency-bound launches that fill few of the SMs (docs/kernels.md §5), so running one
beside another kernel fills SMs that would idle.

Stream safety (the caching allocator hands a freed block to the next allocation *of the
stream it was allocated on*, without waiting for other streams' work on it):
* inputs the side stream reads (S, dY, x, dS, the adapters) were allocated on the main
  stream and stay referenced until the backward returns, and the main stream waits for the
  side stream before it returns (:func:`join`), so later main-stream reuse is ordered after;
* temporaries the side stream allocates (fp32 sums, their cast) are freed on it, so reuse is
  ordered on it;
* the gradients it returns were allocated on it and are used on the main stream afterwards:
  :func:`join` records them on the main stream, so the allocator waits for that use.
* device tables of the layout (kernels/layout.py) are copied on first use on the current
  stream and then shared by every stream. A table first copied on the side stream is safe for
  the main stream's later launches (they follow the join), and the main stream launches
  nothing between fork and join that reads dA's tables; but where dA (or the stream path's
  dX expand) stays on the main stream it may read a table dB would first copy, so there the
  backward copies dB's tables on the main stream before forking (launch._wgrad's
  ``tables_only``), covered by the fork's wait.
Under CUDA-graph capture the fork and join are event waits, captured as graph edges; the
backward joins only when it forked (a wait on the side stream's event while that stream is
outside the capture is illegal).

When to fork (:func:`worth_forking`, TUNE["bwd_side_when"]): the side stream saves GPU time
but costs host time (a fork, an event, a join: 0.04-0.31 ms per layer fwd+bwd in eager mode on
the H200 host, benchmarks/profile_host_gpu.py, docs/kernels_log.md §3n). It pays only where
the GPU, not the host, bounds the step: under CUDA-graph capture (no host cost per replay), or
in eager mode when the GPU has not yet finished the previous backward on this stream by the
time the host enqueues the next one (the host runs ahead of the GPU). Asking only whether the
stream is busy is not enough: in a host-bound step the forward's last kernel is often still
running when its backward is called (measured: 2 of 3 layers of the 1B executor step at one
row per adapter forked by that test, though the step is host-bound).
"""

from __future__ import annotations

import torch

_SIDE: dict[tuple[int, int], torch.cuda.Stream] = {}
DECISIONS = {"side": 0, "one_stream": 0}  # worth_forking's answers so far (benchmarks report them)
_BACKWARD_DONE: dict[tuple[int, int], torch.cuda.Event] = {}  # per main stream, re-recorded


def _stream_key(stream: torch.cuda.Stream) -> tuple[int, int]:
    """What the per-stream tables (_SIDE, _BACKWARD_DONE) are keyed on."""
    return stream.device.index, stream.cuda_stream


def side_stream(main: torch.cuda.Stream) -> torch.cuda.Stream:
    """The side stream paired with ``main`` (one per main stream, created on first use)."""
    key = _stream_key(main)
    side = _SIDE.get(key)
    if side is None:
        side = torch.cuda.Stream(device=main.device)
        if side.cuda_stream == main.cuda_stream:  # torch's stream pool handed out main itself
            side = torch.cuda.Stream(device=main.device)
        _SIDE[key] = side
    return side


def worth_forking(main: torch.cuda.Stream, when: str) -> bool:
    """Whether the backward should use the side stream of ``main``: ``when`` "always", or
    "gpu_bound": while capturing a CUDA graph, or when the event :func:`backward_enqueued`
    recorded after the previous backward on ``main`` has not completed (a non-blocking poll,
    never made during a capture, where polling is illegal). The first backward on a stream
    stays on one stream."""
    if when not in ("always", "gpu_bound"):
        raise ValueError(f'TUNE["bwd_side_when"] must be "always" or "gpu_bound", got {when!r}')
    if when == "always" or torch.cuda.is_current_stream_capturing():
        fork_it = True
    else:
        done = _BACKWARD_DONE.get(_stream_key(main))
        fork_it = done is not None and not done.query()
    DECISIONS["side" if fork_it else "one_stream"] += 1
    return fork_it


def backward_enqueued(main: torch.cuda.Stream) -> None:
    """Record, on ``main``, that a backward has been enqueued (after its last launch and
    join): the next backward's :func:`worth_forking` polls this event. Not recorded during a
    capture (its replays say nothing about the host's pace)."""
    if torch.cuda.is_current_stream_capturing():
        return
    key = _stream_key(main)
    event = _BACKWARD_DONE.get(key)
    if event is None:
        event = _BACKWARD_DONE[key] = torch.cuda.Event()
    event.record(main)


def fork(main: torch.cuda.Stream, after: torch.cuda.Event | None = None) -> torch.cuda.Stream:
    """The side stream of ``main``, made to wait for everything enqueued on ``main`` so far,
    or, given ``after`` (an event recorded on ``main``), only for the work before it."""
    side = side_stream(main)
    if after is None:
        side.wait_stream(main)
    else:
        side.wait_event(after)
    return side


def join(main: torch.cuda.Stream, side: torch.cuda.Stream, *made_on_side) -> None:
    """Make ``main`` wait for ``side``'s work so far, and record the tensors ``side`` made (None
    skipped) as used on ``main``."""
    main.wait_stream(side)
    for t in made_on_side:
        if t is not None:
            t.record_stream(main)
