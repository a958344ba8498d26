"""Compile-only probe for the next step of the gemm path: a warp-specialised Hopper GEMM in Gluon.

    python3 benchmarks/gluon_ws_probe.py          # any machine with Triton; no GPU needed

The gemm path's LoRA epilogue costs +41 µs per GEMM at 4096², T = 8192, as latency that
nothing overlaps (docs/kernels_log.md §3e, §3f), and Triton's `tl.range(warp_specialize=True)`
does not warp-specialise on Hopper in 3.6. Gluon (`triton.experimental.gluon`) does. This
skeleton has one TMA loader warp filling a ring of shared-memory stages (mbarrier
ready / free pairs), the default partition consuming them with async wgmma, and a TMA store.
It compiles for sm_90 with Triton 3.6.0 (the H200's) and 3.9.0 (CI's); the PTX has the
register hand-off between partitions (setmaxnreg), TMA loads completing on mbarriers and
wgmma. It has **never been launched**: its numerics and speed are unknown. (The gemm path's shipped
Gluon kernel, kernels/gemm_lora_gluon.py, is not warp-specialised: one software pipeline.) Gluon is
experimental, and its TMA copies were renamed between 3.6 and 3.9 (shimmed below).
"""
import os
import re
import sys
from collections import Counter

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the version shims for Gluon's renamed TMA copies live with the shipped Gluon kernel
from kernels.gemm_lora_gluon import (  # noqa: E402
    _tma_load as tma_load,
)
from kernels.gemm_lora_gluon import (
    _tma_store as tma_store,
)
from kernels.gemm_lora_gluon import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)


@gluon.jit
def _loader(a_desc, b_desc, a_ring, b_ring, ready, free, off_m, off_n, k_steps, BK: gl.constexpr):
    stages: gl.constexpr = a_ring.type.shape[0]
    for i in range(k_steps):
        slot = i % stages
        turn = (i // stages) & 1
        mbarrier.wait(free.index(slot), turn ^ 1)  # the consumer released this slot
        bar = ready.index(slot)
        mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
        tma_load(a_desc, [off_m, i * BK], bar, a_ring.index(slot))
        tma_load(b_desc, [off_n, i * BK], bar, b_ring.index(slot))


@gluon.jit
def _consumer(a_ring, b_ring, ready, free, k_steps, BM: gl.constexpr, BN: gl.constexpr,
              acc_layout: gl.constexpr):
    stages: gl.constexpr = a_ring.type.shape[0]
    acc = gl.zeros((BM, BN), gl.float32, acc_layout)
    for i in range(k_steps):
        slot = i % stages
        mbarrier.wait(ready.index(slot), (i // stages) & 1)
        acc = warpgroup_mma(a_ring.index(slot), b_ring.index(slot).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=[acc])
        mbarrier.arrive(free.index(slot), count=1)
    return (acc, )


@gluon.jit
def ws_gemm(a_desc, b_desc, c_desc, K, BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
            STAGES: gl.constexpr, num_warps: gl.constexpr):
    off_m = gl.program_id(0) * BM
    off_n = gl.program_id(1) * BN
    a_ring = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
    b_ring = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(free.index(s), count=1)
    k_steps = gl.cdiv(K, BK)
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                          instr_shape=[16, BN, 16])
    (acc, ) = gl.warp_specialize([
        (_consumer, (a_ring, b_ring, ready, free, k_steps, BM, BN, acc_layout)),
        (_loader, (a_desc, b_desc, a_ring, b_ring, ready, free, off_m, off_n, k_steps, BK)),
    ], [1], [40])
    c_smem = gl.allocate_shared_memory(c_desc.dtype, c_desc.block_type.shape, c_desc.layout)
    c_smem.store(acc.to(c_desc.dtype))
    fence_async_shared()
    tma_store(c_desc, [off_m, off_n], c_smem)
    tma.store_wait(0)


def main():
    BM, BN, BK = 128, 128, 64
    lay_a = gl.NVMMASharedLayout.get_default_for([BM, BK], gl.bfloat16)
    lay_b = gl.NVMMASharedLayout.get_default_for([BN, BK], gl.bfloat16)
    lay_c = gl.NVMMASharedLayout.get_default_for([BM, BN], gl.bfloat16)
    sig = {"a_desc": f"tensordesc<bf16[{BM}, {BK}],{lay_a!r}>", "b_desc": f"tensordesc<bf16[{BN}, {BK}],{lay_b!r}>",
           "c_desc": f"tensordesc<bf16[{BM}, {BN}],{lay_c!r}>", "K": "i32",
           "BM": "constexpr", "BN": "constexpr", "BK": "constexpr", "STAGES": "constexpr", "num_warps": "constexpr"}
    names = list(sig)
    consts = {(names.index(k),): v for k, v in dict(BM=BM, BN=BN, BK=BK, STAGES=3, num_warps=4).items()}
    src = GluonASTSource(ws_gemm, sig, constexprs=consts)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, maxnreg=168))
    ptx = k.asm["ptx"]
    print(triton.__version__, "compiled; shared", k.metadata.shared,
          dict(Counter(re.findall(r"\b(wgmma\.mma_async[\w.]*|cp\.async\.bulk\.tensor[\w.:]*|mbarrier\.[\w.:]*|setmaxnreg[\w.]*)", ptx))))


if __name__ == "__main__":
    main()
