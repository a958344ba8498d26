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
but costs host time (a fork, an event, a join: 0.05-0.18 ms per layer fwd+bwd in eager mode on
the H200 host, benchmarks/profile_host_gpu.py, docs/kernels_log.md §3n). It pays only where
the GPU, not the host, bounds the step: under CUDA-graph capture (no host cost per replay) or
when the main stream still has work queued when the backward is called (the host runs ahead
of the GPU). With an idle main stream the host is the bottleneck and one stream is faster.
"""

from __future__ import annotations

import torch

_SIDE: dict[tuple[int, int], torch.cuda.Stream] = {}
DECISIONS = {"side": 0, "one_stream": 0}  # worth_forking's answers so far (benchmarks report them)


def side_stream(main: torch.cuda.Stream) -> torch.cuda.Stream:
    """The side stream paired with ``main`` (one per main stream, created on first use)."""
    key = (main.device.index, main.cuda_stream)
    side = _SIDE.get(key)
    if side is None:
        side = torch.cuda.Stream(device=main.device)
        if side.cuda_stream == main.cuda_stream:  # torch's stream pool handed out main itself
            side = torch.cuda.Stream(device=main.device)
        _SIDE[key] = side
    return side


def worth_forking(main: torch.cuda.Stream, when: str) -> bool:
    """Whether the backward should use the side stream of ``main``: ``when`` "always", or
    "gpu_bound": while capturing a CUDA graph, or while ``main`` still has queued work
    (``query()`` is a non-blocking stream poll; it is never called during a capture, where
    polling is illegal)."""
    if when not in ("always", "gpu_bound"):
        raise ValueError(f'TUNE["bwd_side_when"] must be "always" or "gpu_bound", got {when!r}')
    fork_it = when == "always" or torch.cuda.is_current_stream_capturing() or not main.query()
    DECISIONS["side" if fork_it else "one_stream"] += 1
    return fork_it


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
