"""Many LoRA adapters in one frozen HF causal LM (Llama / Qwen2 / Mistral).

Every targeted `nn.Linear` of the decoder layers becomes a `MultiLoraLinear`. The
modules hold no adapter state: they read the active adapters and their token
segments from one shared `LoraContext`, set before each forward. For a flattened
input `x: [T, d_in]` whose rows are adapter-major segments of `seg_lens[i]` tokens::

    y = x @ W^T (+ bias)                                  # one GEMM over all tokens
    y[s_i:e_i] += scale_i * (x[s_i:e_i] @ A_i^T) @ B_i^T   # A_i: [r_i, d_in], B_i: [d_out, r_i]

with scale_i = alpha_i / r_i. Ranks may differ per adapter (mixed-rank slots).
Adapter weights are fp32 master copies, cast to the activation dtype inside the
forward, so bf16 backbones train fp32 adapters (AdamW states in fp32 too).

Because adapter i's parameters only meet adapter i's tokens, and the frozen base
mixes nothing across rows (causal attention inside a row, per-token norms/MLPs),
the gradient of sum_i loss_i w.r.t. adapter i equals the gradient of loss_i alone:
one backward trains every adapter as if it ran alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from alto.executor.fused_layers import lora_saves, recompute_cheap_activations, set_fused_ops
from alto.executor.head_loss import head_cross_entropy
from alto.policy.memory import adapter_state_bytes
from alto.policy.types import JobConfig

# alto short names -> HF module names inside a decoder layer
HF_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
            "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


@functools.lru_cache(maxsize=256)
def rank_runs(ranks: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    """(first, end, rank) of each run of equal consecutive ranks: the runner orders segments
    by rank, so a step has as many runs as distinct ranks (3-4), not one per adapter."""
    runs, i0 = [], 0
    for i in range(1, len(ranks) + 1):
        if i == len(ranks) or ranks[i] != ranks[i0]:
            runs.append((i0, i, ranks[i0]))
            i0 = i
    return tuple(runs)


def rank_views(t: torch.Tensor, dim: int, ranks: tuple[int, ...]) -> list[torch.Tensor]:
    """Adapter i's block of a rank-padded stack t ([N, r_max, d] for dim 0, [N, d, r_max] for
    dim 1): t[i, :r_i] or t[i, :, :r_i]. One slice and one unbind per run of equal ranks,
    so the Python cost does not grow with N (the views themselves are made in C++)."""
    out: list[torch.Tensor] = []
    for i0, i1, r in rank_runs(ranks):
        out.extend((t[i0:i1, :r] if dim == 0 else t[i0:i1, :, :r]).unbind(0))
    return out


class _StackPadCast(torch.autograd.Function):
    """Per-adapter factors -> one rank-padded stack in ``dtype``, in two ops (fill + one
    foreach copy) whatever N is; backward hands factor i the slice of the stacked gradient it
    owns (in the factors' dtype). Replaces N stacks / pads / casts and their N backward nodes
    per module and step: the per-step host cost that dominated the executor (torch.profiler,
    1B, 32 adapters: 9,856 constant_pad_nd calls, ~0.6 s of a 1.0 s host step). The
    executor's adapters take `FactorTable` instead: one kernel per factor, not per adapter."""

    @staticmethod
    def forward(ctx, dim: int, r_max: int, dtype, *ws):
        n, other = len(ws), ws[0].shape[1 - dim]
        shape = (n, r_max, other) if dim == 0 else (n, other, r_max)
        ranks = tuple(w.shape[dim] for w in ws)
        alloc = torch.empty if min(ranks) == r_max else torch.zeros  # zero pads: exact product
        out = alloc(shape, dtype=dtype, device=ws[0].device)
        torch._foreach_copy_(rank_views(out, dim, ranks), list(ws))
        ctx.dim, ctx.ranks, ctx.src_dtype = dim, ranks, ws[0].dtype
        return out

    @staticmethod
    def backward(ctx, g):
        return (None, None, None, *rank_views(g.to(ctx.src_dtype), ctx.dim, ctx.ranks))


def stack_padded(ws: Sequence[torch.Tensor], dim: int, r_max: int, dtype) -> torch.Tensor:
    """Stack per-adapter LoRA factors, zero-padding the rank axis `dim` (0 for A [r_i, d_in],
    1 for B [d_out, r_i]) to r_max, cast to dtype: [N, r_max, d_in] or [N, d_out, r_max].
    Padded rows of A meet padded (zero) columns of B, so the product is exact and the padding
    gets no gradient. Differentiable; a constant number of ops in N (see _StackPadCast)."""
    return _StackPadCast.apply(dim, r_max, dtype, *ws)


def multi_lora_reference(x, weight, bias, lora_a, lora_b, seg_lens, scaling, loop: bool = False):
    """Pure-torch multi-adapter LoRA linear. x: [T, d_in]; lora_a[i]: [r_i, d_in];
    lora_b[i]: [d_out, r_i] (fp32 masters, cast to x.dtype here); seg_lens: ints summing
    to T; scaling: floats. Returns y: [T, d_out] in x.dtype.

    Equal segment lengths use two batched matmuls over zero-padded ranks; unequal
    lengths (or loop=True) loop over adapters (the eager "per-adapter loop" baseline).
    """
    y = F.linear(x, weight, bias)
    n = len(seg_lens)
    if n == 0:
        return y
    if n > 1 and not loop and len(set(seg_lens)) == 1:
        r_max = max(a.shape[0] for a in lora_a)
        a = stack_padded(lora_a, 0, r_max, x.dtype)  # [N, r, d_in]
        b = stack_padded(lora_b, 1, r_max, x.dtype)  # [N, d_out, r]
        s = torch.tensor(scaling, dtype=x.dtype, device=x.device).view(n, 1, 1)
        xs = x.view(n, seg_lens[0], x.shape[1])  # [N, n_i, d_in]
        delta = torch.bmm(torch.bmm(xs, a.transpose(1, 2)) * s, b.transpose(1, 2))  # [N, n_i, d_out]
        return y + delta.reshape(y.shape)
    outs, start = [], 0
    for a, b, s, m in zip(lora_a, lora_b, scaling, seg_lens, strict=False):
        outs.append(F.linear(F.linear(x[start:start + m], a.to(x.dtype)), b.to(x.dtype)) * s)
        start += m
    return y + torch.cat(outs)


def fused_available() -> bool:
    """kernels.fused_multi_lora importable (its Triton path runs on CUDA only)."""
    try:
        import kernels

        return hasattr(kernels, "fused_multi_lora")
    except Exception:
        return False


def lora_linear(x, weight, bias, lora_a, lora_b, seg_lens, scaling, impl: str = "reference", layout=None,
                stacked: tuple[torch.Tensor, torch.Tensor] | None = None):
    """The one switch between the reference and `kernels.fused_multi_lora` (Triton, GPU).
    impl: fused | reference (bmm when segments are equal, else loop) | loop (always loop).
    Same arguments as multi_lora_reference; layout: kernels.make_layout(...) of this step;
    stacked: the fused impl's rank-padded (A [N, r_max, d_in], B [N, d_out, r_max]) when the
    caller already has them (FactorTable.stacks), else they are stacked from the lists."""
    if impl == "fused":
        import kernels

        if stacked is not None:
            a, b = stacked
        else:
            r_max = max(a.shape[0] for a in lora_a)
            a = stack_padded(lora_a, 0, r_max, x.dtype)  # [N, r_max, d_in]
            b = stack_padded(lora_b, 1, r_max, x.dtype)  # [N, d_out, r_max]
        if layout is None:
            layout = kernels.make_layout(seg_lens, [w.shape[0] for w in lora_a], scaling)
        y = kernels.fused_multi_lora(x, weight, a, b, layout=layout)
        return y if bias is None else y + bias
    return multi_lora_reference(x, weight, bias, lora_a, lora_b, seg_lens, scaling, loop=impl == "loop")


def set_checkpointing(model: nn.Module, on: bool) -> None:
    """HF activation checkpointing (non-reentrant) on or off, through transformers' current
    method names when it has them (>= 5.2x renamed gradient_* to activation_*)."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def checkpointing_enabled(model: nn.Module) -> bool:
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def set_checkpoint_fraction(model: nn.Module, frac: float) -> list[int]:
    """Checkpoint only round(frac * L) of the L decoder layers, spread evenly (1.0 = all): the
    others keep their activations, so memory grows and recompute shrinks with 1 - frac.
    Returns the checkpointed layer indices. Needs HF's per-layer `gradient_checkpointing` flag."""
    layers = list(model.model.layers)
    k = round(frac * len(layers))
    chosen = {int(i * len(layers) / k) for i in range(k)} if k else set()
    for i, layer in enumerate(layers):
        if not hasattr(layer, "gradient_checkpointing"):
            raise ValueError("this transformers version has no per-layer gradient_checkpointing flag")
        layer.gradient_checkpointing = i in chosen
    return sorted(chosen)


def apply_checkpointing(model: nn.Module, setting: bool | float) -> list[int]:
    """Put `model` in the state of the config's `gradient_checkpointing` (false, true or a
    fraction of the layers); returns the checkpointed layer indices. Off also clears what an
    earlier task left on a reused backbone."""
    if not setting:
        if checkpointing_enabled(model):
            set_checkpointing(model, False)
        return []
    set_checkpointing(model, True)
    model.train()  # HF only checkpoints in train mode; the base has no dropout to enable
    return set_checkpoint_fraction(model, float(setting))


@dataclass
class LoraContext:
    """What every MultiLoraLinear reads during one forward: active adapters in segment
    order and their token counts (seg_lens[i] = rows_i * L)."""

    adapters: list = field(default_factory=list)
    seg_lens: list[int] = field(default_factory=list)
    impl: str = "reference"
    layout: object = None  # kernels.MultiLoraLayout of this step (fused impl only)
    factors: FactorTable | None = None  # where the adapters' buffers are (fused impl, kernels run)


class MultiLoraLinear(nn.Module):
    """A frozen nn.Linear plus the LoRA deltas of the context's active adapters."""

    def __init__(self, base: nn.Linear, name: str, ctx: LoraContext):
        super().__init__()
        self.base, self.name, self.ctx = base, name, ctx
        self.in_features, self.out_features = base.in_features, base.out_features

    @property
    def weight(self):  # HF code sometimes reads .weight (e.g. dtype checks)
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        if not ctx.adapters:
            return self.base(x)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # [T, d_in]
        if ctx.factors is not None:
            a = b = None
            stacked = ctx.factors.stacks(self.name, x.dtype)
        else:
            a = [ad.params[self.name][0] for ad in ctx.adapters]
            b = [ad.params[self.name][1] for ad in ctx.adapters]
            stacked = None
        with lora_saves():  # its saved input may be rebuilt in backward (fused_layers)
            y = lora_linear(x2, self.base.weight, self.base.bias, a, b, ctx.seg_lens,
                            [ad.scaling for ad in ctx.adapters], ctx.impl, ctx.layout, stacked)
        return y.view(*shape[:-1], self.out_features)


def grads_finite(adapters: list) -> torch.Tensor:
    """[N] bool, on the adapters' device: whether every gradient of adapter i is finite. One
    foreach max-abs norm over the adapters' flat gradient buffers (it cannot overflow, unlike
    the L2 norm of large finite gradients, and keeps inf and NaN): a handful of launches
    whatever N is. The caller reads the flags with the losses, which synchronises anyway."""
    norms = torch._foreach_norm([ad.flat_grad for ad in adapters], float("inf"))
    return torch.stack(norms).isfinite()


def factor_units(shapes: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """module -> (offset of A, offset of B) per unit of rank in an adapter's flat buffer,
    which holds the modules in ``shapes``' order, each as A [r, d_in] then B [d_out, r]:
    a rank-r adapter's A of a module starts at r * units[module][0] elements."""
    units, o = {}, 0
    for name, (d_in, d_out) in shapes.items():
        units[name] = (o, o + d_in)
        o += d_in + d_out
    return units


class Adapter:
    """One job's LoRA weights (fp32) on every targeted linear, plus its own AdamW.

    All of an adapter's factors are views of one flat fp32 parameter (``master``), and their
    gradients views of one flat gradient buffer (``flat_grad``, allocated once and zeroed
    between steps, never set to None). AdamW steps the one flat parameter, and the finite
    check and zeroing touch one tensor per adapter: per step, the host cost of an adapter
    no longer grows with the number of LoRA modules (2 per targeted linear per layer: 420
    tensors for SmolLM2-135M). Same update as AdamW over the separate factors: it is
    elementwise. ``params[name] = (A [r, d_in], B [d_out, r])``, leaf parameters, laid out
    as `factor_units` says (what `FactorTable` relies on)."""

    def __init__(self, job: JobConfig, shapes: dict[str, tuple[int, int]], device, seed: int,
                 weight_decay: float = 0.0):
        self.job, self.rank, self.alpha = job, job.rank, job.alpha
        self.scaling = job.alpha / job.rank
        r = job.rank
        self._shapes = {name: ((r, d_in), (d_out, r)) for name, (d_in, d_out) in shapes.items()}
        self._units = factor_units(shapes)
        total = sum(r * (d_in + d_out) for d_in, d_out in shapes.values())
        g = torch.Generator().manual_seed(seed)
        flat = torch.zeros(total)  # B's part stays zero: PEFT's default init
        for name, (d_in, _) in shapes.items():
            # PEFT's default init: kaiming-uniform A (a=sqrt 5), zero B
            bound = 1.0 / math.sqrt(d_in)
            o = r * self._units[name][0]
            flat[o:o + r * d_in].view(r, d_in).uniform_(-bound, bound, generator=g)
        self.master = nn.Parameter(flat.to(device))
        self.master.grad = torch.zeros_like(self.master)
        self.params: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
        self._bind_views()
        # fused=True on CUDA: one kernel per adapter step instead of ~10 foreach launches
        self._opt = torch.optim.AdamW([self.master], lr=job.lr, weight_decay=weight_decay,
                                      fused=torch.device(device).type == "cuda")

    @property
    def flat_grad(self) -> torch.Tensor:
        return self.master.grad

    def _bind_views(self) -> None:
        """(Re)make every factor and its gradient views of the flat buffers (after a move)."""
        flat, grad = self.master.data, self.master.grad
        for name, shapes in self._shapes.items():
            views = []
            for shape, unit in zip(shapes, self._units[name], strict=True):
                o, n = self.rank * unit, shape[0] * shape[1]
                w, gw = flat[o:o + n].view(shape), grad[o:o + n].view(shape)
                if name in self.params:
                    p = self.params[name][len(views)]
                    p.data = w
                else:
                    p = nn.Parameter(w)
                p.grad = gw
                views.append(p)
            self.params[name] = (views[0], views[1])

    def parameters(self) -> list[nn.Parameter]:
        return [p for ab in self.params.values() for p in ab]

    def step(self) -> None:
        """One AdamW step on the accumulated gradients."""
        self._opt.step()

    def zero_grad(self) -> None:
        self.master.grad.zero_()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """PEFT-style names -> detached CPU copies (for snapshots and export)."""
        out = {}
        for name, (a, b) in self.params.items():
            out[f"{name}.lora_A.weight"] = a.detach().to("cpu", copy=True)
            out[f"{name}.lora_B.weight"] = b.detach().to("cpu", copy=True)
        return out

    def load_state_tensors(self, sd: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, (a, b) in self.params.items():
                a.copy_(sd[f"{name}.lora_A.weight"])
                b.copy_(sd[f"{name}.lora_B.weight"])

    def to(self, device) -> None:
        """Move weights, gradients and AdamW state (pause offload / resume)."""
        m = self.master
        m.data, m.grad = m.data.to(device), m.grad.to(device)
        st = self._opt.state.get(m)
        if st:
            for k, v in st.items():
                if torch.is_tensor(v) and k != "step":
                    st[k] = v.to(device)
        self._bind_views()


class _GatherFactors(torch.autograd.Function):
    """One factor of every active adapter as the rank-padded stack fused_multi_lora takes;
    backward adds each adapter's block of the stack's gradient into its flat gradient
    buffer (kernels.factor_stack) instead of handing autograd N gradients. ``anchor`` is
    a tensor that requires grad, only so that the stack does (it gets no gradient)."""

    @staticmethod
    def forward(ctx, table: FactorTable, name: str, rank_dim: int, dtype, anchor):
        ctx.table, ctx.name, ctx.rank_dim = table, name, rank_dim
        return table.gather(name, rank_dim, dtype)

    @staticmethod
    def backward(ctx, g):
        ctx.table.scatter_add(g, ctx.name, ctx.rank_dim)
        return None, None, None, None, None


class FactorTable:
    """The active adapters' flat weight and gradient buffers, as device tables of their
    addresses: every LoRA module stacks its factors in one kernel each way, whatever the
    number of adapters (kernels.factor_stack). Built per step from live `Adapter`s, so
    the addresses stay valid for that step's forward and backward."""

    def __init__(self, adapters: Sequence[Adapter], device):
        # the buffers themselves are held until the table goes (the step's backward has run;
        # an adapter moved meanwhile keeps its old ones alive for a recompute's gather): the
        # kernels reach them only through the addresses
        self._adapters = list(adapters)
        self._held = [(a.master.data, a.flat_grad) for a in adapters]
        self._ptrs, self._checked = _buffer_addresses(self._adapters), False
        table = torch.tensor(self._ptrs, dtype=torch.int64).to(device, non_blocking=True)
        self.weights, self.grads = table[:len(adapters)], table[len(adapters):]
        self.ranks = torch.tensor([a.rank for a in adapters], dtype=torch.int32).to(device, non_blocking=True)
        self.r_max = max(a.rank for a in adapters)
        # module -> (d_in, d_out): the stack's width for A (rank_dim 0) and for B (rank_dim 1)
        self.units, self.widths = adapters[0]._units, {n: (a[1], b[0]) for n, (a, b) in adapters[0]._shapes.items()}
        self.anchor = adapters[0].master

    def stacks(self, name: str, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(A [N, r_max, d_in], B [N, d_out, r_max]) of module ``name`` in ``dtype``."""
        return (_GatherFactors.apply(self, name, 0, dtype, self.anchor),
                _GatherFactors.apply(self, name, 1, dtype, self.anchor))

    def gather(self, name: str, rank_dim: int, dtype) -> torch.Tensor:
        from kernels.factor_stack import gather_factors

        return gather_factors(self.weights, self.ranks, self.units[name][rank_dim], self.widths[name][rank_dim],
                              self.r_max, rank_dim, dtype)

    def scatter_add(self, g: torch.Tensor, name: str, rank_dim: int) -> None:
        from kernels.factor_stack import scatter_add_factors

        self.check_unmoved()
        scatter_add_factors(g, self.grads, self.ranks, self.units[name][rank_dim], rank_dim)

    def check_unmoved(self) -> None:
        """RuntimeError if an adapter's buffers moved since the table was built (Adapter.to
        between forward and backward): its gradient would land in the old buffer. Checked at
        the first scatter only: once backward runs, no caller code runs until it ends."""
        if self._checked:
            return
        self._checked = True
        if _buffer_addresses(self._adapters) != self._ptrs:
            raise RuntimeError("an adapter's weights or gradients moved between this step's forward "
                               "and backward (Adapter.to); its gradient would be lost")


def _buffer_addresses(adapters: Sequence[Adapter]) -> list[int]:
    """The adapters' flat weight addresses, then their flat gradient addresses."""
    return [a.master.data_ptr() for a in adapters] + [a.flat_grad.data_ptr() for a in adapters]


class MultiLoraModel:
    """An HF causal LM with MultiLoraLinear injected; computes per-adapter losses."""

    def __init__(self, model: nn.Module, targets: Sequence[str], impl: str = "reference",
                 gradient_checkpointing: bool | float = False, loss_chunk_tokens: int = 4096,
                 fused_ops: bool = True):
        # LoRA trains the adapters only. A backbone whose weights still require grad (a bare
        # from_config model) would also get embedding, norm and lm_head weight gradients every
        # step: extra GEMMs and memory, and the fused norm / head paths would not apply.
        model.requires_grad_(False)
        self.model, self.ctx = model, LoraContext(impl=impl)
        self.fused_ops = fused_ops
        self.loss_chunk_tokens = loss_chunk_tokens
        self.shapes: dict[str, tuple[int, int]] = {}
        wanted = {HF_NAMES[t] for t in targets}
        for name, mod in list(model.named_modules()):
            leaf = name.rsplit(".", 1)[-1]
            if leaf in wanted and isinstance(mod, nn.Linear) and ".layers." in f".{name}":
                parent = model.get_submodule(name.rsplit(".", 1)[0])
                setattr(parent, leaf, MultiLoraLinear(mod, name, self.ctx))
                self.shapes[name] = (mod.in_features, mod.out_features)
        if not self.shapes:
            raise ValueError("no LoRA target modules found in the model")
        self.target_names = sorted(wanted)
        # LoRA parameters per unit of rank (sum of d_in + d_out over the targets): admission
        # asks adapter_state_bytes for every candidate set, so it is summed once here
        self._params_per_rank = sum(d_in + d_out for d_in, d_out in self.shapes.values())
        self.checkpointed_layers = apply_checkpointing(model, gradient_checkpointing)
        self.use_impl(impl)

    def use_impl(self, impl: str) -> None:
        """LoRA implementation of the next steps (fused | reference | loop). The backbone's fused
        RMSNorm / SwiGLU kernels (alto.executor.fused_layers) follow it: on with "fused" when
        this model was built with fused_ops=True, HF's eager forwards otherwise."""
        self.ctx.impl = impl
        self.fused_op_counts = set_fused_ops(self.model, self.fused_ops and impl == "fused")

    @property
    def device(self):
        return next(self.model.parameters()).device

    def adapter_state_bytes(self, rank: int) -> int:
        """Device bytes of one adapter of this rank while it trains: fp32 A and B on every
        target module, their gradients and AdamW's two moments (16 bytes per parameter)."""
        return adapter_state_bytes(rank * self._params_per_rank)

    def new_adapter(self, job: JobConfig, seed: int, weight_decay: float = 0.0) -> Adapter:
        return Adapter(job, self.shapes, self.device, seed, weight_decay)

    def per_adapter_loss(self, adapters: Sequence[Adapter], inputs: torch.Tensor, targets: torch.Tensor,
                         mask: torch.Tensor, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean completion-token loss per adapter. inputs/targets/mask: [R, L]; rows[i]:
        rows of adapter i (contiguous, in order). Returns (loss [N] fp32, tokens [N])."""
        sums, counts = self.loss_sums(adapters, inputs, targets, mask, rows)
        return sums / counts.clamp(min=1), counts

    def loss_sums(self, adapters: Sequence[Adapter], inputs: torch.Tensor, targets: torch.Tensor,
                  mask: torch.Tensor, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of completion-token losses [N] fp32, scored tokens [N]) per adapter; arguments
        as per_adapter_loss. The LoRA context stays set until clear()."""
        R, L = inputs.shape
        if len(adapters) != len(rows) or sum(rows) != R:
            raise ValueError(f"{len(adapters)} adapters, rows {list(rows)} (sum must be R={R})")
        # the context stays set until clear(): checkpointed layers recompute in backward
        self.ctx.adapters, self.ctx.seg_lens = list(adapters), [r * L for r in rows]
        self.ctx.factors = None  # (a table left by an aborted step must not serve this one)
        if self.ctx.impl == "fused":
            import kernels

            self.ctx.layout = kernels.make_layout(self.ctx.seg_lens, [a.rank for a in adapters],
                                                  [a.scaling for a in adapters], device=inputs.device)
            from kernels.multi_lora_triton import kernels_take

            if kernels_take(inputs, 0):  # CUDA, or CPU under TRITON_INTERPRET
                self.ctx.factors = FactorTable(adapters, inputs.device)
        with recompute_cheap_activations(any(self.fused_op_counts.values())):
            h = self.model.model(input_ids=inputs, use_cache=False).last_hidden_state  # [R, L, d]
        owner = torch.repeat_interleave(torch.arange(len(rows), device=inputs.device),
                                        torch.tensor(list(rows), device=inputs.device) * L)  # [R*L]
        sel = mask.reshape(-1).nonzero().squeeze(1)  # scored token positions
        hs, tg, own = h.reshape(R * L, -1)[sel], targets.reshape(-1)[sel], owner[sel]
        tok_loss = self._token_losses(hs, tg)  # [n_scored] fp32
        n = len(rows)
        sums = torch.zeros(n, device=h.device, dtype=torch.float32).index_add(0, own, tok_loss)
        counts = torch.bincount(own, minlength=n).to(torch.float32)
        return sums, counts

    def clear(self) -> None:
        """Forget the active adapters (after backward, or after an aborted step)."""
        self.ctx.adapters, self.ctx.seg_lens, self.ctx.layout, self.ctx.factors = [], [], None, None

    def remove(self) -> None:
        """Put the plain base linears and HF's eager norms / MLPs back (before injecting
        another task's targets)."""
        set_fused_ops(self.model, False)
        for name, mod in list(self.model.named_modules()):
            if isinstance(mod, MultiLoraLinear):
                parent = self.model.get_submodule(name.rsplit(".", 1)[0])
                setattr(parent, name.rsplit(".", 1)[-1], mod.base)

    def _token_losses(self, hs: torch.Tensor, tg: torch.Tensor) -> torch.Tensor:
        """Cross-entropy per scored token, lm_head applied in chunks (fp32 logits of all
        tokens at once would not fit for 128k vocabularies). A frozen bias-free head (Llama,
        Qwen2, Mistral) goes through head_cross_entropy (gradient computed in the forward);
        otherwise chunks are checkpointed and recomputed in backward."""
        head = self.model.get_output_embeddings()
        c = self.loss_chunk_tokens
        if getattr(head, "bias", None) is None and not head.weight.requires_grad:
            return head_cross_entropy(hs, head.weight, tg, c)

        def chunk_loss(h, t):
            return F.cross_entropy(head(h).float(), t, reduction="none")

        out = []
        for s in range(0, hs.shape[0], c):
            h, t = hs[s:s + c], tg[s:s + c]
            out.append(checkpoint(chunk_loss, h, t, use_reentrant=False) if torch.is_grad_enabled() else chunk_loss(h, t))
        return torch.cat(out) if out else hs.new_zeros(0, dtype=torch.float32)
