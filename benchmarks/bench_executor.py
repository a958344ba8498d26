"""Executor benchmarks on one GPU: paper Table 2 shape, 8B throughput, measured cost rows.

Run (on the GPU machine, from the repo root; each part writes CSVs into --out):
    python3 benchmarks/bench_executor.py --part check,table2,throughput --out benchmarks/results
    python3 benchmarks/bench_executor.py --part search --search-config S.yaml --search-modes none,peft --out DIR
    python3 benchmarks/bench_executor.py --part search-summary --search-dirs alto=D1,none=D2 \
        --peft-json D1/peft_sequential.json --out benchmarks/results   (anywhere: reads the files)
(Pipe through `grep --line-buffered` / `tee`, not plain grep: a killed call loses grep's buffer.)

Parts:
  check       fused vs reference LoRA path on Llama-3.2-1B shapes (bf16): per-adapter losses
              and LoRA gradients of one step must agree (rel. error reported) before timing.
  table2      paper Table 2 setup on this GPU: Llama-3.2-1B shape (random init, bf16), 32
              adapters with ranks 16/32/64 (cycled), per-adapter batch 1/2/4, seq 512 (the
              paper does not state its seq len; 512 keeps activations in memory without
              recompute). fused = kernels.fused_multi_lora; loop = eager PyTorch shared base +
              per-adapter loop; sequential = one adapter at a time (step time of 1 adapter of
              rank 32 at the same batch x 32 adapters). Workload time = steps for 1,000 samples
              per adapter x measured step time (projected from step times, not a full run).
  throughput  Llama-3.1-8B shape, random init, bf16, seq 1024, rank 16, fused, 16-64 adapters
              at batch 1-8 per adapter (--tp-points NxB:CKPT, CKPT = fraction of layers
              recomputed: larger steps do not fit in 141 GB without). Fused RMSNorm/SwiGLU
              kernels on unless --fused-ops 0. tokens/s vs the 4N FLOP bound
              (24,600 tok/s) and HF PEFT (9,085 tok/s at batch 4, 4,441 at batch 1; GPU.md).
  search      a real search (--search-config, SmolLM2 GGUF + a jsonl task): `alto run` with ALTO
              early exit, then with policy none (the full grid: every config to the end, which
              also gives the regret reference), then sequential HF PEFT on one config per batch
              size (rank 16, lr 2e-4) timed for the whole epoch and extrapolated to the grid
              (x15: each batch size has 15 configs; rank/lr assumed not to change step time).
  torchprof   torch.profiler tables of one fused step (default 1B, 32 adapters, b=1, seq 512;
              --prof 8b:16x1x1024:0 for others) -> torchprof_<model>_<NxBxL>_ckpt<f>.txt
Every timed point also becomes a row of the simulator's cost table (measured_h200.csv) and the
memory fits become rows of memory_measured_h200.csv.
Timing: CUDA events around whole steps (fwd + bwd + every adapter's AdamW), 1 warm-up step
(Triton compile) + --iters timed steps; median, p20, p80.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from alto.executor.lora_model import MultiLoraModel, apply_checkpointing  # noqa: E402
from alto.executor.models import random_model  # noqa: E402
from alto.executor.profile import PROFILE_COLS, device_name, fit_memory, make_adapters, time_step  # noqa: E402
from alto.models import LORA_TARGETS, get_model  # noqa: E402
from benchmarks.results_csv import append_results  # noqa: E402
from kernels import side_stream  # noqa: E402

BENCH_COLS = ["setup", "model", "impl", "n_adapters", "batch_per_adapter", "seq_len", "mean_rank",
              "grad_ckpt", "tokens_per_step", "step_median_s", "step_p20_s", "step_p80_s", "tokens_per_s",
              "peak_mem_gb", "gpu", "torch", "triton", "transformers", "date", "note"]
PEFT_8B = {1: 4441.0, 4: 9085.0}  # HF PEFT, one adapter r=16, seq 1024 (GPU.md, measured)
BOUND_8B = 24600.0  # 4N FLOPs/token at 790 TFLOP/s
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEV.type == "cuda"


def versions() -> dict:
    import transformers
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
            "gpu": device_name(DEV), "date": dt.date.today().isoformat()}


def lora_path() -> str:
    """The multi-LoRA kernels' path these rows ran (kernels.TUNE["path"]; "auto" names the
    paths the auto rule picks over an 8B layer's shapes), so a cost row says what it measured."""
    from kernels.launch import TUNE, auto_path

    if TUNE["path"] != "auto":
        return TUNE["path"]
    picks = {auto_path(4096, 4096, d)[0] for d in (1024, 4096, 14336)}  # k/v, square, MLP
    return "auto=" + "+".join(sorted(picks))


