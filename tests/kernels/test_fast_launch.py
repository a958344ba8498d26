"""kernels.fast_launch's specialisation key (CPU): it must separate every case Triton compiles
differently, or a cached kernel would be launched with arguments it was not built for."""

import torch

from kernels.fast_launch import _arg_key


def test_int_key_separates_one_div16_and_int64():
    assert _arg_key(1) != _arg_key(2)  # Triton folds == 1 into the kernel
    assert _arg_key(32) != _arg_key(33)  # divisibility-by-16 hint
    assert _arg_key(2**31) != _arg_key(2**4)  # i64 instead of i32
    assert _arg_key(2**31) != _arg_key(2**31 + 1)  # still separated by divisibility
    assert _arg_key(48) == _arg_key(64)  # same specialisation -> same cached kernel


def test_tensor_key_separates_dtype_and_alignment():
    base = torch.zeros(64, dtype=torch.float32)
    assert _arg_key(base) == _arg_key(torch.ones(64))
    assert _arg_key(base) != _arg_key(base.to(torch.bfloat16))
    assert _arg_key(base[1:]) != _arg_key(base)  # 4-byte offset: not 16-byte aligned
    assert _arg_key(base[4:]) == _arg_key(base)  # 16-byte offset: aligned again


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
