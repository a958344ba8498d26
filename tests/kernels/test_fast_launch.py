"""kernels.fast_launch's specialisation key (CPU): it must separate every case Triton compiles
differently, or a cached kernel would be launched with arguments it was not built for."""

import pytest
import torch

from kernels.fast_launch import _arg_key


def test_int_key_separates_one_div16_and_int64():
    assert _arg_key(1) != _arg_key(2)  # Triton folds == 1 into the kernel
    assert _arg_key(32) != _arg_key(33)  # divisibility-by-16 hint
    assert _arg_key(2**31) != _arg_key(2**4)  # i64 instead of i32
    assert _arg_key(2**31) != _arg_key(2**31 + 1)  # still separated by divisibility
    assert _arg_key(48) == _arg_key(64)  # same specialisation -> same cached kernel
    assert _arg_key(2**63) != _arg_key(2**62)  # u64 instead of i64


def test_int_subclass_keyed_as_its_int():
    import enum

    class E(enum.IntEnum):
        ONE, SIXTEEN, SEVENTEEN, BIG = 1, 16, 17, 32

    assert _arg_key(E.ONE) == _arg_key(1) != _arg_key(E.SIXTEEN)
    assert _arg_key(E.SEVENTEEN) == _arg_key(17) != _arg_key(E.BIG)


def test_tensor_key_separates_dtype_and_alignment():
    base = torch.zeros(64, dtype=torch.float32)
    assert _arg_key(base) == _arg_key(torch.ones(64))
    assert _arg_key(base) != _arg_key(base.to(torch.bfloat16))
    assert _arg_key(base[1:]) != _arg_key(base)  # 4-byte offset: not 16-byte aligned
    assert _arg_key(base[4:]) == _arg_key(base)  # 16-byte offset: aligned again


def test_gluon_descriptor_key_separates_dtype_box_and_layout():
    """The Gluon GEMM's descriptors (kernels/gemm_lora_gluon.py): bf16 and fp16 calls, the
    forward's and backward's boxes and different swizzles compile to different kernels."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    lay = lambda box, el: gl.NVMMASharedLayout.get_default_for(box, el)  # noqa: E731
    x = torch.zeros(256, 512, dtype=torch.bfloat16)
    key = lambda t, box, el=gl.bfloat16, layout=None: _arg_key(  # noqa: E731
        GluonDescriptor.from_tensor(t, box, layout or lay(box, el)))
    assert key(x, [128, 64]) == key(torch.ones(512, 256, dtype=torch.bfloat16), [128, 64])
    assert key(x, [128, 64]) != key(x.half(), [128, 64], gl.float16)
    assert key(x, [64, 256]) != key(x, [256, 64])
    narrow = gl.NVMMASharedLayout(swizzle_byte_width=64, element_bitwidth=16, rank=2)
    assert key(x, [128, 64]) != key(x, [128, 64], layout=narrow)
    from triton.tools.tensor_descriptor import TensorDescriptor

    assert key(x, [128, 64]) != _arg_key(TensorDescriptor.from_tensor(x, [128, 64]))


def test_bools_keep_their_value():
    assert _arg_key(True) != _arg_key(False)
    assert _arg_key(True) != _arg_key(1)


def test_empty_hook_chain_is_not_an_installed_hook():
    """Triton >= 3.4 always holds a HookChain: only a non-empty one may force the slow path."""
    from kernels.fast_launch import _hook_installed, _hooks_installed

    class Chain:
        def __init__(self, calls):
            self.calls = calls

    assert not _hook_installed(None) and not _hook_installed(Chain([]))
    assert _hook_installed(Chain([print])) and _hook_installed(print)
    assert not _hooks_installed()  # nothing installed in this process


class _FakeTensor(torch.Tensor):
    """A tensor that reports a CUDA device and a chosen address (there is no GPU here)."""

    @staticmethod
    def __new__(cls, ptr: int):
        t = torch.Tensor._make_subclass(cls, torch.empty(1))
        t._ptr = ptr
        return t

    @property
    def device(self):
        return torch.device("cuda", 0)

    def data_ptr(self) -> int:
        return self._ptr


class _FakeKernel:
    function, packed_metadata = "fn", "meta"

    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def run(self, *a):
        if self.fail:
            raise RuntimeError("launcher broke")
        self.calls.append(a)


class _FakeJit:
    """Triton's JITFunction as launch() uses it: [grid](*args, **meta) -> CompiledKernel."""

    arg_names = ["X", "K", "FLAG", "BLOCK", "UPCAST"]

    def __init__(self, kernel):
        self.kernel, self.slow = kernel, []

    def __getitem__(self, grid):
        def call(*args, **meta):
            self.slow.append((grid, args, meta))
            return self.kernel

        return call


