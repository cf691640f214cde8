"""OmniOPSD options (the ``opsd`` section of a training config)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_omni.algorithms.grpo import PolicyLossConfig
from megatron_omni.config import ConfigError
from megatron_omni.generation.generator import SamplingConfig


@dataclass
class DistillationLossConfig:
    # "reverse" KL(student || teacher) (mode seeking, the on-policy default), "forward"
    # KL(teacher || student), or "jsd": generalised JSD with `beta` (the teacher's weight).
    divergence: Literal["reverse", "forward", "jsd"] = "reverse"
    beta: float = 0.5
    # Both distributions are softened by it; no T^2 factor is applied.
    temperature: float = 1.0
    # null: the full vocabulary; k: the teacher's top-k tokens plus one tail bucket.
    top_k: int | None = None

    def validate(self, key: str) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"{key}.beta must be in [0, 1], got {self.beta}")
        if self.temperature <= 0:
            raise ConfigError(f"{key}.temperature must be positive, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"{key}.top_k must be >= 1 or null, got {self.top_k}")


@dataclass
class OPSDConfig:
    # Where the teacher's weights come from: "initial" = the frozen starting policy, "ema" = an
    # exponential moving average of the student, "student" = the student itself under no_grad,
    # "checkpoint" = another model (teacher_checkpoint; teacher_config for a different architecture).
    teacher: Literal["initial", "ema", "student", "checkpoint"] = "initial"
    ema_decay: float = 0.99
    teacher_checkpoint: str | None = None
    # A training config (e.g. the run_config.yaml beside a checkpoint) whose model/omni sections
    # describe the teacher; null: the student's architecture.
    teacher_config: str | None = None
    # The teacher's prompt carries the sample's rationale (data.prompt.privileged_template).
    # false: teacher and student see the same prompt (a control; the loss is then 0 at step 0
    # with the initial teacher).
    privileged: bool = True
    loss: DistillationLossConfig = field(default_factory=DistillationLossConfig)
    group_size: int = 4  # completions sampled per prompt
    # Plain sampling from the student (temperature 1, no top-k): the on-policy distribution.
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0, top_k=0))
    # Mix with the GRPO reward loss: total = distillation + grpo_weight * GRPO (the group_size
    # completions of a prompt form its group; no reference KL: the teacher KL regularises).
    grpo_weight: float = 0.0
    grpo: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    # Keep a teacher with weights of its own (initial, ema, checkpoint) on the CPU between its
    # forwards: it is moved to the step device to score the step's micro-batches first (their
    # completion rows kept, as under pipeline parallelism) and back; the EMA update runs on the CPU.
    offload_teacher: bool = False

    def validate(self, key: str) -> None:
        if self.teacher == "checkpoint" and not self.teacher_checkpoint:
            raise ConfigError(f"{key}.teacher=checkpoint needs {key}.teacher_checkpoint (a Megatron checkpoint folder)")
        if self.teacher != "checkpoint" and (self.teacher_checkpoint or self.teacher_config):
            raise ConfigError(f"{key}.teacher_checkpoint / teacher_config are read only with {key}.teacher=checkpoint "
                              f"(it is {self.teacher})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{key}.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.group_size < 2:
            raise ConfigError(f"{key}.group_size must be >= 2, got {self.group_size}")
        if self.grpo_weight < 0:
            raise ConfigError(f"{key}.grpo_weight must be >= 0, got {self.grpo_weight}")
        # OmniOPSD makes one update per rollout batch, so the mix's PPO ratio is 1 and its token
        # count normalises the distillation loss too: these would change nothing or mix normalisers.
        unsupported = {
            "clip_eps_low": "the PPO ratio is 1 with one update per rollout batch: nothing is clipped",
            "clip_eps_high": "the PPO ratio is 1 with one update per rollout batch: nothing is clipped",
            "ratio_level": "the PPO ratio is 1 with one update per rollout batch: token and sequence ratios agree",
            "loss_aggregation": "the mix shares the distillation loss's normaliser, the completion tokens",
            "tis_cap": "OmniOPSD does not read the engine's log-probs",
        }
        defaults = PolicyLossConfig()
        for name, why in unsupported.items():
            if getattr(self.grpo, name) != getattr(defaults, name):
                raise ConfigError(f"{key}.grpo.{name}={getattr(self.grpo, name)!r} is not supported by OmniOPSD ({why}); "
                                  f"remove it (PPO mini-batches and these options: algorithm=oppo, oppo.grpo.*)")
        if self.offload_teacher and self.teacher == "student":
            raise ConfigError(f"{key}.offload_teacher=true needs a teacher with weights of its own: "
                              f"{key}.teacher=student is the policy itself")
