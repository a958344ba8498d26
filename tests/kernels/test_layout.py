"""Layout tables (hand-computed) and argument validation of kernels.fused_multi_lora."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernels
from kernels import MultiLoraLayout, make_layout


def test_tile_table_worked_example():
    lay = MultiLoraLayout((5, 0, 3), (4, 8, 2), (1.0, 2.0, 0.5))
    assert lay.offsets == (0, 5, 5, 8) and lay.total_tokens == 8
    assert lay.r_max == 8 and lay.block_r == 16
    np.testing.assert_array_equal(lay.tile_array(4), [[0, 0, 5], [0, 4, 5], [2, 5, 8]])
    np.testing.assert_array_equal(lay.row_adapters(torch.device("cpu")), [0, 0, 0, 0, 0, 2, 2, 2])
    np.testing.assert_array_equal(
        lay.chunk_array(2), [[0, 0, 2], [0, 2, 4], [0, 4, 5], [2, 5, 7], [2, 7, 8]]
    )
    assert lay.max_chunks_per_adapter(2) == 3
    # per 4-row tile: first adapter, adapters first..last (the empty one between counts), the
    # ranks of the first and of the next (the Gluon GEMM's plan, kernels/gemm_lora_gluon.py)
    np.testing.assert_array_equal(lay.row_tile_plan_array(4), [[0, 1, 4, 0], [0, 3, 4, 8]])
    np.testing.assert_array_equal(lay.row_tile_plan_array(8), [[0, 3, 4, 8]])


def test_block_r_padding():
    assert MultiLoraLayout((1,), (17,), (1.0,)).block_r == 32
    assert MultiLoraLayout((1, 1), (64, 128), (1.0, 1.0)).block_r == 128
    assert MultiLoraLayout((0, 1), (1, 3), (1.0, 1.0)).block_r == 16


def test_device_tables_cached():
    lay = make_layout([3, 4], [2, 2], [1.0, 1.0])
    t1 = lay.tiles(2, torch.device("cpu"))
    assert t1 is lay.tiles(2, torch.device("cpu"))
    assert t1.dtype == torch.int32 and t1.tolist() == [[0, 0, 3], [0, 2, 3], [1, 3, 7], [1, 5, 7]]
    assert lay.scaling_tensor(torch.device("cpu")).dtype == torch.float32


def _args(t=6, d_in=8, d_out=5, n=2, r=4):
    return dict(
        x=torch.randn(t, d_in),
        weight=torch.randn(d_out, d_in),
        lora_a=torch.randn(n, r, d_in),
        lora_b=torch.randn(n, d_out, r),
        seg_lens=[2, 4],
        ranks=[4, 2],
        scaling=[1.0, 2.0],
    )


BAD = [
    ("x", dict(x=torch.randn(2, 3, 8))),
    ("x", dict(x=torch.randint(0, 3, (6, 8)))),
    ("weight", dict(weight=torch.randn(5, 7))),
    ("lora_a", dict(lora_a=torch.randn(3, 4, 8))),
    ("lora_b", dict(lora_b=torch.randn(2, 5, 3))),
    ("lora_b", dict(lora_b=torch.randn(2, 5, 4, dtype=torch.float64))),
    ("weight", dict(weight=torch.randn(5, 8, dtype=torch.bfloat16))),
    ("seg_lens", dict(seg_lens=[2, 3])),
    ("seg_lens", dict(seg_lens=[7, -1])),
    ("seg_lens", dict(seg_lens=[2.5, 3.5])),
    ("ranks", dict(ranks=[4, 5])),
    ("ranks", dict(ranks=[0, 2])),
    ("ranks", dict(ranks=[4])),
    ("scaling", dict(scaling=[1.0, 2.0, 3.0])),
    ("scaling", dict(scaling=[1.0, float("nan")])),
    ("scaling", dict(scaling=[1.0, 1e39])),  # overflows the kernels' fp32 table
    ("scaling", dict(scaling=1.0)),  # a scalar, not one per adapter
    ("scaling", dict(scaling=np.array(1.0))),  # a 0-d array is no sequence either
    ("scaling", dict(scaling=["a", 1.0])),
    ("scaling", dict(scaling=[1j, 1.0])),
    ("scaling", dict(scaling=torch.ones(1, 2))),
    ("seg_lens", dict(seg_lens="24")),  # a string would read as (2, 4)
    ("seg_lens", dict(seg_lens=(v for v in [2, 3]))),  # a generator: read once, then checked
    # int() / float() take text and bools: refused as sizes, ranks and scalings (session 19)
    ("seg_lens", dict(seg_lens=[True, 5])),
    ("ranks", dict(ranks=["4", 2])),
    ("scaling", dict(scaling=["0.5", "2"])),
]


@pytest.mark.parametrize("argname,override", BAD, ids=[f"{a}-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_input_raises_value_error_naming_argument(argname, override):
    kw = _args()
    kw.update(override)
    with pytest.raises(ValueError, match=argname):
        kernels.fused_multi_lora(**kw)


def test_device_mismatch_named():
    if not torch.cuda.is_available():
        kw = _args()
        kw["lora_a"] = kw["lora_a"].to("meta")
        with pytest.raises(ValueError, match="lora_a"):
            kernels.fused_multi_lora(**kw)
    else:
        kw = _args()
        kw["lora_b"] = kw["lora_b"].cuda()
        with pytest.raises(ValueError, match="lora_b"):
            kernels.fused_multi_lora(**kw)


def test_missing_layout_arguments():
    kw = _args()
    kw.pop("ranks")
    with pytest.raises(ValueError, match="ranks"):
        kernels.fused_multi_lora(**kw)


def test_choose_path_rule_and_overrides():
    """The auto rule (docs/kernels_log.md §3) and explicit TUNE choices."""
    from kernels import launch

    assert launch.TUNE["path"] == "auto"
    # gemm where the harmonic mean of d_in and d_out is <= 4096, at every T
    for t, d_in, d_out in ((8191, 4096, 14336), (16384, 14336, 4096), (65536, 4096, 4097),
                           (2048, 8192, 8192), (4096, 5120, 4096)):  # means 3186, 4096.5, 8192, 4551
        assert launch.choose_path(t, d_in, d_out) == ("stream", False)
    for t, d_in, d_out in ((2048, 4096, 1024), (16384, 4096, 1024), (4096, 2048, 512),
                           (2048, 4096, 4096), (16384, 4096, 4096), (4096, 576, 1536),
                           (4096, 2048, 8192)):  # k/v (§3f), square (§3k), small and MLP shapes
        assert launch.choose_path(t, d_in, d_out) == ("gemm", False)
    # interpreted (CPU): only the narrow outputs take the gemm path (its base GEMM would be
    # interpreted too)
    cpu = torch.device("cpu")
    assert launch.choose_path(4096, 4096, 1024, cpu) == ("gemm", False)
    assert launch.choose_path(4096, 4096, 4096, cpu) == ("stream", False)
    assert launch.choose_path(4096, 576, 1536, cpu) == ("stream", False)
    launch.TUNE.update(path="split", wgrad_pair=True)
    assert launch.choose_path(8192, 4096, 1024) == ("split", True)
    assert launch.choose_path(8192, 4096, 1024, cpu) == ("split", True)


def test_shrink_expand_column_split_rule(monkeypatch):
    """Forward: two programs per row tile when the tiles give under 2 waves; backward: one."""
    from kernels import launch_fused as lf
    from kernels.launch import TUNE

    monkeypatch.setattr(lf, "_n_sms", lambda device: 132)
    cfg = dict(bm_fused=64, bn_fused=128)
    dev = torch.device("cuda")
    lay = MultiLoraLayout((8192,), (16,), (2.0,))
    monkeypatch.setattr(lay, "tiles", lambda bm, d: torch.empty(128, 3))
    assert lf._se_plan(lay, 4096, False, cfg, dev)[2:] == (2, 2048)  # 128 tiles < 264
    assert lf._se_plan(lay, 4096, True, cfg, dev)[2:] == (1, 4096)  # backward: never
    assert lf._se_plan(lay, 1000, False, cfg, dev)[2:] == (2, 512)  # whole 128-column blocks
    assert lf._se_plan(lay, 0, False, cfg, dev)[2:] == (1, 0)  # shrink only
    monkeypatch.setattr(lay, "tiles", lambda bm, d: torch.empty(300, 3))
    assert lf._se_plan(lay, 4096, False, cfg, dev)[2:] == (1, 4096)  # >= 2 waves already
    monkeypatch.setitem(TUNE, "se_split", 3)
    assert lf._se_plan(lay, 4096, True, cfg, dev)[2:] == (3, 1408)  # forced, either direction


def test_generator_seg_lens_accepted_when_valid_and_empty_features_use_the_reference():
    kw = _args()
    kw["seg_lens"] = (v for v in [2, 4])
    y = kernels.fused_multi_lora(**kw)
    ref = kernels.fused_multi_lora_reference(**_args_without_generator(kw))
    torch.testing.assert_close(y, ref)
    for d_in, d_out in ((0, 5), (8, 0)):
        kw = _args(d_in=d_in, d_out=d_out)
        y = kernels.fused_multi_lora(**kw)
        assert y.shape == (6, d_out)
        torch.testing.assert_close(y, torch.zeros(6, d_out))


def _args_without_generator(kw):
    return {**kw, "seg_lens": [2, 4]}


def test_unknown_tune_path_is_named():
    from kernels import multi_lora as ml

    ml.TUNE["path"] = "bogus"
    with pytest.raises(ValueError, match='TUNE\\["path"\\]'):
        kernels.fused_multi_lora(**_args())


def test_largest_fp32_scaling_and_getitem_sequences_accepted():
    class Seq:  # the old sequence protocol: __getitem__ until IndexError, no __iter__
        def __init__(self, *v):
            self.v = v

        def __getitem__(self, i):
            return self.v[i]

    lay = kernels.make_layout(Seq(2, 4), Seq(4, 2), [1.0, 3.4028235e38])
    assert lay.seg_lens == (2, 4) and lay.ranks == (4, 2)
    assert lay.scaling_tensor(torch.device("cpu"))[1] == torch.finfo(torch.float32).max