def set_ckpt(mlm: MultiLoraModel, on: bool | float) -> None:
    """Activation checkpointing off, on (every layer) or on a fraction of the layers."""
    apply_checkpointing(mlm.model, on)
    if not on:
        mlm.model.eval()


def write_csv(path: str, cols: list[str], rows: list[dict]) -> None:
    """Append rows to a results CSV; keys outside cols (bench bookkeeping) are left out."""
    append_results(path, cols, rows, extrasaction="ignore")


class Bench:
    def __init__(self, out: str, iters: int):
        self.out, self.iters, self.v = out, iters, versions()
        self.rows: list[dict] = []
        self.cost_rows: list[dict] = []

    def point(self, setup, model_name, mlm, impl, n, b, L, ranks, ckpt=False, note="", micro=None):
        """Time one (impl, n adapters, b rows each, L); returns the bench row (or None on OOM)."""
        mlm.use_impl({"single": "reference", "sequential": "reference"}.get(impl, impl))
        set_ckpt(mlm, ckpt)
        rk = [ranks[i % len(ranks)] for i in range(n)]
        ads = make_adapters(mlm, rk, b)
        if CUDA:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        forks_before = dict(side_stream.DECISIONS)
        try:
            med, p20, p80 = time_step(mlm, ads, [b] * n, L, mlm.model.config.vocab_size, warmup=1,
                                      iters=self.iters, micro_step_tokens=micro)
        except torch.cuda.OutOfMemoryError:
            mlm.clear()
            print(f"{setup} {impl} n={n} b={b}: OOM", flush=True)
            return None
        finally:
            del ads
        tok = n * b * L
        row = dict(setup=setup, model=model_name, impl=impl, n_adapters=n, batch_per_adapter=b, seq_len=L,
                   mean_rank=sum(rk) / n, grad_ckpt=float(ckpt), tokens_per_step=tok, step_median_s=f"{med:.5g}",
                   step_p20_s=f"{p20:.5g}", step_p80_s=f"{p80:.5g}", tokens_per_s=f"{tok / med:.1f}",
                   peak_mem_gb=f"{torch.cuda.max_memory_reserved() / 1e9 if CUDA else 0:.1f}", note=note, **self.v)
        self.rows.append(row)
        kern = {"fused": "fused", "loop": "loop", "single": "single"}.get(impl)
        if kern and not ckpt and not micro:  # the cost table has no recompute/micro-step axis
            self.cost_rows.append({"gpu": self.v["gpu"], "model": model_name, "kernel": kern, "n_adapters": n,
                                   "tokens_per_step": tok, "mean_rank": sum(rk) / n, "step_time_s": f"{med:.6g}",
                                   "source": f"measured: {self.v['gpu']} {self.v['date']} bench_executor "
                                             f"torch{self.v['torch']} b={b} L={L} lora-path {lora_path()}",
                                   "date": self.v["date"]})
        forks = {k: v - forks_before[k] for k, v in side_stream.DECISIONS.items()}
        print(f"{setup} {impl:6s} n={n:3d} b={b} L={L} ckpt={float(ckpt):g} micro={micro}: {med * 1e3:8.1f} ms  "
              f"{tok / med:10,.0f} tok/s  peak {row['peak_mem_gb']} GB  backward second stream: "
              f"{forks['side']} layers forked, {forks['one_stream']} on one stream", flush=True)
        return row

    def memory_row(self, model_name, mlm, L, rank):
        if not CUDA:
            return None
        set_ckpt(mlm, False)
        mlm.use_impl("fused")
        hbm = torch.cuda.get_device_properties(0).total_memory
        mm, pts = fit_memory(mlm, L, rank, vocab=mlm.model.config.vocab_size)
        print(f"memory {model_name}: {mm} from {pts}", flush=True)
        return {"gpu": self.v["gpu"], "model": model_name, "k0_bytes": f"{mm.k0_bytes:.6g}",
                "k1_bytes_per_token": f"{mm.k1_bytes_per_token:.6g}", "hbm_bytes": hbm,
                "source": f"measured: {self.v['gpu']} {self.v['date']} bench_executor L={L} rank={rank} "
                          f"fused peak-reserved fit of {len(pts)} points, adapter states taken out"}


