"""The second stream's ordering contract (kernels/side_stream.py), on the CPU with stand-in
streams: which waits each helper enqueues, and which tensors it hands to the allocator; and
that the backward's table pre-build (launch._wgrad tables_only) covers what a reduction reads.
The GPU behaviour (results, race bait, CUDA-graph capture) is test_side_stream_gpu.py's."""

from __future__ import annotations

import pytest
import torch
from mlora_cases import make_case

import kernels
from kernels import multi_lora as ml
from kernels import side_stream


class FakeStream:
    """Records the stream calls side_stream makes."""

    def __init__(self, name: str, device_index: int = 0):
        self.name, self.cuda_stream, self.calls = name, id(self), []
        self.device = torch.device("cuda", device_index)

    def wait_stream(self, other):
        self.calls.append(("wait_stream", other.name))

    def wait_event(self, event):
        self.calls.append(("wait_event", event))


class FakeTensor:
    def __init__(self):
        self.recorded = []

    def record_stream(self, stream):
        self.recorded.append(stream.name)


def _fresh_side(monkeypatch):
    made = []

    def new_stream(device=None):
        made.append(FakeStream(f"side{len(made)}"))
        return made[-1]

    monkeypatch.setattr(side_stream, "_SIDE", {})
    monkeypatch.setattr(side_stream.torch.cuda, "Stream", new_stream)
    return made


def test_one_side_stream_per_main_stream(monkeypatch):
    made = _fresh_side(monkeypatch)
    main_a, main_b = FakeStream("a"), FakeStream("b")
    assert side_stream.side_stream(main_a) is side_stream.side_stream(main_a)
    assert side_stream.side_stream(main_b) is not side_stream.side_stream(main_a)
    assert len(made) == 2


def test_fork_waits_for_all_of_main_or_only_for_the_event(monkeypatch):
    _fresh_side(monkeypatch)
    main = FakeStream("main")
    side = side_stream.fork(main)
    assert side.calls == [("wait_stream", "main")]
    assert side_stream.fork(main, after="ds-ready") is side
    assert side.calls == [("wait_stream", "main"), ("wait_event", "ds-ready")]
    assert main.calls == []  # forking never makes the main stream wait


def test_join_waits_for_the_side_and_records_what_it_made(monkeypatch):
    _fresh_side(monkeypatch)
    main = FakeStream("main")
    side = side_stream.fork(main)
    db, da = FakeTensor(), FakeTensor()
    side_stream.join(main, side, db, None, da)
    assert main.calls == [("wait_stream", side.name)]
    assert db.recorded == ["main"] and da.recorded == ["main"]


def test_side_stream_is_never_the_main_stream(monkeypatch):
    """torch's stream pool hands out streams in rotation, so it can hand out the caller's own
    stream: side_stream then takes the next one (else nothing would overlap)."""
    main = FakeStream("main")
    pool = iter([main, FakeStream("other")])
    monkeypatch.setattr(side_stream, "_SIDE", {})
    monkeypatch.setattr(side_stream.torch.cuda, "Stream", lambda device=None: next(pool))
    assert side_stream.side_stream(main).name == "other"


@pytest.mark.parametrize(("transpose_out", "wgrad_chunk"), [(True, None), (False, None),
                                                            (False, 32)])  # fmt: skip
def test_tables_only_builds_every_table_the_reduction_reads(transpose_out, wgrad_chunk,
                                                             monkeypatch):  # fmt: skip
    """launch._wgrad(tables_only=True), which the backward runs on the main stream before dB
    goes to the side stream while dA stays on the main one, leaves nothing for the real call
    to copy: the real
    call (through the Triton kernel, interpreted) creates no new device table. wgrad_chunk 32:
    long segments split into token chunks (the atomic plan)."""
    from kernels import launch

    monkeypatch.setitem(ml.TUNE, "wgrad_chunk", wgrad_chunk)
    tensors, seg, ranks, scaling = make_case(4, "skewed", 150, 96, 80, rank_pool=(8, 16),
                                             seed=3)  # fmt: skip
    layout = kernels.make_layout(seg, ranks, scaling, device="cpu")
    cfg = launch._cfg(torch.device("cpu"))
    like = tensors["lora_b"] if transpose_out else tensors["lora_a"]
    q = torch.randn(150, like.shape[1] if transpose_out else like.shape[2])
    p = torch.randn(150, layout.block_r)
    assert launch._wgrad(p, q, like, transpose_out, layout, False, cfg, tables_only=True) is None
    built = set(layout._tables)
    assert any(key[0] == "chunks" for key in built)
    out = launch._wgrad(p, q, like, transpose_out, layout, False, cfg)
    assert set(layout._tables) == built
    assert out.shape == like.shape and torch.isfinite(out).all()


