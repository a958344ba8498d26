"""Catalogue of base-model shapes known to ALTO (pure Python; no torch).

One source of truth for: the simulator's cost model (FLOPs per token), trace
validation (unknown model -> error), the trace converters (model from GPU count)
and the executor's `random:<arch>` models.

Shapes are the public HF configs of each model family.
"""

from __future__ import annotations

from dataclasses import dataclass

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class ModelShape:
    name: str
    family: str  # llama | qwen2 | mistral
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tie_embeddings: bool
    gpus: int  # GPUs (80-141 GB class) the frozen base + activations need for LoRA training

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each LoRA-targetable projection in one decoder layer."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return {
            "q": (h, h),
            "k": (h, kv),
            "v": (h, kv),
            "o": (h, h),
            "gate": (h, self.intermediate),
            "up": (h, self.intermediate),
            "down": (self.intermediate, h),
        }

    @property
    def params(self) -> int:
        """Parameter count (embeddings included once if tied)."""
        per_layer = sum(i * o for i, o in self.linear_shapes().values()) + 2 * self.hidden
        emb = self.vocab * self.hidden * (1 if self.tie_embeddings else 2)
        return self.layers * per_layer + emb + self.hidden

    def lora_params(self, rank: int, targets: tuple[str, ...] = LORA_TARGETS) -> int:
        """Trainable LoRA parameters of one adapter of this rank."""
        shapes = self.linear_shapes()
        return self.layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


MODELS: dict[str, ModelShape] = {
    m.name: m
    for m in [
        ModelShape("llama-tiny", "llama", 2, 64, 128, 4, 2, 260, False, 1),
        ModelShape("smollm2-135m", "llama", 30, 576, 1536, 9, 3, 49152, True, 1),
        ModelShape("llama-3.2-1b", "llama", 16, 2048, 8192, 32, 8, 128256, True, 1),
        ModelShape("llama-3.1-8b", "llama", 32, 4096, 14336, 32, 8, 128256, False, 1),
        ModelShape("qwen2.5-7b", "qwen2", 28, 3584, 18944, 28, 4, 152064, False, 1),
        ModelShape("mistral-7b", "mistral", 32, 4096, 14336, 32, 8, 32768, False, 1),
        ModelShape("qwen2.5-32b", "qwen2", 64, 5120, 27648, 40, 8, 152064, False, 2),
        ModelShape("llama-3.1-70b", "llama", 80, 8192, 28672, 64, 8, 128256, False, 4),
    ]
}

# Converters map a public trace's GPU demand to a model of that footprint.
MODEL_FOR_GPUS: dict[int, str] = {1: "llama-3.1-8b", 2: "qwen2.5-32b", 4: "llama-3.1-70b"}


class UnknownNameError(KeyError):
    """A name (model, GPU type, kernel) that the catalogue or a cost table does not hold; the
    message lists the known ones. `alto` reports it as a user error; any other KeyError is a
    bug and keeps its traceback."""


def get_model(name: str) -> ModelShape:
    """Look up a model; the UnknownNameError lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