def torch_profile(mlm: MultiLoraModel, n: int, b: int, L: int, ranks: list[int], path: str) -> None:
    """One step under torch.profiler: op table by device time and by host time -> path
    (where the fixed per-step cost goes: host launches, AdamW, kernels)."""
    from torch.profiler import ProfilerActivity, profile

    from alto.executor.profile import train_step

    ads = make_adapters(mlm, [ranks[i % len(ranks)] for i in range(n)], b)
    vocab = mlm.model.config.vocab_size
    train_step(mlm, ads, [b] * n, L, vocab)  # warm-up / compile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
    with profile(activities=acts) as prof:
        train_step(mlm, ads, [b] * n, L, vocab)
    ka = prof.key_averages()
    with open(path, "w") as f:
        for key in (("cuda_time_total",) if CUDA else ()) + ("cpu_time_total", "count"):
            f.write(f"== sorted by {key} (impl {mlm.ctx.impl}, n={n} b={b} L={L})\n")
            f.write(ka.table(sort_by=key, row_limit=30) + "\n")
    print(f"profile written to {path}", flush=True)


def check(mlm: MultiLoraModel) -> str:
    """Fused vs reference on one batch: max relative error of losses and of LoRA grads."""
    set_ckpt(mlm, False)
    ads = make_adapters(mlm, [16, 32, 64, 16], 2)
    g = torch.Generator().manual_seed(0)
    for a in ads:
        for _, bw in a.params.values():
            bw.data.normal_(0, 0.01, generator=None)
    ids = torch.randint(0, 200, (8, 257), generator=g).to(DEV)
    mask = torch.ones(8, 256, device=DEV)
    out = {}
    for impl in ("reference", "fused"):
        mlm.use_impl(impl)
        loss, _ = mlm.per_adapter_loss(ads, ids[:, :-1], ids[:, 1:], mask, [2, 2, 2, 2])
        loss.sum().backward()
        mlm.clear()
        grads = torch.cat([p.grad.flatten().float() for a in ads for p in a.parameters()])
        out[impl] = (loss.detach().float(), grads)
        for a in ads:
            a.zero_grad()
    le = ((out["fused"][0] - out["reference"][0]).abs() / out["reference"][0].abs()).max().item()
    ge = ((out["fused"][1] - out["reference"][1]).norm() / out["reference"][1].norm()).item()
    msg = f"check fused vs reference (bf16, 1B, 4 adapters r16/32/64): loss rel err {le:.2e}, grad rel err {ge:.2e}"
    print(msg, flush=True)
    if not (le < 2e-2 and ge < 5e-2):
        raise SystemExit("fused path disagrees with the reference: not timing it")
    return msg


def peft_sequential(model, tok, cfg, batches=(1, 2, 4, 8), rank=16, lr=2e-4) -> dict[int, float]:
    """Wall seconds of one PEFT LoRA job per batch size: one epoch of the task, bf16 base."""
    import time

    import peft

    from alto.executor.data import SampleStream, collate, encode_sample, load_task_data
    from alto.executor.lora_model import HF_NAMES

    task = cfg.tasks[0]
    train, _ = load_task_data(cfg, task, 0)
    enc = [encode_sample(tok, x, task.max_seq_len) for x in train]
    total = max(1, round(len(enc) * task.epochs))
    out = {}
    for b in batches:
        pm = peft.get_peft_model(model, peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                 target_modules=[HF_NAMES[t] for t in task.target_modules]))
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        st = SampleStream(len(enc), 0)
        if CUDA:
            torch.cuda.synchronize()
        t0, done = time.perf_counter(), 0
        while done < total:
            k = min(b, total - done)
            tb = collate([[enc[i] for i in st.take(k)]], tok.pad_id).to(DEV)
            logits = pm(input_ids=tb.inputs).logits
            m = tb.mask.bool()
            torch.nn.functional.cross_entropy(logits[m].float(), tb.targets[m]).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += k
        if CUDA:
            torch.cuda.synchronize()
        out[b] = time.perf_counter() - t0
        print(f"peft sequential b={b}: {out[b]:.1f} s for {total} samples", flush=True)
        model = pm.unload()
    return out


