"""The training loop's sections of a run config (``optimizer``, ``train``, ``logging``) and
`RunConfig`, the configuration of a decoder run that every run configuration extends."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from megatron_omni.config import ConfigError, load_config, validate_sections
from megatron_omni.models.config import (
    ModelConfig,
    PrecisionConfig,
    RecomputeConfig,
    check_recompute,
    transformer_engine_available,
)
from megatron_omni.parallel.config import ParallelConfig


def wandb_available() -> bool:
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


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

    def validate(self, key: str) -> None:
        if self.lr < 0:
            raise ConfigError(f"{key}.lr must be >= 0, got {self.lr}")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ConfigError(f"{key}.min_lr ({self.min_lr}) must lie in [0, {key}.lr ({self.lr})]")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{key}.{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.adam_eps <= 0:
            raise ConfigError(f"{key}.adam_eps must be positive, got {self.adam_eps}")
        for name in ("weight_decay", "clip_grad", "lr_warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name} must be >= 0, got {getattr(self, name)}")


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

    def validate(self, key: str) -> None:
        for name in ("steps", "micro_batch_size", "global_batch_size", "seq_length", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_interval", "max_nonfinite_in_a_row"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("exit_at_step", "keep_last_checkpoints"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1 or null, got {getattr(self, name)}")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(f"{key}.global_batch_size ({self.global_batch_size}) must be a multiple of "
                              f"{key}.micro_batch_size ({self.micro_batch_size})")


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

    def validate(self, key: str) -> None:
        if self.wandb_project is not None and not wandb_available():
            raise ConfigError(
                f"{key}.wandb_project={self.wandb_project!r} needs the wandb package, which is not importable "
                f"(pip install wandb, pinned in requirements.txt); set {key}.wandb_project=null to log without W&B"
            )


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    output_dir: str = "runs/default"

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None):
        """This run configuration from a YAML file (or the defaults) with dotted overrides."""
        return load_config(path, overrides, cls=cls)

    def validate(self, world_size: int | None = None):
        """Every section's own rules, then the rules between sections; checked once at start,
        before megatron's parallel groups exist. Messages are part of the documented interface."""
        validate_sections(self)
        self.check_across_sections(world_size)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def optimizer_steps_per_batch(self) -> int:
        """Optimizer steps (LR-schedule ticks) per train step: 1, except RL mini-batches (runs/config.py)."""
        return 1

    def check_across_sections(self, world_size: int | None) -> None:
        m, p, t = self.model, self.parallel, self.train
        tp, pp, vpp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size
        if m.num_attention_heads % tp or m.num_query_groups % tp:
            raise ConfigError(
                f"parallel.tensor_model_parallel_size ({tp}) must divide model.num_attention_heads "
                f"({m.num_attention_heads}) and model.num_query_groups ({m.num_query_groups})"
            )
        if m.ffn_hidden_size % tp:
            raise ConfigError(
                f"parallel.tensor_model_parallel_size ({tp}) must divide model.ffn_hidden_size ({m.ffn_hidden_size})"
            )
        check_experts(m, p)
        if m.num_layers % (pp * (vpp or 1)):
            what = f"pipeline_model_parallel_size ({pp})" + (f" x virtual_pipeline_model_parallel_size ({vpp})" if vpp else "")
            raise ConfigError(f"parallel.{what} must divide model.num_layers ({m.num_layers})")
        check_recompute(self.recompute, m.num_layers // (pp * (vpp or 1)))
        if p.sequence_parallel and not (self.precision.transformer_engine and transformer_engine_available()):
            # megatron-core's plain-torch layer spec refuses sequence parallelism.
            raise ConfigError("parallel.sequence_parallel needs the Transformer Engine layer spec (CUDA with Transformer Engine)")
        per_batch = self.optimizer_steps_per_batch()
        if self.optimizer.lr_warmup_steps >= t.steps * per_batch:
            of = f"train.steps ({t.steps})" + (f" x {per_batch} optimizer steps per batch" if per_batch > 1 else "")
            raise ConfigError(f"optimizer.lr_warmup_steps ({self.optimizer.lr_warmup_steps}) must be smaller than {of}")
        if world_size is None:
            return
        if world_size % (tp * pp):
            raise ConfigError(f"world size {world_size} is not divisible by TP ({tp}) x PP ({pp})")
        ep = p.expert_model_parallel_size
        if world_size % (tp * pp * ep):
            raise ConfigError(f"world size {world_size} is not divisible by TP ({tp}) x PP ({pp}) x "
                              f"parallel.expert_model_parallel_size ({ep}): the experts split within a stage's "
                              f"{world_size // (tp * pp)} data-parallel ranks")
        dp = world_size // (tp * pp)
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise ConfigError(
                f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
                f"micro_batch_size ({t.micro_batch_size}) x data-parallel size ({dp})"
            )


def check_experts(m: ModelConfig, p: ParallelConfig) -> None:
    """The rules between the experts and the layout (megatron's MoE layer: expert TP = TP)."""
    tp, ep = p.tensor_model_parallel_size, p.expert_model_parallel_size
    if m.num_moe_experts is None:
        if ep > 1:
            raise ConfigError(f"parallel.expert_model_parallel_size ({ep}) needs a MoE decoder "
                              f"(model.family=qwen3_omni_moe); model.family is {m.family}")
        return
    if m.num_moe_experts % ep:
        raise ConfigError(f"parallel.expert_model_parallel_size ({ep}) must divide model.num_moe_experts ({m.num_moe_experts})")
    if m.moe_ffn_hidden_size % tp:
        raise ConfigError(f"parallel.tensor_model_parallel_size ({tp}) must divide model.moe_ffn_hidden_size "
                          f"({m.moe_ffn_hidden_size})")
    if tp > 1 and not p.sequence_parallel:
        # megatron-core's MoE layer refuses to train at TP > 1 without sequence parallelism.
        raise ConfigError(f"parallel.tensor_model_parallel_size ({tp}) with a MoE decoder needs parallel.sequence_parallel"
                          " (megatron's MoE layer trains at TP > 1 only with it; on CPU use EP and PP instead)")
