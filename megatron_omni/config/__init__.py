"""Typed run configuration: dataclasses loaded from YAML with dotted command-line overrides.

    cfg = load_config("examples/configs/toy_decoder.yaml", ["parallel.tensor_model_parallel_size=2"])

Every key is checked against the dataclasses (unknown keys and wrong types are errors naming the
dotted key) and `validate()` checks the cross-field rules once, before any process group exists.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


@dataclass
class ModelConfig:
    """The Qwen2.5 language decoder (the defaults are a tiny model for CPU runs)."""

    vocab_size: int = 512
    hidden_size: int = 64
    ffn_hidden_size: int = 128
    num_layers: int = 4
    num_attention_heads: int = 4
    num_query_groups: int = 2
    rotary_base: float = 1_000_000.0
    # 3-D multimodal RoPE (temporal, height, width) sections of head_dim / 2; null means 1-D RoPE.
    mrope_section: list[int] | None = field(default_factory=lambda: [2, 3, 3])
    tie_word_embeddings: bool = True
    add_qkv_bias: bool = True
    norm_epsilon: float = 1e-6
    max_position_embeddings: int = 4096
    # Vocabulary rows are padded to a multiple of this times TP, as megatron does.
    make_vocab_size_divisible_by: int = 128
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False


@dataclass
class PrecisionConfig:
    params_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    # "e4m3" or "hybrid" (E4M3 forward, E5M2 backward); needs Transformer Engine on CUDA.
    fp8: Literal["e4m3", "hybrid"] | None = None
    fp8_recipe: Literal["delayed", "tensorwise"] = "delayed"
    # Build layers from the Transformer Engine spec when it is importable and CUDA is present.
    transformer_engine: bool = True


@dataclass
class OptimizerConfig:
    lr: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    lr_warmup_steps: int = 0
    lr_decay_style: Literal["constant", "linear", "cosine"] = "cosine"


@dataclass
class TrainConfig:
    steps: int = 40
    micro_batch_size: int = 4
    global_batch_size: int = 8
    seq_length: int = 64
    seed: int = 1234
    log_interval: int = 1
    save_interval: int = 0  # 0: only at the end
    save_dir: str | None = None
    load_dir: str | None = None  # resume from this folder's latest checkpoint
    # Stop this run (after a checkpoint) once this step is reached; the LR schedule still spans
    # train.steps, so a later run continues exactly. For time-limited jobs.
    exit_at_step: int | None = None
    keep_last_checkpoints: int | None = None  # older complete checkpoints are deleted; null keeps all
    # Steps whose loss or gradients are not finite are skipped and counted; this many in a row
    # stops the run (after a checkpoint of the last good state). 0: never stop.
    max_nonfinite_in_a_row: int = 3


@dataclass
class LoggingConfig:
    metrics_jsonl: bool = True
    tensorboard: bool = True
    progress_bar: bool = True
    # Weights & Biases (rank 0): null project = off. Needs the wandb package.
    wandb_project: str | None = None
    wandb_entity: str | None = None  # team or user; null: the account's default
    wandb_run_name: str | None = None  # null: the name of output_dir's folder
    # offline: everything is written locally (no login, no network); upload later with
    # `wandb sync <wandb_dir>/wandb/offline-run-<time>-<id>` (a resumed run's later folders with
    # --append). online: streams to the server (needs `wandb login`).
    wandb_mode: Literal["online", "offline"] = "offline"
    wandb_dir: str | None = None  # W&B writes its wandb/ folder here; null: output_dir


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    output_dir: str = "runs/default"

    def validate(self, world_size: int | None = None) -> "Config":
        validate(self, world_size)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- loading


def _convert(value, tp, key: str):
    """Check and convert one YAML value to the annotated type ``tp``; errors name ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads 1e-5 (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got str {value!r}") from None
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]} (known keys of {prefix or 'the config'}: {sorted(names)})"
        )
    kwargs = {
        name: _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, object]:
    """``a.b=value`` with the value parsed as YAML (so 2, 1e-5, true, null, [2, 3, 3] all work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls=Config):
    """Load ``cls`` from a YAML file (or its defaults) and apply dotted overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for text in overrides or []:
        _set_dotted(data, *parse_override(text))
    try:
        return _build(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None


# ----------------------------------------------------------------------------- validation


def transformer_engine_available() -> bool:
    """TE imports and CUDA is present. A broken TE raises RuntimeError/OSError, not ImportError."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        return False
    return True


def wandb_available() -> bool:
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


def validate(cfg: Config, world_size: int | None = None) -> None:
    """Cross-field rules, checked once at start. Messages are part of the documented interface."""
    m, p = cfg.model, cfg.parallel
    tp, pp, vpp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size
    if m.hidden_size % m.num_attention_heads:
        raise ConfigError(
            f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_attention_heads ({m.num_attention_heads})"
        )
    if m.num_attention_heads % m.num_query_groups:
        raise ConfigError(
            f"model.num_attention_heads ({m.num_attention_heads}) must be divisible by "
            f"model.num_query_groups ({m.num_query_groups})"
        )
    if m.num_attention_heads % tp or m.num_query_groups % tp:
        raise ConfigError(
            f"parallel.tensor_model_parallel_size ({tp}) must divide model.num_attention_heads "
            f"({m.num_attention_heads}) and model.num_query_groups ({m.num_query_groups})"
        )
    if m.ffn_hidden_size % tp:
        raise ConfigError(f"parallel.tensor_model_parallel_size ({tp}) must divide model.ffn_hidden_size ({m.ffn_hidden_size})")
    stages = pp * (vpp or 1)
    if m.num_layers % stages:
        what = f"pipeline_model_parallel_size ({pp})" + (f" x virtual_pipeline_model_parallel_size ({vpp})" if vpp else "")
        raise ConfigError(f"parallel.{what} must divide model.num_layers ({m.num_layers})")
    if vpp is not None and pp < 2:
        raise ConfigError("parallel.virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size >= 2")
    if p.sequence_parallel and tp < 2:
        raise ConfigError("parallel.sequence_parallel needs tensor_model_parallel_size >= 2")
    if p.sequence_parallel and not (cfg.precision.transformer_engine and transformer_engine_available()):
        # megatron-core's plain-torch layer spec refuses sequence parallelism.
        raise ConfigError("parallel.sequence_parallel needs the Transformer Engine layer spec (CUDA with Transformer Engine)")
    if m.mrope_section is not None and sum(m.mrope_section) * 2 != m.head_dim:
        raise ConfigError(
            f"model.mrope_section {m.mrope_section} must sum to head_dim / 2 = {m.head_dim // 2}"
        )
    if cfg.precision.fp8 is not None and not transformer_engine_available():
        raise ConfigError(
            f"precision.fp8={cfg.precision.fp8!r} needs Transformer Engine on a CUDA machine "
            "(pip install --no-build-isolation -r requirements-gpu.txt); set precision.fp8=null on CPU"
        )
    if cfg.logging.wandb_project is not None and not wandb_available():
        raise ConfigError(
            f"logging.wandb_project={cfg.logging.wandb_project!r} needs the wandb package, which is not importable "
            "(pip install wandb, pinned in requirements.txt); set logging.wandb_project=null to log without W&B"
        )
    t = cfg.train
    if cfg.optimizer.lr_warmup_steps >= t.steps:
        raise ConfigError(
            f"optimizer.lr_warmup_steps ({cfg.optimizer.lr_warmup_steps}) must be smaller than train.steps ({t.steps})"
        )
    if t.global_batch_size % t.micro_batch_size:
        raise ConfigError(
            f"train.global_batch_size ({t.global_batch_size}) must be a multiple of train.micro_batch_size ({t.micro_batch_size})"
        )
    if world_size is not None:
        if world_size % (tp * pp):
            raise ConfigError(f"world size {world_size} is not divisible by TP ({tp}) x PP ({pp})")
        dp = world_size // (tp * pp)
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise ConfigError(
                f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
                f"micro_batch_size ({t.micro_batch_size}) x data-parallel size ({dp})"
            )
