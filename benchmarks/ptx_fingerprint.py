"""PTX of every multi-LoRA kernel configuration the launchers use, compiled for sm_90 on the CPU.

Run (any machine with Triton; no GPU needed):
    python3 benchmarks/ptx_fingerprint.py --out before.json        # then edit the kernels
    python3 benchmarks/ptx_fingerprint.py --out after.json --compare before.json

Device time is scarce, so a kernel refactor that should not change the generated code is
checked here instead: identical PTX (source-line records stripped) for every configuration
means the GPU runs the same code. To check against the H200's compiler, put its Triton first on
the path, e.g. `pip install --no-deps --target /tmp/t36 triton==3.6.0` and
`PYTHONPATH=/tmp/t36:. python3 benchmarks/ptx_fingerprint.py ...`. The configurations
(bf16 and fp32; shrink with split-K atomics; expand; the weight-gradient kernel plain, with
the dX expand and expand-only; shrink_expand forward and backward; wgrad_pair; the gemm path's
GEMM forward and backward, bf16; RMSNorm and SwiGLU forward and backward) use the
shipped H200 tile sizes; a kernel whose signature changes makes this script fail loudly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from functools import partial

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kernels.gemm_lora_triton as gl  # noqa: E402
import kernels.multi_lora_fused_triton as fused  # noqa: E402
import kernels.multi_lora_triton as split  # noqa: E402
import kernels.norm_act as na  # noqa: E402


def compile_sm90(fn_py, ptrs: dict, consts: dict, ones: list, aligned: list, warps=4, stages=2):
    """fn_py compiled for sm_90 (a triton CompiledKernel: ``.asm["ptx"]``, ``.metadata.shared``):
    pointer args typed by ``ptrs``, every other runtime arg i32, ``ones`` specialised to 1 and
    ``aligned`` marked 16-divisible (as Triton's launcher would)."""
    fn = triton.jit(split._with_helpers(fn_py))  # as lazy_jit does, its jit_helper callees too
    # the launchers pass these as constexprs only if the jitted kernel marks them so (a copy
    # that lost the annotations compiled here but failed every launch on the GPU, 2026-11-29)
    marked = {p.name for p in fn.params if p.is_constexpr}
    if marked != {k for k, v in consts.items() if v is not None}:  # (None: an absent pointer)
        raise SystemExit(f"{fn_py.__name__}: constexpr parameters {sorted(marked)}, "
                         f"configured {sorted(consts)}")
    sig = {n: "i32" for n in fn.arg_names} | ptrs
    consts = consts | {k: 1 for k in ones}
    sig |= {k: "constexpr" for k in consts}
    idx = fn.arg_names.index
    src = ASTSource(fn, sig, constexprs={(idx(k),): v for k, v in consts.items()},
                    attrs={(idx(k),): [["tt.divisibility", 16]] for k in aligned})  # fmt: skip
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=warps, num_stages=stages))  # fmt: skip


def _bf16_desc(box: list) -> str:
    """Signature type of a bf16 Gluon TMA descriptor with this box, in the NVMMA shared layout
    the launchers give it (launch_gemm._smem_layout: the widest swizzle)."""
    from triton.experimental.gluon import language as gll

    return f"tensordesc<bf16{box},{gll.NVMMASharedLayout.get_default_for(box, gll.bfloat16)!r}>"