@pytest.fixture
def compiled_mode(monkeypatch):
    from kernels import fast_launch, multi_lora_triton

    monkeypatch.setattr(multi_lora_triton, "interpret_mode", lambda: False)
    monkeypatch.setattr(fast_launch, "_raw_stream", lambda index: 1234)
    monkeypatch.setattr(fast_launch, "DISABLED", [])
    fast_launch.clear_cache()
    yield fast_launch
    fast_launch.clear_cache()


def test_second_launch_calls_the_compiled_kernel_with_signature_order(compiled_mode):
    fl = compiled_mode
    kern = _FakeKernel()
    jit = _FakeJit(kern)
    meta = dict(BLOCK=64, UPCAST=False, num_warps=4, num_stages=3)
    fl.launch(jit, (7, 2), (_FakeTensor(4096), 48, True), meta)
    assert len(jit.slow) == 1 and kern.calls == []  # first: Triton's own path, handle cached
    fl.launch(jit, (7, 2), (_FakeTensor(8192), 80, True), meta)  # same specialisation
    assert len(jit.slow) == 1
    (call,) = kern.calls
    # grid padded to 3-D, raw stream, no hooks, then the args: tensor as its address, the
    # runtime ints, then the constexprs in signature order (num_warps / num_stages excluded)
    assert call == (7, 2, 1, 1234, "fn", "meta", None, None, None, 8192, 80, True, 64, False)


@pytest.mark.parametrize("changed", [
    (_FakeTensor(4100), 48, True),  # pointer no longer 16-byte aligned
    (_FakeTensor(4096), 1, True),  # int equal to 1 (Triton folds it)
    (_FakeTensor(4096), 50, True),  # int no longer divisible by 16
    (_FakeTensor(4096), 48, False),  # bool value
])
def test_new_specialisation_goes_through_triton(compiled_mode, changed):
    fl, kern = compiled_mode, _FakeKernel()
    jit = _FakeJit(kern)
    meta = dict(BLOCK=64, UPCAST=False, num_warps=4, num_stages=3)
    fl.launch(jit, (1,), (_FakeTensor(4096), 48, True), meta)
    fl.launch(jit, (1,), changed, meta)
    assert len(jit.slow) == 2 and kern.calls == []
    fl.launch(jit, (1,), changed, dict(meta, BLOCK=32))  # a constexpr change too
    assert len(jit.slow) == 3


def test_launcher_failure_falls_back_and_is_recorded(compiled_mode):
    fl, kern = compiled_mode, _FakeKernel(fail=True)
    jit = _FakeJit(kern)
    meta = dict(BLOCK=64, UPCAST=False, num_warps=4, num_stages=3)
    fl.launch(jit, (1,), (_FakeTensor(4096), 48, True), meta)
    fl.launch(jit, (1,), (_FakeTensor(4096), 48, True), meta)
    assert len(jit.slow) == 2 and "launcher broke" in fl.DISABLED[0]
    fl.launch(jit, (1,), (_FakeTensor(4096), 48, True), meta)  # from now on Triton's path only
    assert len(jit.slow) == 3


def test_installed_hook_forces_tritons_path(compiled_mode, monkeypatch):
    fl, kern = compiled_mode, _FakeKernel()
    jit = _FakeJit(kern)
    meta = dict(BLOCK=64, UPCAST=False, num_warps=4, num_stages=3)
    fl.launch(jit, (1,), (_FakeTensor(4096), 48, True), meta)
    monkeypatch.setattr(fl, "_hooks_installed", lambda: True)
    fl.launch(jit, (1,), (_FakeTensor(4096), 48, True), meta)
    assert len(jit.slow) == 2 and kern.calls == []