class FakeEvent:
    def __init__(self, done: bool = True):
        self.done, self.recorded_on = done, []

    def query(self):
        return self.done

    def record(self, stream):
        self.recorded_on.append(stream.name)


@pytest.mark.parametrize(("capturing", "previous", "expected"),
                         [(False, None, False), (False, True, False), (False, False, True),
                          (True, None, True)])  # fmt: skip
def test_fork_only_when_the_gpu_bounds_the_step(capturing, previous, expected, monkeypatch):
    """"gpu_bound": fork under capture, or when the previous backward on this stream (its
    recorded end: done / not done; None: no backward yet) has not finished; "always" forks
    without asking; other values are refused by name."""
    monkeypatch.setattr(side_stream.torch.cuda, "is_current_stream_capturing", lambda: capturing)
    main = FakeStream("main")
    ends = {} if previous is None else {(0, main.cuda_stream): FakeEvent(done=previous)}
    monkeypatch.setattr(side_stream, "_BACKWARD_DONE", ends)
    assert side_stream.worth_forking(main, "gpu_bound") is expected
    assert side_stream.worth_forking(main, "always") is True
    with pytest.raises(ValueError, match="bwd_side_when"):
        side_stream.worth_forking(main, "sometimes")


def test_backward_end_recorded_on_its_stream_once_per_stream_not_in_a_capture(monkeypatch):
    made = []
    monkeypatch.setattr(side_stream.torch.cuda, "Event", lambda: made.append(FakeEvent()) or made[-1])
    monkeypatch.setattr(side_stream, "_BACKWARD_DONE", {})
    capturing = [False]
    monkeypatch.setattr(side_stream.torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    main, other = FakeStream("main"), FakeStream("other")
    side_stream.backward_enqueued(main)
    side_stream.backward_enqueued(main)
    side_stream.backward_enqueued(other)
    capturing[0] = True
    side_stream.backward_enqueued(main)
    assert [e.recorded_on for e in made] == [["main", "main"], ["other"]]


@pytest.mark.parametrize(("t", "d_in", "d_out", "fitted"), [
    (4096, 4096, 4096, True),  # 2^36 multiply-adds: the largest GEMM the fit applies to
    (16384, 4096, 1024, True),  # the k/v projection at the benchmark's largest T, also 2^36
    (8192, 4096, 4096, False),  # 2^37: the lost ring stage costs what dA hides (A/B, §3p)
    (4097, 4096, 4096, False),
])  # fmt: skip
def test_dx_gemm_fitted_beside_da_only_up_to_the_size_limit(t, d_in, d_out, fitted):
    """TUNE gpu gm_side_fit: the dX GEMM that dA runs beside gets 3 ring stages and a
    200-register cap (room for one dA program per SM) up to gm_side_fit_max_macs, and the
    shipped settings above it or when gm_side_fit is None; the caller's cfg is never changed."""
    from kernels.multi_lora import _side_fit

    cfg = dict(ml.TUNE["gpu"])
    got = _side_fit(cfg, t * d_in * d_out)
    assert cfg == ml.TUNE["gpu"]
    want = (3, 200) if fitted else (cfg["gm_gl_stages"], cfg["gm_maxnreg"])
    assert (got["gm_gl_stages"], got["gm_maxnreg"]) == want
    assert {k: v for k, v in got.items() if k not in ("gm_gl_stages", "gm_maxnreg")} == {
        k: v for k, v in cfg.items() if k not in ("gm_gl_stages", "gm_maxnreg")}
    assert _side_fit(dict(cfg, gm_side_fit=None), t * d_in * d_out) == dict(cfg, gm_side_fit=None)
    assert _side_fit(dict(cfg, gm_side_fit_max_macs=None), 2**60)["gm_maxnreg"] == 200