def _compile_gluon_sm90(kernel, sig: dict, consts: dict, maxnreg: int | None = None):
    """A Gluon kernel compiled for sm_90 with runtime argument types ``sig`` and the
    constexprs ``consts`` (num_warps among them), as its launcher would specialise it."""
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = sig | {k: "constexpr" for k in consts}
    names = list(sig)
    src = GluonASTSource(kernel, sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    options = dict(num_warps=consts["num_warps"], **({"maxnreg": maxnreg} if maxnreg else {}))
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def compile_gluon_gemm(kmajor: bool, lora: bool = True, bm: int = 128, bn: int = 256,
                       stages: int = 3, warps: int = 8, peel: bool = False,
                       rank_k: bool = True, s_regs: bool = False, halves: bool = False,
                       maxnreg: int | None = None):
    """kernels/gemm_lora_gluon.py's kernel compiled for sm_90 in bf16 at the launcher's box
    shapes (A / S [bm, 64], B / V [bn, 64] k-major or [64, bn], C [bm, bn]); ``maxnreg``
    caps its registers per thread (TUNE gpu gm_side_fit)."""
    from kernels import gemm_lora_gluon

    b_box = [bn, 64] if kmajor else [64, bn]
    a_t, b_t = _bf16_desc([bm, 64]), _bf16_desc(b_box)
    sig = dict(a_desc=a_t, b_desc=b_t, c_desc=_bf16_desc([bm, bn // 2 if halves else bn]),
               s_desc=a_t, v_desc=b_t, ROW_AD="*i32", RANKS="*i32", TILE_PLAN="*i32", M="i32", N="i32", K="i32",
               V_ROWS_PER_AD="i32")  # fmt: skip
    consts = dict(B_KMAJOR=kmajor, LORA=lora, STAGES=stages, GROUP_M=8, LORA_MASK=True,
                  PEEL_BASE=peel, RANK_K=rank_k, S_REGS=s_regs, EPI_HALVES=halves,
                  num_warps=warps)  # fmt: skip
    return _compile_gluon_sm90(gemm_lora_gluon.gemm_lora_gluon_kernel, sig, consts,
                               maxnreg=maxnreg)  # fmt: skip


def compile_gluon_shrink(kmajor: bool, split_k: bool = True, bm: int = 128, stages: int = 4,
                         warps: int = 4, part_atomic: bool = False):
    """kernels/shrink_gluon.py's kernel compiled for sm_90 in bf16 at the launcher's box shapes
    (X [bm, 64], W [64, 64]; the forward's W_a = A_a is k-contiguous: kmajor)."""
    from kernels import shrink_gluon

    sig = dict(x_desc=_bf16_desc([bm, 64]), w_desc=_bf16_desc([64, 64]), OUT="*bf16", PART="*fp32",
               TICKETS="*i32", TILES="*i32", RANKS="*i32", SCALES="*fp32", N_TILES="i32",
               K_STEPS="i32", UNITS="i32", W_ROWS_PER_AD="i32", WIDTH="i32", stride_om="i32",
               part_stride="i32")  # fmt: skip
    consts = dict(W_KMAJOR=kmajor, APPLY_SCALE=True, SPLIT_K=split_k, STAGES=stages,
                  PART_ATOMIC=part_atomic, num_warps=warps)
    return _compile_gluon_sm90(shrink_gluon.shrink_gluon_kernel, sig, consts)


def compile_gluon_wgrad(transpose_out: bool = False, bn: int = 128, stages: int = 8,
                        warps: int = 4):
    """kernels/wgrad_gluon.py's kernel compiled for sm_90 in bf16 at the launcher's box shapes
    (P [64, 64], Q [64, bn]), as launched: dA (columns contiguous: stride_on = 1) or, with
    ``transpose_out``, dB (ranks contiguous: stride_or = 1, and scaled as the fused path
    asks); the stride that is 1 is specialised, as Triton's launcher does."""
    from kernels import wgrad_gluon

    sig = dict(p_desc=_bf16_desc([64, 64]), q_desc=_bf16_desc([64, bn]), OUT="*bf16",
               TABLE="*i32", RANKS="*i32", SCALES="*fp32", N_ITEMS="i32", N_CB="i32",
               N_COLS="i32", R_STORE="i32", stride_oa="i32", stride_or="i32", stride_on="i32")  # fmt: skip
    one = "stride_or" if transpose_out else "stride_on"
    consts = {one: 1, "APPLY_SCALE": transpose_out, "STAGES": stages, "num_warps": warps}
    return _compile_gluon_sm90(wgrad_gluon.wgrad_gluon_kernel, sig, consts)


def ptx(kernel) -> str:
    """A compiled kernel's PTX without source-line records and the debug labels ($L__tmpN)
    that mark inlined helper calls: they change with the source layout, not the code."""
    code = "\n".join(ln for ln in kernel.asm["ptx"].splitlines()
                     if not ln.strip().startswith((".loc", ".file", "//", "$L__tmp")))  # fmt: skip
    return re.sub(r"\.section\s+\.debug.*", "", code, flags=re.S)


from kernels.launch import SM90_SHARED_BYTES  # noqa: E402, F401 (tests read it from here)


def configurations(names=None, block_r: int = 64) -> dict[str, str]:
    """Configuration name -> PTX, for all configurations or only those in ``names``."""
    return {k: ptx(c) for k, c in compiled(names, block_r).items()}


def shared_memory(names=None, block_r: int = 64) -> dict[str, int]:
    """Configuration name -> bytes of shared memory per program (Triton's compile metadata)."""
    return {k: c.metadata.shared for k, c in compiled(names, block_r).items()}


def registers(names=None, block_r: int = 64) -> dict[str, int]:
    """Configuration name -> registers per thread of its sm_90 cubin (the cuobjdump bundled
    with Triton reads them); {} when that cuobjdump is missing."""
    if not os.path.exists(_CUOBJDUMP):
        return {}
    return {name: cubin_usage(kernel)["REG"] for name, kernel in compiled(names, block_r).items()}


_CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def cubin_usage(kernel) -> dict[str, int]:
    """A compiled kernel's sm_90 resource usage as the cubin states it (REG registers and
    LOCAL bytes of spilled local memory per thread, SHARED bytes of static shared memory, ...),
    read by Triton's bundled cuobjdump (callers check that it exists: :func:`registers`
    returns {} without it)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([_CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True,
                               text=True, check=True).stdout  # fmt: skip
    return {k: int(v) for k, v in re.findall(r"\b([A-Z]+):(\d+)", usage)}


def compiled(names=None, block_r: int = 64) -> dict:
    """Configuration name -> CompiledKernel, the rank axis padded to ``block_r`` (the gemm
    path's GEMM keeps 64: above it the launcher takes the stream path)."""
    return {k: build() for k, build in _builders(block_r).items() if names is None or k in names}


def _builders(block_r: int = 64) -> dict:
    """Configuration name -> a zero-argument function compiling it (so a caller that needs
    a few configurations, e.g. tests/kernels/test_generated_code.py, compiles only those)."""
    out = {}
    for dt in ("bf16", "fp32"):
        prec = dict(DOT_PRECISION="ieee" if dt == "fp32" else "tf32", UPCAST=False)
        tab = dict(RANKS="*i32", SCALES="*fp32")
        # W = A_i (k contiguous) in the forward, B_i (rank axis contiguous) in the backward
        for tag, (w_unit, w_other) in dict(shrink=("stride_wk", "stride_wr"),
                                           shrink_bwd=("stride_wr", "stride_wk")).items():  # fmt: skip
            out[f"{tag}_{dt}"] = partial(compile_sm90, split._shrink_kernel,
                dict(X=f"*{dt}", W=f"*{dt}", OUT=f"*{dt}", ACC="*fp32", TICKETS="*i32", TILES="*i32", **tab),
                dict(BLOCK_M=128, BLOCK_R=block_r, BLOCK_K=64, ATOMIC=True, APPLY_SCALE=True,
                     GPU_FENCE=True, **prec),
                ["stride_xk", w_unit, "stride_or"],
                ["X", "W", "OUT", "ACC", "TICKETS", "TILES", "K", "K_PER_SPLIT", "R_COLS", "stride_xm",
                 "stride_wa", w_other, "stride_om"], warps=8, stages=3)  # fmt: skip
        out[f"expand_{dt}"] = partial(compile_sm90, split._expand_kernel,
            dict(S="*fp32", V=f"*{dt}", Y=f"*{dt}", TILES="*i32", **tab),
            dict(BLOCK_M=64, BLOCK_N=128, BLOCK_R=block_r, ADD=False, APPLY_SCALE=True, **prec),
            ["stride_sr", "stride_vr", "stride_yn"],
            ["S", "V", "Y", "TILES", "N_OUT", "N_PER_PROG", "stride_sm", "stride_va",
             "stride_vn", "stride_ym"], stages=1)  # fmt: skip
        for tag, (expand, reduce) in dict(plain=(False, True), dadx=(True, True),
                                          stream=(True, False)).items():  # fmt: skip
            # V is A_i (n contiguous) for the dX delta, B_iᵀ (rank contiguous) for the forward
            v_unit, v_other = ("stride_vn", "stride_vr") if reduce else ("stride_vr", "stride_vn")
            out[f"wgrad_{tag}_{dt}"] = partial(compile_sm90, split._wgrad_kernel,
                dict(P=f"*{dt}", Q=f"*{dt}", OUT="*fp32", CHUNKS="*i32", V=f"*{dt}", Y=f"*{dt}", **tab),
                # the forward's expand-only launch has its own column block and warps (sx_*)
                dict(BLOCK_T=64, BLOCK_R=block_r, BLOCK_N=128 if reduce else 256, ATOMIC=True,
                     APPLY_SCALE=False, EXPAND=expand, ADD=False, REDUCE=reduce, **prec),
                ["stride_pr", "stride_qn", "stride_on", v_unit, "stride_yn"],
                ["P", "Q", "OUT", "CHUNKS", "V", "Y", "N_COLS", "R_OUT", "stride_pm", "stride_qm",
                 "stride_oa", "stride_or", "stride_va", v_other, "stride_ym"],
                warps=4 if reduce else 8)  # fmt: skip
        for tag, rows in dict(fwd=True, bwd=False).items():
            out[f"shrink_expand_{tag}_{dt}"] = partial(compile_sm90, fused._shrink_expand_kernel,
                dict(X=f"*{dt}", W=f"*{dt}", V=f"*{dt}", S=f"*{dt}", Y=f"*{dt}", TILES="*i32", **tab),
                # the shipped se_fwd_* / se_bwd_* settings: K steps of 64 / 128, 4 / 3 stages
                dict(BLOCK_M=64, BLOCK_R=block_r, BLOCK_K=64 if rows else 128, BLOCK_N=128,
                     SCALE_S=not rows,
                     SCALE_Y=rows, ADD=False, W_ROWS=rows, V_ROWS=rows, X_TMA=False, Y_TMA=False,
                     Y_DESC=None, **prec),
                ["stride_xk", "stride_sr", "stride_yn"]
                + (["stride_wk", "stride_vr"] if rows else ["stride_wr", "stride_vn"]),
                ["X", "W", "V", "S", "Y", "TILES", "K", "N_OUT", "N_PER_SPLIT", "R_COLS", "stride_xm",
                 "stride_wa", "stride_va", "stride_sm", "stride_ym"]
                + (["stride_wr", "stride_vn"] if rows else ["stride_wk", "stride_vr"]),
                stages=4 if rows else 3)  # fmt: skip
        out[f"wgrad_pair_{dt}"] = partial(compile_sm90, fused._wgrad_pair_kernel,
            dict(P1=f"*{dt}", Q1=f"*{dt}", O1="*fp32", P2=f"*{dt}", Q2=f"*{dt}", O2="*fp32",
                 CHUNKS="*i32", **tab),
            dict(BLOCK_T=64, BLOCK_R=block_r, BLOCK_N=128, ATOMIC=True, **prec),
            ["s_p1r", "s_q1n", "s_o1n", "s_p2r", "s_q2n", "s_o2r"],
            ["P1", "Q1", "O1", "P2", "Q2", "O2", "CHUNKS", "N1", "N2", "NB1", "R_OUT", "s_p1m",
             "s_q1m", "s_o1a", "s_o1r", "s_p2m", "s_q2m", "s_o2a", "s_o2n"])  # fmt: skip
    for tag, kmajor in dict(fwd=True, bwd=False).items():  # the gemm path, bf16 only (on CUDA)
        dt, bm, bn, bk, br = "bf16", 128, 256, 64, 64
        out[f"gemm_lora_{tag}_bf16"] = partial(compile_sm90, gl._gemm_lora_kernel,
            dict(A_DESC=f"tensordesc<{dt}[{bm}, {bk}]>",
                 B_DESC=f"tensordesc<{dt}[{bn}, {bk}]>" if kmajor else f"tensordesc<{dt}[{bk}, {bn}]>",
                 C_DESC=f"tensordesc<{dt}[{bm}, {bn}]>", S_DESC=f"tensordesc<{dt}[{bm}, {br}]>",
                 V_DESC=f"tensordesc<{dt}[{bn}, {br}]>" if kmajor else f"tensordesc<{dt}[{br}, {bn}]>",
                 ROW_AD="*i32", RANKS="*i32"),
            dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=br, GROUP_M=8, B_KMAJOR=kmajor,
                 LORA=True, DOT_PRECISION="tf32", UPCAST=False),
            [], ["ROW_AD", "RANKS", "M", "N", "K"], warps=8, stages=3)  # fmt: skip
    for dt in ("bf16", "fp32"):  # RMSNorm and SwiGLU (kernels/norm_act.py), H200 launch settings
        rows = dict(BLOCK_M=1, BLOCK_D=4096)
        out[f"rms_fwd_{dt}"] = partial(compile_sm90, na._rms_fwd_kernel,
            dict(X=f"*{dt}", W=f"*{dt}", Y=f"*{dt}", RSTD="*fp32", eps="fp32"), rows, [],
            ["X", "W", "Y", "RSTD", "D", "stride_x", "stride_y"], warps=8)  # fmt: skip
        out[f"rms_bwd_{dt}"] = partial(compile_sm90, na._rms_bwd_kernel,
            dict(DY=f"*{dt}", X=f"*{dt}", W=f"*{dt}", RSTD="*fp32", DX=f"*{dt}"), rows, [],
            ["DY", "X", "W", "RSTD", "DX", "D", "stride_dy", "stride_x", "stride_dx"], warps=8)  # fmt: skip
        out[f"silu_fwd_{dt}"] = partial(compile_sm90, na._silu_mul_fwd_kernel,
            dict(G=f"*{dt}", U=f"*{dt}", H=f"*{dt}"), dict(BLOCK=1024), [], ["G", "U", "H", "N"])  # fmt: skip
        out[f"silu_bwd_{dt}"] = partial(compile_sm90, na._silu_mul_bwd_kernel,
            dict(DH=f"*{dt}", G=f"*{dt}", U=f"*{dt}", DG=f"*{dt}", DU=f"*{dt}"), dict(BLOCK=1024),
            [], ["DH", "G", "U", "DG", "DU", "N"])  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file: configuration -> PTX")
    p.add_argument("--compare", help="an earlier --out file: report which configurations differ")
    args = p.parse_args()
    now = configurations()
    with open(args.out, "w") as f:
        json.dump(dict(triton=triton.__version__, ptx=now), f)
    print(f"Triton {triton.__version__}: {len(now)} configurations -> {args.out}")
    if args.compare:
        with open(args.compare) as f:
            old = json.load(f)
        if old["triton"] != triton.__version__:
            print(f"note: {args.compare} was made with Triton {old['triton']}")
        diff = [k for k in now if old["ptx"].get(k) != now[k]]
        for k in now:
            print(f"  {k:28s} {'DIFFERENT' if k in diff else 'identical'}")
        sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
