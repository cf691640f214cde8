"""OmniOPSD options (the ``opsd`` section of a training config)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_omni.algorithms.grpo import GRPOConfig
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
    # Mix with the GRPO reward loss: total = distillation + grpo_weight * GRPO (group_size
    # completions per prompt form the groups; grpo.kl_beta is not used, the teacher KL regularises).
    grpo_weight: float = 0.0
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
