"""The second stream's ordering contract (kernels/side_stream.py), on the CPU with stand-in
streams: which waits each helper enqueues, and which tensors it hands to the allocator.
The GPU behaviour (results, race bait, CUDA-graph capture) is test_side_stream_gpu.py's."""

from __future__ import annotations

import torch

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
