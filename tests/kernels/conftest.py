"""Kernel tests run the real Triton kernels on CPU through Triton's interpreter.

``triton.jit`` picks interpreter-vs-compiled at decoration time, so
``kernels.multi_lora_triton.get_kernels`` decorates lazily and keys its cache on
TRITON_INTERPRET: the flag only has to be set before the first kernel *call*, not before
``import triton`` (test_interpreter_is_used checks this). It is set per test with monkeypatch
rather than process-wide, so it does not leak into other test directories of the same pytest
session (their CPU calls keep the pure-torch fallback). Tests marked ``gpu`` run compiled.
"""

import pytest


@pytest.fixture(autouse=True)
def _interpret_unless_gpu(request, monkeypatch):
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(autouse=True)
def _poison_and_restore_tune():
    """Every internal output buffer starts as NaN; TUNE overrides never leak between tests."""
    from kernels import multi_lora as ml

    saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in ml.TUNE.items()}
    ml.TUNE["poison"] = True
    yield
    ml.TUNE.clear()
    ml.TUNE.update(saved)