def search(cfg_path: str, out: str, modes: tuple[str, ...] = ("alto", "none", "peft")) -> None:
    """Run the real search's parts (see module docstring); each lands in its own file under out:
    search_<policy>/ (the run's DIR, plus wall.json) and peft_sequential.json. The parts may run in
    separate device calls; `--part search-summary` then turns the files into CSV rows."""
    import json
    import time

    from alto.executor.config import load_config
    from alto.executor.models import load_backbone
    from alto.executor.session import run_config

    cfg = load_config(cfg_path)
    t = time.perf_counter()
    backbone = load_backbone(cfg)
    print(f"backbone loaded in {time.perf_counter() - t:.1f} s", flush=True)
    # warm-up (not timed): compile the Triton kernels for this model's shapes and each rank
    from alto.executor.lora_model import MultiLoraModel as _M
    from alto.executor.profile import train_step
    from alto.executor.session import pick_impl

    wm = _M(backbone[0], cfg.tasks[0].target_modules, impl=pick_impl(cfg, backbone[2]))
    for rows in ([1, 2, 4], [8, 1, 2]):
        rk = [cfg.tasks[0].ranks[i % len(cfg.tasks[0].ranks)] for i in range(len(rows))]
        train_step(wm, make_adapters(wm, rk, 1), rows, 100, backbone[0].config.vocab_size)
    wm.remove()
    for pol in [m for m in modes if m in ("alto", "none")]:
        # the full grid also evaluates at ALTO's warmup points, so its curves can replay ALTO
        cfg.early_exit = ({"policy": pol} if pol == "alto"
                          else {"policy": "none", "eval_every_frac_after": 0.1, "record_warmup": True})
        t = time.perf_counter()
        r = run_config(cfg, os.path.join(out, f"search_{pol}"), log=sys.stdout, backbone=backbone)
        wall = time.perf_counter() - t
        with open(os.path.join(out, f"search_{pol}", "wall.json"), "w") as f:
            json.dump(dict(wall_s=wall, impl=r.impl, **versions()), f)
    if "peft" in modes:
        seq = peft_sequential(backbone[0], backbone[1], cfg, tuple(cfg.tasks[0].batch_sizes))
        with open(os.path.join(out, "peft_sequential.json"), "w") as f:
            json.dump(dict(seconds_per_job={str(b): v for b, v in seq.items()}, rank=16, lr=2e-4,
                           **versions()), f)


def _result_loss(jobs):
    """The search's answer per job: final val loss, or the kept best-val loss after an
    overfitting exit; NaN for jobs stopped early (they are not candidates)."""
    import numpy as np

    ok = jobs["exit_reason"].isin(["completed", "overfitting"])
    kept = jobs["exit_reason"] == "overfitting"
    return jobs["final_val_loss"].where(~kept, jobs["best_val_loss"]).where(ok, np.nan)


