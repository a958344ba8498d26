"""Loss-curve sources for the simulator: what a LoRA job's train/val loss is after s samples.

Two sources behind one protocol (`CurveSource`), chosen by `make_curve_source(spec)`:
- "parametric[:seed]": `ParametricCurves`, a seeded synthetic generator (documented below).
- "recorded:<path>[,<path>...]": `RecordedCurves` (sim/recorded_curves.py), curves from
  real runs in the CSV format of traces/curves/README.md.

Both are deterministic: the same (task, job, samples) always gives the same losses, so
every policy of one simulation sees the same world. Losses are nats per token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from alto.models import MODELS
from alto.policy.types import JobConfig, TaskSpec


class CurveSource(Protocol):
    """What the simulator asks a curve source. Optional: ``divergence_onset(task, job) ->
    int | None``, the samples at which training first gives a non-finite loss, where the
    source knows it (RecordedCurves); the job then reports there instead of at its next
    evaluation. ParametricCurves has none: its divergence is seen at evaluations only."""

    def losses(self, task: TaskSpec, job: JobConfig, samples: int) -> tuple[float, float]:
        """(train_loss, val_loss) after `samples` training samples; deterministic. May be inf."""
        ...

    def final_best_val(self, task: TaskSpec, job: JobConfig) -> float:
        """Min val loss over the job's full trajectory (what best-val early stopping keeps)."""
        ...

    def final_best_vals(self, task: TaskSpec, jobs: Sequence[JobConfig]) -> list[float]:
        """final_best_val of each job (one call per task: sources may vectorise it)."""
        ...

    def losses_at(self, task: TaskSpec, jobs: Sequence[JobConfig], points: Sequence[Sequence[int]]) -> list[dict[int, tuple[float, float]]]:
        """For each job, {samples: losses(task, job, samples)} at its sample counts `points[i]`
        (one call per task: the simulator knows every evaluation point up front)."""
        ...


# ---------------------------------------------------------------- stable randomness


