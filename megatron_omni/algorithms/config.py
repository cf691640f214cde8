"""The ``sft`` and ``oppo`` sections of a run config (OmniOPSD's ``opsd`` is in opsd/config.py), and
what the RL algorithms read of a run's config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from megatron_omni.algorithms.grpo import GRPOConfig
from megatron_omni.algorithms.opsd.config import OPSDConfig
from megatron_omni.config import ConfigError
from megatron_omni.data.config import DataConfig
from megatron_omni.generation.generator import SamplingConfig
from megatron_omni.models.config import ModelConfig
from megatron_omni.models.omni_config import OmniConfig
from megatron_omni.training.config import TrainConfig


@dataclass
class SFTConfig:
    # Share of the SFT samples whose prompt also carries their rationale
    # (data.prompt.privileged_template): the model learns to read a reference analysis, the view
    # OmniOPSD's teacher gets. A model that already uses in-context evidence needs none (0).
    privileged_fraction: float = 0.0

    def validate(self, key: str) -> None:
        if not 0.0 <= self.privileged_fraction <= 1.0:
            raise ConfigError(f"{key}.privileged_fraction must be in [0, 1], got {self.privileged_fraction}")


@dataclass
class OPPOConfig:
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Omni-Perception loss: L_op = sign * gamma * (KL on visual + KL on audio evidence) + eta * entropy.
    perception_gamma: float = 5e-4
    perception_eta: float = 1e-4
    perception_sign: Literal["reward_divergence", "penalize_divergence"] = "reward_divergence"
    perception_loss: bool = True
    # Keep the frozen reference's weights on the CPU between its scoring forwards (moved to the
    # step device for them): its weights leave the GPU during rollouts and training, at the cost
    # of two host-device copies of them per step.
    offload_reference: bool = False

    def validate(self, key: str) -> None:
        for name in ("perception_gamma", "perception_eta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name} must be >= 0 (perception_sign sets the direction), got {getattr(self, name)}")
        g = self.grpo
        if g.overlong == "penalty" and g.overlong_buffer >= self.sampling.max_new_tokens:
            raise ConfigError(f"{key}.grpo.overlong_buffer ({g.overlong_buffer}) must be smaller than "
                              f"{key}.sampling.max_new_tokens ({self.sampling.max_new_tokens}): the penalty ramps up over "
                              f"the last overlong_buffer tokens of the completion budget")
        if self.offload_reference and not self.grpo.kl_beta:
            raise ConfigError(f"{key}.offload_reference=true needs a reference model, which exists only with "
                              f"{key}.grpo.kl_beta > 0 (it is 0)")


def check_oppo_run(cfg, world_size: int | None) -> None:
    """OPPO's rules across sections: every mini-batch holds whole micro-batches on every
    data-parallel rank (the same schedule everywhere)."""
    t, g = cfg.train, cfg.oppo.grpo
    p = cfg.parallel
    dp = world_size // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size) if world_size else 1
    micro_batches = t.global_batch_size // (t.micro_batch_size * dp)
    if micro_batches % g.mini_batches:
        raise ConfigError(
            f"oppo.grpo.mini_batches ({g.mini_batches}) must divide the micro-batches of a step on each data-parallel "
            f"rank: train.global_batch_size ({t.global_batch_size}) / (train.micro_batch_size ({t.micro_batch_size}) x "
            f"data-parallel size ({dp})) = {micro_batches}"
        )


class RLRunSections(Protocol):
    """The sections OPPO and OmniOPSD read (an omni run config has them all)."""

    model: ModelConfig
    omni: OmniConfig
    data: DataConfig
    train: TrainConfig
    oppo: OPPOConfig
    opsd: OPSDConfig