def search_summary(dirs: dict[str, str], peft_json: str | None, out_csv: str) -> list[dict]:
    """CSV rows of the real search from the files `search` wrote (possibly over several calls).

    dirs: policy (alto / none) -> its run DIR (jobs.csv, wall.json). Regret of a policy's best
    adapter = (its loss - the full grid's best) / the full grid's best, where the full grid is
    the policy=none run (every config trained to the end)."""
    import json

    import pandas as pd

    res = {}
    for pol, d in dirs.items():
        with open(os.path.join(d, "wall.json")) as f:
            res[pol] = (json.load(f), pd.read_csv(os.path.join(d, "jobs.csv")))
    grid_best = float(_result_loss(res["none"][1]).min()) if "none" in res else float("nan")
    rows = []
    for pol, (meta, jobs) in res.items():
        loss = _result_loss(jobs)
        best = float(loss.min())
        regret = (best - grid_best) / grid_best
        v = {k: meta[k] for k in ("gpu", "torch", "triton", "transformers", "date")}
        rows.append(dict(mode=f"executor policy={pol}", impl=meta["impl"], configs=len(jobs),
                         wall_s=f"{meta['wall_s']:.1f}", samples_trained=int(jobs["samples_trained"].sum()),
                         samples_full_grid=int(jobs["total_samples"].sum()), best_val_loss=f"{best:.5f}",
                         best_job=jobs.loc[loss.idxmin(), "job_id"],
                         regret_vs_grid="n/a (no full-grid run)" if grid_best != grid_best else f"{regret:.4%}",
                         note="measured: task wall time after backbone load and kernel warm-up (includes "
                              "the memory profile and every evaluation); " + ", ".join(
                                  f"{k} {n}" for k, n in jobs["exit_reason"].value_counts().items()), **v))
    if peft_json:
        with open(peft_json) as f:
            pj = json.load(f)
        jobs = next(iter(res.values()))[1]
        per_b = jobs.groupby("batch_size").size().to_dict()  # configs per batch size in the grid
        sec = {int(b): t for b, t in pj["seconds_per_job"].items()}
        total = sum(sec[b] * n for b, n in per_b.items())
        v = {k: pj[k] for k in ("gpu", "torch", "triton", "transformers", "date")}
        rows.append(dict(
            mode="sequential HF PEFT", impl="peft", configs=int(sum(per_b.values())), wall_s=f"{total:.1f}",
            samples_trained=int(jobs["total_samples"].sum()), samples_full_grid=int(jobs["total_samples"].sum()),
            best_val_loss="", best_job="", regret_vs_grid="",
            note="EXTRAPOLATED: measured one PEFT job per batch size (r16, lr 2e-4, one epoch; "
                 + ", ".join(f"b{b}: {t:.1f}s" for b, t in sorted(sec.items()))
                 + f") x configs per batch size {per_b}; training only, no evaluations", **v))
    write_csv(out_csv, list(rows[0]), rows)
    for r in rows:
        print(r, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="check,table2,throughput")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--search-config", default=None, help="YAML of the real search (part search)")
    ap.add_argument("--search-modes", default="alto,none,peft",
                    help="which search runs (alto, none, peft); split them over calls of < 10 min")
    ap.add_argument("--table2-batches", default="1,2,4")
    ap.add_argument("--table2-impls", default="fused,loop,single")
    ap.add_argument("--table2-ckpt", type=int, default=1, help="also b=4 with half the layers recomputed")
    ap.add_argument("--search-dirs", default="", help="search-summary: alto=DIR,none=DIR")
    ap.add_argument("--peft-json", default=None, help="search-summary: peft_sequential.json")
    ap.add_argument("--dry", action="store_true", help="CPU smoke test: llama-tiny for every model")
    ap.add_argument("--tp-points", default="16x1:0,32x1:0,64x1:0:24576,16x4:0:24576,32x2:0:24576,64x2:0:24576,16x8:0:24576",
                    help="throughput: NxB:CKPT[:MICRO] comma-separated (N adapters x batch, fraction of layers "
                         "recomputed, optional micro-step token cap: gradient accumulation)")
    ap.add_argument("--fused-ops", type=int, default=1, help="fused RMSNorm/SwiGLU kernels with the fused impl")
    ap.add_argument("--tp-baselines", type=int, default=1, help="throughput: also the eager loop and one adapter")
    ap.add_argument("--tp-memory", type=int, default=1, help="throughput: also fit the memory model")
    ap.add_argument("--prof", default="1b:32x1x512:0",
                    help="torchprof: MODEL(1b|8b):NxBxL:CKPT, e.g. 8b:1x4x1024:0")
    ap.add_argument("--prof-ranks", default="16,32,64", help="torchprof: adapter ranks, cycled")
    args = ap.parse_args()
    shapes = {"1b": "llama-tiny", "8b": "llama-tiny"} if args.dry else {"1b": "llama-3.2-1b", "8b": "llama-3.1-8b"}
    parts = args.part.split(",")
    os.makedirs(args.out, exist_ok=True)
    B = Bench(args.out, args.iters)
    mem_rows = []
    dev = DEV
    if {"check", "table2"} & set(parts):
        m1 = MultiLoraModel(random_model(shapes["1b"], torch.bfloat16, dev, 0), LORA_TARGETS,
                            fused_ops=bool(args.fused_ops))
        note = check(m1) if "check" in parts else ""
        if "table2" in parts:
            L, ranks = (32 if args.dry else 512), [16, 32, 64]
            impls = args.table2_impls.split(",")
            for b in (int(v) for v in args.table2_batches.split(",")):
                if "fused" in impls:
                    B.point("table2", shapes["1b"], m1, "fused", 32, b, L, ranks, note=note)
                if "loop" in impls:
                    B.point("table2", shapes["1b"], m1, "loop", 32, b, L, ranks)
                if "single" in impls:
                    B.point("table2", shapes["1b"], m1, "single", 1, b, L, [32])
            for impl in [i for i in ("fused", "loop") if i in impls and args.table2_ckpt]:
                # b=4 (65k tokens) needs recompute on half the layers
                B.point("table2", shapes["1b"], m1, impl, 32, 4, L, ranks, ckpt=0.5,
                        note="activation checkpointing on every other layer (b=4 does not fit without)")
            mem_rows.append(B.memory_row(shapes["1b"], m1, 1024, 64))
        write_csv(os.path.join(args.out, "executor_table2_h200.csv"), BENCH_COLS, B.rows)
        B.rows = []
        del m1
        if CUDA:
            torch.cuda.empty_cache()
    if "torchprof" in parts:  # where does a step's time go (host launches, AdamW, kernels)?
        size, nbl, ck = args.prof.split(":")
        n, b, L = (int(v) for v in nbl.split("x"))
        mp = MultiLoraModel(random_model(shapes[size], torch.bfloat16, dev, 0), LORA_TARGETS, impl="fused",
                            fused_ops=bool(args.fused_ops))
        set_ckpt(mp, float(ck))
        torch_profile(mp, n, b, 32 if args.dry else L, [int(r) for r in args.prof_ranks.split(",")],
                      os.path.join(args.out, f"torchprof_{size}_{nbl}_ckpt{ck}.txt"))
        del mp
        if CUDA:
            torch.cuda.empty_cache()
    if "throughput" in parts:
        shape = get_model(shapes["8b"])
        m8 = MultiLoraModel(random_model(shape.name, torch.bfloat16, dev, 0), LORA_TARGETS,
                            fused_ops=bool(args.fused_ops))
        L = 64 if args.dry else 1024
        ops = "fused RMSNorm/SwiGLU" if args.fused_ops else "HF eager norms/MLP"
        for spec in args.tp_points.split(","):  # NxB:CKPT[:MICRO]
            nb, ck, *micro = spec.split(":")
            n, b = (int(v) for v in nb.split("x"))
            mt = int(micro[0]) if micro else None
            how = f"micro-steps of <= {mt} tokens (gradient accumulation); " if mt else ""
            B.point("throughput", shape.name, m8, "fused", n, b, L, [16], ckpt=float(ck) or False, micro=mt,
                    note=f"{how}{ops}; 4N bound {BOUND_8B:.0f} tok/s; PEFT b1 {PEFT_8B[1]:.0f}, b4 {PEFT_8B[4]:.0f}")
        if args.tp_baselines:
            B.point("throughput", shape.name, m8, "loop", 16, 1, L, [16])
            B.point("throughput", shape.name, m8, "single", 1, 4, L, [16], note="our model, one adapter")
        write_csv(os.path.join(args.out, "executor_throughput_h200.csv"), BENCH_COLS, B.rows)
        B.rows = []
        if args.tp_memory:
            mem_rows.append(B.memory_row(shape.name, m8, 1024, 16))
    if "search" in parts:
        search(args.search_config, args.out, tuple(args.search_modes.split(",")))
    if "search-summary" in parts:  # CPU is fine: reads what `search` wrote
        dirs = dict(kv.split("=", 1) for kv in args.search_dirs.split(","))
        search_summary(dirs, args.peft_json, os.path.join(args.out, "executor_search_h200.csv"))
    if B.cost_rows:
        write_csv(os.path.join(args.out, "measured_h200.csv"), PROFILE_COLS, B.cost_rows)
    if any(mem_rows):
        write_csv(os.path.join(args.out, "memory_measured_h200.csv"),
                  ["gpu", "model", "k0_bytes", "k1_bytes_per_token", "hbm_bytes", "source"], [r for r in mem_rows if r])


if __name__ == "__main__":
    main()