def stable_hash(*parts: object) -> int:
    """64-bit hash of the parts' str() forms (blake2b; NOT Python's per-process hash())."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def _uniform(*parts: object) -> float:
    """Deterministic U(0, 1), open at both ends."""
    return (stable_hash(*parts) + 0.5) / 2.0**64


def _normal(*parts: object) -> float:
    """Deterministic N(0, 1) (Box-Muller on two stable uniforms)."""
    u1, u2 = _uniform(*parts, "n1"), _uniform(*parts, "n2")
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One splitmix64 output for state x (Steele et al. 2014): a fast, well-mixed 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _normal_pair(key: int, samples: int) -> tuple[float, float]:
    """Two independent deterministic N(0, 1) for (key, samples): splitmix64 + Box-Muller.

    key is a per-job stable_hash computed once; the simulator draws evaluation noise on
    every loss report, so the per-report part is integer arithmetic, not a string hash.
    """
    a = _splitmix64(key ^ (samples * 0xD1B54A32D192ED03 & _MASK64))
    b = _splitmix64(a)
    u1, u2 = (a + 0.5) / 2.0**64, (b + 0.5) / 2.0**64
    r, t = math.sqrt(-2.0 * math.log(u1)), 2.0 * math.pi * u2
    return r * math.cos(t), r * math.sin(t)


def _splitmix64_array(x: np.ndarray) -> np.ndarray:
    """_splitmix64 on a uint64 array (wrapping arithmetic, the same bits)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _normal_pairs(keys: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """_normal_pair over arrays of uint64 keys and sample counts."""
    a = _splitmix64_array(keys ^ (samples * np.uint64(0xD1B54A32D192ED03)))
    b = _splitmix64_array(a)
    u1, u2 = (a.astype(float) + 0.5) / 2.0**64, (b.astype(float) + 0.5) / 2.0**64
    r, t = np.sqrt(-2.0 * np.log(u1)), 2.0 * np.pi * u2
    return r * np.cos(t), r * np.sin(t)


# ---------------------------------------------------------------- parametric generator


@dataclass(frozen=True)
class TaskLaw:
    """Per-task draws of ParametricCurves (meanings in its docstring); samples and lr units."""

    l_inf: float
    amp: float
    s0: float  # samples
    beta0: float
    lr_opt: float  # at batch b_ref
    lr_div: float  # at batch b_ref
    b_ref: float
    rank_opt: int
    overfit: float


@dataclass(frozen=True)
class _JobLaw:
    base: float  # L_inf + floors
    amp: float
    s0_eff: float  # s0 / speed
    beta: float
    s_div: float  # samples where divergence sets in (inf: never)
    overfit: float
    epoch: float  # samples per epoch
    noise_key: int = 0  # stable_hash(seed, task_id, job_id, "noise"): seeds per-report noise


class ParametricCurves:
    """Synthetic power-law curves with an lr optimum, divergence and overfitting.

    Clean validation loss after s samples (nats/token):

        val0(s) = L_inf + A * (F_lr + F_rank) + A * (1 + s * v / s0) ** (-beta)

    Per task (stable draws from (seed, task_id)):
      L_inf ~ U(0.3, 1.0)     irreducible loss;  A ~ U(0.8, 1.6)  reducible part at s = 0
      s0 = U(0.1, 0.3) epochs of the dataset: the sample scale of the decay
      beta0 ~ U(0.5, 0.8)     decay exponent at the optimal lr
      lr_opt  log-uniform in [5 * min(lrs), max(lrs) / 1.5] (at batch b_ref, the geometric
              mean of the task's batch sizes); lr_opt(b) = lr_opt * sqrt(b / b_ref) (sqrt scaling)
      lr_div = lr_opt * logU(2.5, 10)  divergence threshold, scaled with sqrt(b / b_ref) likewise
      rank_opt  uniform over the task's ranks
    Per job, with x = log10(lr / lr_opt(b)):
      beta = beta0 * exp(-lr_curv * x^2)       log-distance penalty on the decay exponent
      v = 10^(0.7 * clip(x, -2, log10(lr_div/lr_opt))) * (b_ref / b)^batch_exp
              progress per sample: higher lr starts faster; a bigger batch takes fewer
              steps per sample, so at fixed lr it progresses slower per sample
      F_lr = lr_floor * max(0, x)^2            too-high lr plateaus higher (SGD noise)
      F_rank = rank_coef * log2(r / rank_opt)^2  small rank effect
      s0 *= exp(jitter * z), beta *= exp(beta_coupling * jitter * z)   (z stable N(0,1) per job)
              per-job luck; a job that starts fast (small s0) also decays slower later, so
              curves cross and the 5%-warmup ranking is good but not final (the paper's
              Spearman > 0.7; here ~0.85 on the paper's 60-config grid, see tests)
    Divergence (lr > lr_div(b)): from s_div = 2 s0/v * (lr_div(b)/lr)^2 on, both losses are
      multiplied by exp(div_rate * (s - s_div) * v / s0); above `diverged_loss` they are inf.
    Overfitting: with rho = dataset_size * seq_len / model params (tokens per parameter),
      omega = overfit_coef * max(0, log10(rho_crit / rho)) * U(0.5, 1.5) * sqrt(lr/lr_opt(b))
              * (r / 16)^0.25 (clipped), and m(s) = omega * max(0, s/dataset_size - 1)^1.5
      (memorisation starts after one epoch): train = val0 * exp(-m) keeps falling,
      val = val0 * (1 + 0.6 m) turns up.
    Noise: multiplicative, iid per (seed, task, job, samples): val *= 1 + noise * z,
      train *= 1 + train_noise * z' (train is noisier: one batch vs the whole val set).
    final_best_val is the min of the noise-free val over 513 evenly spaced points (noise
    models evaluation scatter; regret compares true quality).

    Constructor parameters (defaults are our choices, not fitted to any run):
      seed=0            world seed: every draw is a stable hash of (seed, task_id[, job_id])
      noise=0.01        relative std of val-loss noise; train_noise=0.03 that of train loss
      lr_curv=1.0       beta penalty per decade^2 away from lr_opt
      lr_floor=0.12     plateau raise (in units of A) per decade^2 above lr_opt
      rank_coef=0.01    plateau raise (in units of A) per octave^2 away from rank_opt
      batch_exp=0.3     per-sample speed ~ (b_ref / b)^batch_exp
      div_rate=1.5      e-folds of loss growth per s0/v samples after divergence sets in
      diverged_loss=100 losses above this are reported as inf
      overfit_coef=0.25, rho_crit=1e-3   overfitting strength and the tokens-per-parameter
                        ratio below which a dataset counts as small
      jitter=0.4, beta_coupling=0.5      per-job luck (see above)
    """

    def __init__(self, seed: int = 0, noise: float = 0.01, train_noise: float = 0.03, *,
                 lr_curv: float = 1.0, lr_floor: float = 0.12, rank_coef: float = 0.01,
                 batch_exp: float = 0.3, div_rate: float = 1.5, diverged_loss: float = 100.0,
                 overfit_coef: float = 0.25, rho_crit: float = 1e-3, jitter: float = 0.4,
                 beta_coupling: float = 0.5) -> None:
        self.seed, self.noise, self.train_noise = seed, noise, train_noise
        self.lr_curv, self.lr_floor, self.rank_coef = lr_curv, lr_floor, rank_coef
        self.batch_exp, self.div_rate, self.diverged_loss = batch_exp, div_rate, diverged_loss
        self.overfit_coef, self.rho_crit, self.jitter = overfit_coef, rho_crit, jitter
        self.beta_coupling = beta_coupling
        self._tasks: dict[TaskSpec, TaskLaw] = {}
        # id(task) -> (task, {job_id: law}): hashing a whole frozen TaskSpec on every loss
        # report was a hot spot; holding `task` keeps its id from being reused
        self._jobs: dict[int, tuple[TaskSpec, dict[str, _JobLaw]]] = {}

    def __repr__(self) -> str:
        return f"ParametricCurves(seed={self.seed}, noise={self.noise}, train_noise={self.train_noise})"

    def task_law(self, task: TaskSpec) -> TaskLaw:
        """The task's drawn parameters (lr optimum, divergence threshold, ...), cached."""
        law = self._tasks.get(task)
        if law is None:
            u = lambda name: _uniform(self.seed, task.task_id, name)
            lo, hi = 5 * min(task.lrs), max(task.lrs) / 1.5
            if lo >= hi:
                lo = hi = math.sqrt(min(task.lrs) * max(task.lrs))
            lr_opt = math.exp(math.log(lo) + u("lr_opt") * (math.log(hi) - math.log(lo)))
            rho = task.dataset_size * task.seq_len / MODELS[task.model].params
            overfit = self.overfit_coef * max(0.0, math.log10(self.rho_crit / rho)) * (0.5 + u("overfit"))
            law = TaskLaw(
                l_inf=0.3 + 0.7 * u("l_inf"), amp=0.8 + 0.8 * u("amp"),
                s0=(0.1 + 0.2 * u("s0")) * task.dataset_size, beta0=0.5 + 0.3 * u("beta"),
                lr_opt=lr_opt, lr_div=lr_opt * math.exp(math.log(2.5) + u("lr_div") * math.log(4)),
                b_ref=math.exp(float(np.mean(np.log(task.batch_sizes)))),
                rank_opt=sorted(task.ranks)[int(u("rank") * len(task.ranks))], overfit=overfit)
            self._tasks[task] = law
        return law

    def _job_law(self, task: TaskSpec, job: JobConfig) -> _JobLaw:
        per_task = self._jobs.get(id(task))
        if per_task is None or per_task[0] is not task:  # the held reference pins id(task)
            per_task = self._jobs[id(task)] = (task, {})
        law = per_task[1].get(job.job_id)
        if law is None:
            t = self.task_law(task)
            bscale = math.sqrt(job.batch_size / t.b_ref)
            lr_opt, lr_div = t.lr_opt * bscale, t.lr_div * bscale
            x = math.log10(job.lr / lr_opt)
            v = 10 ** (0.7 * min(max(x, -2.0), math.log10(lr_div / lr_opt)))
            v *= (t.b_ref / job.batch_size) ** self.batch_exp
            # a job that starts fast (small s0) decays slower later (small beta): curves cross
            z = self.jitter * _normal(self.seed, task.task_id, job.job_id, "s0")
            s0, beta_j = t.s0 * math.exp(z), math.exp(self.beta_coupling * z)
            floor = self.lr_floor * max(0.0, x) ** 2 + self.rank_coef * math.log2(job.rank / t.rank_opt) ** 2
            s_div = 2 * s0 / v * (lr_div / job.lr) ** 2 if job.lr > lr_div else math.inf
            overfit = t.overfit * min(3.0, math.sqrt(job.lr / lr_opt)) * (job.rank / 16) ** 0.25
            law = _JobLaw(base=t.l_inf + t.amp * floor, amp=t.amp, s0_eff=s0 / v,
                          beta=beta_j * t.beta0 * math.exp(-self.lr_curv * x * x), s_div=s_div,
                          overfit=overfit, epoch=float(task.dataset_size),
                          noise_key=stable_hash(self.seed, task.task_id, job.job_id, "noise"))
            per_task[1][job.job_id] = law
        return law

    def _clean(self, law: _JobLaw, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free (train, val) at samples s (array); inf once diverged."""
        val0 = law.base + law.amp * (1.0 + s / law.s0_eff) ** (-law.beta)
        mem = law.overfit * np.maximum(0.0, s / law.epoch - 1.0) ** 1.5
        train, val = val0 * np.exp(-mem), val0 * (1.0 + 0.6 * mem)
        if math.isfinite(law.s_div):
            blow = np.exp(np.minimum(700.0, self.div_rate * np.maximum(0.0, s - law.s_div) / law.s0_eff))
            train, val = train * blow, val * blow
        train = np.where(train > self.diverged_loss, np.inf, train)
        val = np.where(val > self.diverged_loss, np.inf, val)
        return train, val

    def _clean_scalar(self, law: _JobLaw, s: float) -> tuple[float, float]:
        """_clean for one sample count in plain floats (the per-report hot path)."""
        val0 = law.base + law.amp * (1.0 + s / law.s0_eff) ** (-law.beta)
        mem = law.overfit * max(0.0, s / law.epoch - 1.0) ** 1.5
        train, val = val0 * math.exp(-mem), val0 * (1.0 + 0.6 * mem)
        if law.s_div < s:
            blow = math.exp(min(700.0, self.div_rate * (s - law.s_div) / law.s0_eff))
            train, val = train * blow, val * blow
        inf = math.inf
        return (inf if train > self.diverged_loss else train), (inf if val > self.diverged_loss else val)

    def losses(self, task: TaskSpec, job: JobConfig, samples: int) -> tuple[float, float]:
        law = self._job_law(task, job)
        train, val = self._clean_scalar(law, float(samples))
        z_train, z_val = _normal_pair(law.noise_key, int(samples))
        # clip the noise factor so a 5-sigma draw cannot flip the loss sign
        tr = train * max(0.05, 1.0 + self.train_noise * z_train)
        va = val * max(0.05, 1.0 + self.noise * z_val)
        return tr, va

    def losses_at(self, task: TaskSpec, jobs: Sequence[JobConfig], points: Sequence[Sequence[int]]) -> list[dict[int, tuple[float, float]]]:
        """losses() at many points of many jobs in one array pass (equal to 1e-12 relative).

        The noise is the same splitmix64 + Box-Muller stream as losses(), in uint64 arrays.
        """
        counts = [len(p) for p in points]
        if not sum(counts):
            return [{} for _ in jobs]
        laws = [self._job_law(task, j) for j in jobs]
        rep = lambda name, dtype=float: np.repeat(np.array([getattr(law, name) for law in laws], dtype=dtype), counts)
        n = np.concatenate([np.asarray(p, dtype=np.int64) for p in points])
        s = n.astype(float)
        s0, s_div = rep("s0_eff"), rep("s_div")
        val0 = rep("base") + rep("amp") * (1.0 + s / s0) ** (-rep("beta"))
        mem = rep("overfit") * np.maximum(0.0, s / rep("epoch") - 1.0) ** 1.5
        blow = np.exp(np.minimum(700.0, self.div_rate * np.maximum(0.0, s - np.where(np.isfinite(s_div), s_div, s)) / s0))
        train, val = val0 * np.exp(-mem) * blow, val0 * (1.0 + 0.6 * mem) * blow
        train = np.where(train > self.diverged_loss, np.inf, train)
        val = np.where(val > self.diverged_loss, np.inf, val)
        z_train, z_val = _normal_pairs(rep("noise_key", np.uint64), n.astype(np.uint64))
        train = train * np.maximum(0.05, 1.0 + self.train_noise * z_train)
        val = val * np.maximum(0.05, 1.0 + self.noise * z_val)
        out, i = [], 0
        for pts, c in zip(points, counts, strict=True):
            out.append(dict(zip(pts, zip(train[i : i + c].tolist(), val[i : i + c].tolist(), strict=True), strict=True)))
            i += c
        return out

    def final_best_val(self, task: TaskSpec, job: JobConfig) -> float:
        law = self._job_law(task, job)
        _, val = self._clean(law, np.linspace(0.0, float(job.total_samples), 513))
        return float(val.min())

    def final_best_vals(self, task: TaskSpec, jobs: Sequence[JobConfig]) -> list[float]:
        """Same values as final_best_val, computed for all jobs in one [jobs, 513] array pass."""
        if not jobs:
            return []
        laws = [self._job_law(task, j) for j in jobs]
        # Without overfitting or divergence the clean val curve falls monotonically, so its
        # minimum is its value at the end (the grid's last point): only the others need the grid.
        out = [float(self._clean_scalar(law, float(j.total_samples))[1]) for law, j in zip(laws, jobs, strict=True)]
        rows = [i for i, law in enumerate(laws) if law.overfit > 0 or math.isfinite(law.s_div)]
        if not rows:
            return out
        laws, jobs = [laws[i] for i in rows], [jobs[i] for i in rows]
        col = lambda name: np.array([getattr(law, name) for law in laws])[:, None]
        s = np.linspace(0.0, 1.0, 513)[None, :] * np.array([float(j.total_samples) for j in jobs])[:, None]
        law = _JobLaw(*(col(f.name) for f in dataclasses.fields(_JobLaw) if f.name != "noise_key"))
        val0 = law.base + law.amp * (1.0 + s / law.s0_eff) ** (-law.beta)
        mem = law.overfit * np.maximum(0.0, s / law.epoch - 1.0) ** 1.5
        val = val0 * (1.0 + 0.6 * mem)
        div = np.isfinite(law.s_div[:, 0])
        if div.any():
            s_div = np.where(np.isfinite(law.s_div), law.s_div, 0.0)
            blow = np.exp(np.minimum(700.0, self.div_rate * np.maximum(0.0, s - s_div) / law.s0_eff))
            val = np.where(div[:, None], val * blow, val)
        val = np.where(val > self.diverged_loss, np.inf, val)
        for i, v in zip(rows, val.min(axis=1).tolist(), strict=True):
            out[i] = v
        return out


# ---------------------------------------------------------------- helpers


def make_curve_source(spec: str) -> CurveSource:
    """"parametric" | "parametric:<seed>" | "recorded:<path>[,<path>...]" -> a CurveSource."""
    kind, _, arg = spec.partition(":")
    if kind == "parametric":
        try:
            return ParametricCurves(seed=int(arg) if arg else 0)
        except ValueError:
            raise ValueError(f"curve spec {spec!r}: seed must be an integer") from None
    if kind == "recorded" and arg:
        from sim.recorded_curves import RecordedCurves, recorded_paths  # (it imports this module)

        return RecordedCurves(recorded_paths(spec))
    raise ValueError(f"curve spec {spec!r}: expected 'parametric[:seed]' or 'recorded:<path>[,<path>...]'")
