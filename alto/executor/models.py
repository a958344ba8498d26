"""Backbones for the executor: local HF folders, GGUF files, and random-init shapes.

- `path: DIR` loads an HF checkpoint folder (config.json + safetensors).
- `path: FILE.gguf` loads through transformers' `gguf_file=` (needs package `gguf`;
  quantized GGUF tensors are dequantized to `dtype`).
- `path: random:<arch>` builds the `alto.models` shape (llama-tiny for tests) with
  seeded random weights and the byte tokenizer (unless `tokenizer:` names one).

The base is frozen (requires_grad False) and put in eval mode (no dropout).
"""

from __future__ import annotations

from pathlib import Path

import torch

from alto.executor.config import Config, ModelCfg, local_or_hub, resolve
from alto.executor.data import ByteTokenizer, HFTokenizer
from alto.models import ModelShape, get_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def hf_config_for(shape: ModelShape):
    """The transformers config of a catalogue shape (Llama / Qwen2 / Mistral)."""
    import transformers as tf

    common = dict(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, tie_word_embeddings=shape.tie_embeddings,
        max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=256, eos_token_id=257,
        pad_token_id=258 if shape.vocab > 258 else None,
    )
    if shape.family == "llama":
        return tf.LlamaConfig(**common, rope_theta=500000.0)
    if shape.family == "qwen2":
        return tf.Qwen2Config(**common, rope_theta=1000000.0)
    return tf.MistralConfig(**common, rope_theta=10000.0, sliding_window=None)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


INIT_ON_DEVICE_ABOVE = 2e8  # parameters: larger random models are initialised on the device itself


def random_model(arch: str, dtype: torch.dtype, device: torch.device, seed: int):
    """Random-init causal LM of a catalogue shape; deterministic for a given seed (initialised
    on the CPU up to INIT_ON_DEVICE_ABOVE parameters, so the same on any device there)."""
    import transformers as tf

    hf_cfg = hf_config_for(get_model(arch))
    hf_cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    big = get_model(arch).params > INIT_ON_DEVICE_ABOVE
    with torch.device(device if big else "cpu"):  # big shapes: init straight on the GPU
        model = tf.AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    return model.to(device)


def load_backbone(cfg: Config):
    """(frozen model, tokenizer, device) as the config asks."""
    import transformers as tf

    m = cfg.model
    dtype, device = DTYPES[m.dtype], resolve_device(m.device)
    if m.is_random:
        model = random_model(m.path.split(":", 1)[1], dtype, device, m.seed)
        tok = ByteTokenizer()
    else:
        p = resolve(cfg, m.path)
        kw = dict(dtype=dtype, attn_implementation="sdpa")
        if p.suffix == ".gguf":
            model = tf.AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, **kw)
            tok = HFTokenizer(tf.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name))
        else:
            model = tf.AutoModelForCausalLM.from_pretrained(str(p), **kw)
            tok = HFTokenizer(tf.AutoTokenizer.from_pretrained(str(p)))
        model = model.to(device)
    if m.tokenizer:
        tok = HFTokenizer(tf.AutoTokenizer.from_pretrained(local_or_hub(cfg, m.tokenizer)))
    model.requires_grad_(False)
    model.eval()
    return model, tok, device


# A random base below this many parameters is saved whole in DIR/base_model/ (< 200 MB in
# float32); a larger one would cost GBs per run for weights that random_model rebuilds.
SAVE_WEIGHTS_BELOW = 5e7

_REBUILD = """# base_model/: the config of {path}, not its weights

The adapters in ../adapters/ were trained on {path} with random weights ({millions:,.0f}M
parameters). Random bases of {limit:.0f}M parameters or more are not saved, so
`AutoModelForCausalLM.from_pretrained("base_model")` fails here, and `from_config` on this
config draws other weights: the adapters would load onto them but mean nothing there.
Rebuild the run's base instead (its init is seeded, and exact on any device up to {on_device:.0f}M
parameters; above, it runs on the device: use the same kind of GPU and torch version):

    import torch
    from peft import PeftModel
    from alto.executor.models import random_model

    base = {call}
    model = PeftModel.from_pretrained(base, "DIR/adapters/<task>__<config>")
"""


def save_base_model(model, out_dir: Path, m: ModelCfg, device: torch.device) -> str:
    """DIR/base_model/ of a `random:` model: the HF config, and the weights below
    SAVE_WEIGHTS_BELOW parameters, so that `PeftModel.from_pretrained(AutoModelForCausalLM.
    from_pretrained(DIR/base_model), ...)` reproduces the executor's base exactly. A larger base
    gets a README.md instead of weights, saying how to rebuild them (random_model, same seed).
    Returns the line the run prints about that ("" when the weights are saved)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = sum(p.numel() for p in model.parameters())
    if n < SAVE_WEIGHTS_BELOW:
        model.save_pretrained(str(out_dir))
        return ""
    model.config.save_pretrained(str(out_dir))
    call = (f"random_model({m.path.split(':', 1)[1]!r}, torch.{m.dtype}, torch.device({device.type!r}), "
            f"seed={m.seed})")
    (out_dir / "README.md").write_text(_REBUILD.format(path=m.path, millions=n / 1e6,
                                                       limit=SAVE_WEIGHTS_BELOW / 1e6, call=call,
                                                       on_device=INIT_ON_DEVICE_ABOVE / 1e6))
    return (f"note: {m.path} has {n / 1e6:,.0f}M parameters, so its random weights are not saved (only "
            f"its config): load the adapters onto alto.executor.models.{call}, not from_pretrained"
            f"({out_dir}) (see {out_dir / 'README.md'})")
