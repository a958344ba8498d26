"""Properties of the compiled kernels' sm_90 PTX that the H200 timings depend on.

Compiled on the CPU (no GPU needed) by benchmarks/ptx_fingerprint.py with the shipped tile
sizes. Both properties below were lost once without any numerical test noticing, and each
cost measured time on the H200 (docs/kernels.md §3g):

* the split-K and weight-gradient reductions use relaxed fp32 atomics: tl.atomic_add's default
  (acq_rel) compiled every one to a fence, a returning atomic and an L1 invalidate;
* operand tiles whose contiguous axis is the rank axis (the backward shrink's B_i, the
  weight-gradient kernel's S / dS) come in through 16-byte async copies: a runtime mask on
  that axis (``r < r_i``) turned them into synchronous 2-byte global loads.
"""

from __future__ import annotations

import re

import pytest

from benchmarks import ptx_fingerprint

# the stream path's kernels in bf16: shrink (forward A_i, backward B_i), the weight-gradient
# kernel plain (dB), with the dX expand (dA + dX) and as the forward's expand
NAMES = ["shrink_bf16", "shrink_bwd_bf16", "wgrad_plain_bf16", "wgrad_dadx_bf16",
         "wgrad_stream_bf16"]  # fmt: skip


@pytest.fixture(scope="module")
def ptx(monkeypatch_module):
    return ptx_fingerprint.configurations(set(NAMES))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "0")  # compiled kernels, not interpreter functions
        yield mp


@pytest.mark.parametrize("name", NAMES)
def test_no_narrow_synchronous_global_loads(ptx, name):
    """Every global load is 4 bytes or wider (table entries) and the tiles are async copies."""
    code = ptx[name]
    narrow = re.findall(r"ld\.global(?:\.\w+)*\.(?:b16|u16|s16|b8|u8)\b", code)
    assert not narrow, f"{name}: {len(narrow)} sub-word global loads, e.g. {narrow[0]}"
    assert len(re.findall(r"cp\.async\.cg\.shared\.global", code)) >= 8, name


@pytest.mark.parametrize("name", [n for n in NAMES if n != "wgrad_stream_bf16"])
def test_reduction_atomics_are_relaxed(ptx, name):
    """The fp32 split reductions: relaxed vector atomics, never an acquire/release one."""
    atomics = re.findall(r"(?:atom|red)\.global[.\w]*\.add[.\w]*", ptx[name])
    assert atomics, f"{name}: no atomics (ATOMIC=True configuration)"
    assert all(".relaxed." in a for a in atomics), f"{name}: {sorted(set(atomics))}"
