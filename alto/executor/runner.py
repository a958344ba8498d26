"""The training loop of `alto run`: one task's configs over one frozen backbone.

Per step, every active job draws its next batch from its own sample stream, all
batches go through the model as one token batch (see data.py for the layout), the
sum of the per-adapter losses is back-propagated once, and each adapter's own AdamW
steps. The `TaskTuner` (alto.policy) decides who is active:

- a job is evaluated on the val split when its samples reach `tuner.next_eval(job)`
  (the policy's eval points: every eval_every_frac of its training during warmup,
  every eval_every_frac_after afterwards, and at the end); the train loss reported is
  the mean train loss of its steps since its previous evaluation;
- Exit frees the slot and the adapter's optimizer; OVERFITTING restores the weights of
  the best-val evaluation (kept as a CPU snapshot) before export;
- Pause keeps weights + AdamW state (moved to CPU on CUDA) until an Admit(resume);
- NaN/inf train loss: that adapter gets no update and is reported with NaN losses,
  which every policy exits as divergence; other adapters are untouched (their loss
  terms and gradients never involve its tokens);
- OOM (torch.cuda.OutOfMemoryError or the SimulatedOOM test hook): the step is
  undone (data streams rewound, grads dropped), `tuner.shrink()` pauses the newest job
  and admission is capped below the batch that failed; one job alone that OOMs fails.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alto.executor.config import Config, TaskCfg
from alto.executor.data import SampleStream, collate, encode_samples, load_task_data
from alto.executor.lora_model import Adapter, MultiLoraModel, grads_finite
from alto.executor.micro_steps import loss_and_backward
from alto.executor.outputs import RunWriter
from alto.policy.early_exit import EarlyExitConfig, make_early_exit
from alto.policy.task_tuner import TaskTuner
from alto.policy.types import (
    EVAL_TOKENS_PER_FORWARD,
    Admit,
    Exit,
    ExitReason,
    JobConfig,
    LossReported,
    Pause,
)


class SimulatedOOM(RuntimeError):
    """Raised by a test hook to exercise the OOM path on CPU."""


@dataclass
class Hooks:
    """Test/fault-injection hooks. oom(active_job_ids, rows_at_once) -> True raises an OOM
    before the step (rows_at_once: the step's rows, or one micro-step's with
    run.micro_step_tokens); nan(job_id, step) -> True makes that adapter's loss NaN this step;
    inf_grad(job_id, step) -> True makes one of its gradients inf after the backward (a finite
    loss with an overflowed gradient)."""

    oom: Callable[[list[str], int], bool] | None = None
    nan: Callable[[str, int], bool] | None = None
    inf_grad: Callable[[str, int], bool] | None = None
    eval_oom: Callable[[int], bool] | None = None  # (tokens in one evaluation forward) -> OOM


@dataclass
class JobState:
    job: JobConfig
    index: int  # position in the grid: seeds its data order and init
    stream: SampleStream
    adapter: Adapter | None = None
    samples: int = 0
    steps: int = 0
    pending_train: list[float] = field(default_factory=list)  # train losses since last eval
    last_eval_samples: int = -1
    best_val: float = math.inf
    best_step: int = -1
    best_weights: dict | None = None  # CPU snapshot at the best val eval
    final_val: float = math.nan
    exit_reason: str = ""
    kept_step: int | None = None


def job_list(task: TaskCfg, n_train: int) -> list[JobConfig]:
    """The grid, lr-major then rank then batch (TaskSpec.jobs order and id format)."""
    total = max(1, round(n_train * task.epochs))
    return [JobConfig(f"{task.name}/lr{lr:g}-r{r}-b{b}", task.name, lr, r, b,
                      task.alpha if task.alpha is not None else 2.0 * r, total)
            for lr in task.lrs for r in task.ranks for b in task.batch_sizes]


class TaskRunner:
    """Runs one task to the end (or Ctrl-C). fits: extra memory predicate on total batch."""

    def __init__(self, cfg: Config, task: TaskCfg, task_idx: int, mlm: MultiLoraModel, tok,
                 writer: RunWriter, mem_fits: Callable[[int, int, float], bool] | None = None,
                 hooks: Hooks | None = None, log=sys.stderr, data: tuple | None = None):
        self.cfg, self.task, self.mlm, self.tok, self.w = cfg, task, mlm, tok, writer
        self.hooks, self.log = hooks or Hooks(), log
        # data: the task's (train, val) samples when the caller loaded them already
        train, val = data if data is not None else load_task_data(cfg, task, task_idx)
        self.train, tc, tl = encode_samples(tok, train, task.max_seq_len)
        self.val, vc, vl = encode_samples(tok, val[: task.val_samples], task.max_seq_len)
        if tc or vc:  # (samples longer than max_seq_len)
            print(f"[{task.name}] max_seq_len {task.max_seq_len}: {tc} of {len(self.train)} training and "
                  f"{vc} of {len(self.val)} val samples are longer and are cut, prompt first from the left "
                  f"({tl} and {vl} of them lose completion tokens from the right too)", file=log)
        self.L = max(len(i) - 1 for i, _ in self.train)  # admission assumes the longest sample
        jobs = job_list(task, len(self.train))
        self.states = {j.job_id: JobState(j, i, SampleStream(len(self.train), task.seed * 7919 + i))
                       for i, j in enumerate(jobs)}
        self.policy = make_early_exit(EarlyExitConfig(**cfg.early_exit), jobs)
        self.batch_cap = cfg.memory.max_total_batch or 10**9
        self.mem_fits = mem_fits
        self.micro_tokens = cfg.run.micro_step_tokens  # halved on OOM (this task only)
        self.tuner = TaskTuner(jobs, self.policy, fits=self._fits, backfill=True,
                               max_active=cfg.memory.max_active)
        self.active: list[str] = []
        self.t0 = time.monotonic()
        self.step_no, self.exits, self.tokens = 0, 0, 0
        self.offload = mlm.device.type == "cuda"
        self.decisions: list = []  # every decision carried out, in order (tests replay them)
        self.eval_s = 0.0  # wall seconds spent in evaluations
        self.eval_tokens_cap = 10**12  # lowered by an OOM in evaluation
        self._eval_forward_tokens = 0  # tokens of the evaluation forward in flight

    # ---------------------------------------------------------------- admission
    def _fits(self, jobs) -> bool:
        """Admission: the total batch is under the cap and the memory model fits the rows that
        are in memory at once (the whole step, or one micro-step with run.micro_step_tokens)
        plus the adapters' own states (weights, gradients, AdamW moments: with micro-steps
        the token count no longer bounds how many adapters are admitted)."""
        b = sum(j.batch_size for j in jobs)
        if b > self.batch_cap:
            return False
        if self.mem_fits is None:
            return True
        states = sum(self.mlm.adapter_state_bytes(j.rank) for j in jobs)
        return self.mem_fits(self._rows_at_once(b), self.L, states)

    def _rows_at_once(self, total_batch: int) -> int:
        """Rows whose activations are in memory together: the step's, or one micro-step's."""
        m = self.micro_tokens
        return total_batch if not m else min(total_batch, max(1, m // self.L))

    def now(self) -> float:
        return time.monotonic() - self.t0

    def apply(self, decisions) -> None:
        for d in decisions or []:
            self.decisions.append(d)
            st = self.states[d.job_id]
            if isinstance(d, Admit):
                if st.adapter is None:
                    st.adapter = self.mlm.new_adapter(st.job, seed=self.task.seed * 7919 + st.index,
                                                      weight_decay=self.cfg.run.weight_decay)
                elif self.offload:
                    st.adapter.to(self.mlm.device)
                self.active.append(d.job_id)
            elif isinstance(d, Pause):
                self.active.remove(d.job_id)
                if self.offload:
                    st.adapter.to("cpu")
            elif isinstance(d, Exit):
                if d.job_id in self.active:
                    self.active.remove(d.job_id)
                self._finish(st, d.reason.value, d.keep_step)

    def _finish(self, st: JobState, reason: str, keep_step: int | None) -> None:
        st.exit_reason = reason
        self.exits += reason != ExitReason.COMPLETED.value
        if st.adapter is not None:
            if keep_step is not None and st.best_weights is not None:
                st.adapter.load_state_tensors(st.best_weights)  # best-val weights are the result
                st.kept_step = st.best_step
            # "completed": the configs that are results, trained to the end or stopped for
            # overfitting with their best-val weights kept
            export = self.cfg.run.export == "all" or (
                self.cfg.run.export == "completed"
                and (reason == ExitReason.COMPLETED.value or st.kept_step is not None))
            if export:
                self.w.export(st.job, st.adapter, self.mlm, reason)
        st.adapter, st.best_weights = None, None  # frees weights + AdamW state
        self.w.job_row(st)

    # ---------------------------------------------------------------- training
    def _step(self) -> None:
        # segments ordered by rank: a deterministic order, and the rank-sorted layout the bench times
        states = sorted((self.states[j] for j in self.active), key=lambda s: s.job.rank)
        saved = [(s.stream.epoch, s.stream.pos, s.stream._perm) for s in states]
        sizes = [min(s.job.batch_size, s.job.total_samples - s.samples) for s in states]
        groups = [[self.train[i] for i in s.stream.take(b)] for s, b in zip(states, sizes, strict=False)]
        try:
            if self.hooks.oom and self.hooks.oom([s.job.job_id for s in states], self._rows_at_once(sum(sizes))):
                raise SimulatedOOM("simulated OOM")
            tb = collate(groups, self.tok.pad_id).to(self.mlm.device)
            poison = [bool(self.hooks.nan(s.job.job_id, s.steps)) for s in states] if self.hooks.nan else None
            losses, scored = loss_and_backward(self.mlm, [s.adapter for s in states], tb.inputs, tb.targets,
                                          tb.mask, tb.rows, self.micro_tokens, poison)
            if self.hooks.inf_grad:
                for s in states:
                    g = s.adapter.parameters()[0].grad
                    if g is not None and self.hooks.inf_grad(s.job.job_id, s.steps):
                        g.view(-1)[0] = math.inf
            # a finite loss with a non-finite gradient is divergence too: stepping would put
            # NaN in the adapter's weights, and on the gemm path (kernels/launch_gemm.py) an
            # adapter's non-finite weights reach its row-tile neighbours' rows
            finite = torch.isfinite(losses) & grads_finite([s.adapter for s in states])
        except (torch.cuda.OutOfMemoryError, SimulatedOOM):
            oom = True
        else:
            oom = False
        if oom:  # after the except block: its traceback no longer holds the failed forward
            self.mlm.clear()
            for s, (e, p, perm) in zip(states, saved, strict=False):
                s.stream.epoch, s.stream.pos, s.stream._perm = e, p, perm
                s.adapter.zero_grad()
            gc.collect()
            if self.mlm.device.type == "cuda":
                torch.cuda.empty_cache()
            self._on_oom(sum(sizes))
            return
        self.mlm.clear()
        self.step_no += 1
        self.tokens += tb.inputs.numel()
        vals = losses.detach().float().cpu().tolist()
        for s, b, v, ok, n in zip(states, sizes, vals, finite.tolist(), scored.tolist(), strict=False):
            if ok and n > 0:  # no scored token (e.g. completions cut by max_seq_len): no signal, no update
                s.adapter.step()
            else:
                v = math.nan  # (a finite loss whose gradient was not: reported as divergence)
            s.adapter.zero_grad()
            s.samples += b
            s.steps += 1
            s.pending_train.append(v)
        self._after_step(states)

    def _on_oom(self, total_batch: int) -> None:
        """Smaller micro-steps first (same adapters, less memory), then a smaller admission."""
        at_once = min(self.micro_tokens, total_batch * self.L) if self.micro_tokens else 0
        if at_once // 2 >= self.L:
            self.micro_tokens = at_once // 2
            self.batch_cap = min(self.batch_cap, total_batch)  # the step may not grow back
            print(f"[{self.task.name}] OOM: micro-steps now <= {self.micro_tokens} tokens", file=self.log)
            return
        self.batch_cap = min(self.batch_cap, max(1, total_batch - 1))
        d = self.tuner.shrink()
        if d:
            print(f"[{self.task.name}] OOM at total batch {total_batch}: paused {d[0].job_id}", file=self.log)
            self.apply(d)
        else:  # a single job that does not fit alone
            jid = self.active[0]
            print(f"[{self.task.name}] OOM with {jid} alone: failed", file=self.log)
            self.apply(self.tuner.on_failed(self.now(), jid))

    def _after_step(self, states: list[JobState]) -> None:
        due = []
        for s in states:
            diverged = not math.isfinite(s.pending_train[-1])
            if diverged or s.samples >= self.tuner.next_eval(s.job.job_id) or s.samples >= s.job.total_samples:
                due.append((s, diverged))
        ok = sorted((s for s, dv in due if not dv), key=lambda s: s.job.rank)
        vals = dict(zip([s.job.job_id for s in ok], self.evaluate([s.adapter for s in ok]), strict=False)) if ok else {}
        for s, dv in due:
            jid = s.job.job_id
            if jid not in self.active:
                continue
            val = math.nan if dv else vals[jid]
            train = math.nan if dv else sum(s.pending_train) / len(s.pending_train)
            s.pending_train, s.last_eval_samples, s.final_val = [], s.samples, val
            if val < s.best_val:
                s.best_val, s.best_step = val, s.steps
                if self.cfg.early_exit["policy"] == "alto":  # only ALTO exits keep best weights
                    s.best_weights = s.adapter.state_tensors()
            ev = LossReported(self.now(), jid, s.steps, s.samples, train, val)
            self.w.loss_row(self.task.name, s.job, ev)
            self.apply(self.tuner.on_loss(ev))
            if jid in self.active and dv:  # policy kept a NaN job (should not happen): stop it
                self.apply(self.tuner.on_failed(self.now(), jid))
                s.exit_reason = ExitReason.DIVERGENCE.value
            if jid in self.active and s.samples >= s.job.total_samples:
                self.active.remove(jid)
                self._finish(s, ExitReason.COMPLETED.value, None)
                self.apply(self.tuner.on_complete(self.now(), jid))

    def evaluate(self, adapters: list[Adapter], budget_tokens: int | None = None) -> list[float]:
        """Token-weighted mean val loss of each adapter over the task's val samples, in
        forwards of at most budget_tokens tokens (default: eval_budget_tokens()). An OOM
        caps every later forward of the task at half the one that failed and starts the
        evaluation again (it changes no state, so nothing is lost); one adapter on one val
        row that does not fit is an OutOfMemoryError."""
        L = max(len(i) - 1 for i, _ in self.val)
        budget = budget_tokens or self.eval_budget_tokens()
        t0 = time.monotonic()
        try:
            while True:
                try:
                    return self._evaluate_in_forwards(adapters, L, budget)
                except (torch.cuda.OutOfMemoryError, SimulatedOOM):
                    pass
                # (after the except block: its traceback no longer holds the failed forward)
                gc.collect()
                if self.mlm.device.type == "cuda":
                    torch.cuda.empty_cache()
                failed = self._eval_forward_tokens
                if failed <= L:
                    raise torch.cuda.OutOfMemoryError(
                        f"[{self.task.name}] evaluation of one adapter on one val row ({L} tokens) "
                        "does not fit in memory")
                budget = self.eval_tokens_cap = min(budget, max(L, failed // 2))
                print(f"[{self.task.name}] OOM in an evaluation forward of {failed} tokens: at most "
                      f"{budget} tokens per forward from now on", file=self.log)
        finally:
            self.eval_s += time.monotonic() - t0

    def eval_budget_tokens(self) -> int:
        """Tokens per evaluation forward: run.eval_tokens, else 65,536 on CUDA and 8,192 on
        CPU; never above the cap an OOM in evaluation left. (Sizing it by the memory model,
        251k tokens on the SmolLM2 search, saved 2.1 of 17.1 s of evaluations in an
        interleaved pair on the H200 and one of five such runs hit an unexplained illegal
        memory access: docs/executor.md, "Evaluation forwards".)"""
        budget = self.cfg.run.eval_tokens or (EVAL_TOKENS_PER_FORWARD if self.mlm.device.type == "cuda" else 8192)
        return min(budget, self.eval_tokens_cap)

    @torch.no_grad()
    def _evaluate_in_forwards(self, adapters: list[Adapter], L: int, budget_tokens: int) -> list[float]:
        per = max(1, min(len(self.val), budget_tokens // L))  # val rows per forward
        sums = [0.0] * len(adapters)
        cnts = [0.0] * len(adapters)
        for v0 in range(0, len(self.val), per):
            piece = self.val[v0:v0 + per]
            k = max(1, budget_tokens // (len(piece) * L))  # adapters per forward
            for a0 in range(0, len(adapters), k):
                chunk = adapters[a0:a0 + k]
                self._eval_forward_tokens = len(piece) * len(chunk) * L  # (what an OOM halves)
                if self.hooks.eval_oom and self.hooks.eval_oom(self._eval_forward_tokens):
                    raise SimulatedOOM("simulated OOM in evaluation")
                tb = collate([piece] * len(chunk), self.tok.pad_id).to(self.mlm.device)
                try:
                    loss, cnt = self.mlm.per_adapter_loss(chunk, tb.inputs, tb.targets, tb.mask, tb.rows)
                finally:
                    self.mlm.clear()
                for i, (lv, cv) in enumerate(zip(loss.tolist(), cnt.tolist(), strict=False)):
                    sums[a0 + i] += lv * cv
                    cnts[a0 + i] += cv
        return [s / max(c, 1.0) for s, c in zip(sums, cnts, strict=False)]

    # ---------------------------------------------------------------- loop
    def progress(self, force: bool = False) -> None:
        if force or self.step_no % max(1, self.cfg.run.log_every) == 0:
            el = self.now()
            done = sum(1 for s in self.states.values() if s.exit_reason)
            print(f"[{self.task.name}] step {self.step_no} | active {len(self.active)} | queued "
                  f"{len(self.tuner.queued)} paused {len(self.tuner.paused)} | done {done}/{len(self.states)}"
                  f" (early exits {self.exits}) | {self.tokens / max(el, 1e-9):,.0f} tok/s | {el:.1f}s"
                  f" (evaluations {self.eval_s:.1f}s)",
                  file=self.log, flush=True)

    def run(self) -> None:
        self.apply(self.tuner.start())
        while self.active:
            self._step()
            self.progress()
        failed = [s for s in self.states.values() if not s.exit_reason]  # nothing could be admitted
        for s in failed:
            self._finish(s, ExitReason.FAILED.value, None)
        if failed or self.step_no % max(1, self.cfg.run.log_every):  # (else the loop just said it)
            self.progress(force=True)

    def interrupt(self) -> None:
        """Ctrl-C: record unfinished jobs as interrupted (their adapters are not exported)."""
        left = [s for s in self.states.values() if not s.exit_reason]
        for s in left:
            s.exit_reason = "interrupted"
        self.w.job_rows(left)
