"""The configuration of omni-model training runs (SFT, OPPO, OmniOPSD): the decoder's sections plus the
omni towers, the data pipeline, the algorithm, rollouts and rewards."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_omni.algorithms.grpo import GRPOConfig
from megatron_omni.algorithms.opsd.config import OPSDConfig
from megatron_omni.config import Config, ConfigError
from megatron_omni.data.config import DataConfig
from megatron_omni.models.omni_config import OmniConfig, validate_omni
from megatron_omni.generation.generator import SamplingConfig


@dataclass
class DatasetConfig:
    train_manifest: str | None = None
    test_manifest: str | None = None
    tokenizer_dir: str | None = None
    # With no manifests given, generate the toy emotion set here and train on it.
    toy_dir: str = "data_toy"
    toy_num_clips: int = 64
    toy_seed: int = 0


@dataclass
class RewardConfig:
    wheel_dir: str | None = None  # MER emotion-wheel lexicon folder (format.csv, synonym.xlsx, wheel1-5.xlsx)
    weight_ew: float = 1.0
    weight_format: float = 0.1
    weight_perc: float = 0.3
    weight_coh: float = 0.3
    tau: float = 0.5
    embedding_model: str | None = None  # local sentence-transformers folder; null: all-MiniLM-L6-v2


@dataclass
class OPPOConfig:
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Omni-Perception loss: L_op = sign * gamma * (KL on visual + KL on audio evidence) + eta * entropy.
    perception_gamma: float = 5e-4
    perception_eta: float = 1e-4
    perception_sign: Literal["reward_divergence", "penalize_divergence"] = "reward_divergence"
    perception_loss: bool = True


@dataclass
class SFTConfig:
    # Share of the SFT samples whose prompt also carries their rationale
    # (data.prompt.privileged_template): the model learns to read a reference analysis, the view
    # OmniOPSD's teacher gets. A model that already uses in-context evidence needs none (0).
    privileged_fraction: float = 0.0


@dataclass
class EvaluationConfig:
    """Greedy answers on the held-out manifest, scored with the MER-style metrics."""

    at_start: bool = False  # before the first step (e.g. the SFT model an RL run starts from)
    at_end: bool = False
    max_new_tokens: int = 128
    max_samples: int | None = None


@dataclass
class OmniTrainConfig(Config):
    algorithm: Literal["sft", "oppo", "opsd"] = "sft"
    # Start from these weights (a converted Hugging Face model or an SFT run's save_dir); the
    # optimizer starts fresh. Resuming a stopped run uses train.save_dir / train.load_dir instead.
    init_from: str | None = None
    omni: OmniConfig = field(default_factory=OmniConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    oppo: OPPOConfig = field(default_factory=OPPOConfig)
    opsd: OPSDConfig = field(default_factory=OPSDConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def validate(self, world_size: int | None = None) -> "OmniTrainConfig":
        super().validate(world_size)
        validate_omni(self.model, self.omni)
        try:
            self.data.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        opsd_rewards = self.algorithm == "opsd" and self.opsd.grpo_weight > 0
        needs_lexicon = self.algorithm == "oppo" or opsd_rewards or self.evaluation.at_start or self.evaluation.at_end
        if needs_lexicon and self.reward.wheel_dir is None:
            raise ConfigError("reward.wheel_dir must name the MER emotion-wheel lexicon folder (OPPO rewards, "
                              "opsd.grpo_weight > 0, evaluation)")
        if self.algorithm in ("oppo", "opsd") and self.parallel.virtual_pipeline_model_parallel_size:
            raise ConfigError(f"{self.algorithm.upper()} rollouts do not support interleaved pipelines: "
                              "set parallel.virtual_pipeline_model_parallel_size=null")
        if self.algorithm == "opsd":
            validate_opsd(self.opsd)
        if not 0.0 <= self.sft.privileged_fraction <= 1.0:
            raise ConfigError(f"sft.privileged_fraction must be in [0, 1], got {self.sft.privileged_fraction}")
        return self


def validate_opsd(o: OPSDConfig) -> None:
    problems = []
    if o.teacher == "checkpoint" and not o.teacher_checkpoint:
        problems.append("opsd.teacher=checkpoint needs opsd.teacher_checkpoint (a Megatron checkpoint folder)")
    if o.teacher != "checkpoint" and (o.teacher_checkpoint or o.teacher_config):
        problems.append(f"opsd.teacher_checkpoint / teacher_config are read only with opsd.teacher=checkpoint (it is {o.teacher})")
    if not 0.0 <= o.ema_decay < 1.0:
        problems.append(f"opsd.ema_decay must be in [0, 1), got {o.ema_decay}")
    if not 0.0 <= o.loss.beta <= 1.0:
        problems.append(f"opsd.loss.beta must be in [0, 1], got {o.loss.beta}")
    if o.loss.temperature <= 0:
        problems.append(f"opsd.loss.temperature must be positive, got {o.loss.temperature}")
    if o.loss.top_k is not None and o.loss.top_k < 1:
        problems.append(f"opsd.loss.top_k must be >= 1 or null, got {o.loss.top_k}")
    if o.group_size < 1:
        problems.append(f"opsd.group_size must be >= 1, got {o.group_size}")
    if o.grpo_weight < 0:
        problems.append(f"opsd.grpo_weight must be >= 0, got {o.grpo_weight}")
    if o.grpo_weight > 0 and o.group_size < 2:
        problems.append("opsd.grpo_weight > 0 needs opsd.group_size >= 2 (GRPO advantages compare completions of a prompt)")
    if problems:
        raise ConfigError("; ".join(problems))
