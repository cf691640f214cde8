"""The configuration of omni training runs (SFT, OPPO, OmniOPSD): a decoder run's sections plus
the omni towers, the data pipeline, the algorithms, rewards and evaluation, each section defined
beside the code that reads it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_omni.algorithms.config import OPPOConfig, SFTConfig, check_oppo_run
from megatron_omni.algorithms.opsd.config import OPSDConfig
from megatron_omni.config import ConfigError
from megatron_omni.data.config import DataConfig, DatasetConfig
from megatron_omni.eval.config import EvaluationConfig
from megatron_omni.models.omni_config import OmniConfig, validate_omni
from megatron_omni.rewards.config import RewardConfig
from megatron_omni.training.config import RunConfig

# Keys that the data library reads (OmniLoader, Collator) but training runs do not use yet: a
# value other than the default would be silently ignored, so it is refused.
NOT_WIRED_IN_RUNS = {"packing": False, "num_workers": 0, "pad_to_multiple_of": 1}


@dataclass
class OmniTrainConfig(RunConfig):
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

    def needs_lexicon(self) -> bool:
        """The run must score completions: OPPO's rewards, OmniOPSD's GRPO mix, held-out evaluation."""
        opsd_rewards = self.algorithm == "opsd" and self.opsd.grpo_weight > 0
        return self.algorithm == "oppo" or opsd_rewards or self.evaluation.at_start or self.evaluation.at_end

    def optimizer_steps_per_batch(self) -> int:
        return self.oppo.grpo.updates_per_rollout if self.algorithm == "oppo" else 1

    def check_across_sections(self, world_size: int | None) -> None:
        super().check_across_sections(world_size)
        if self.algorithm == "oppo":
            check_oppo_run(self, world_size)
        validate_omni(self.model, self.omni)
        for name, default in NOT_WIRED_IN_RUNS.items():
            if getattr(self.data, name) != default:
                raise ConfigError(f"data.{name}={getattr(self.data, name)!r}: training runs do not use data.{name} yet "
                                  f"(they pad every micro-batch to train.seq_length in the training process); "
                                  f"remove it or set data.{name}={default!r}")
        if self.needs_lexicon() and self.reward.wheel_dir is None:
            raise ConfigError("reward.wheel_dir must name the MER emotion-wheel lexicon folder (OPPO rewards, "
                              "opsd.grpo_weight > 0, evaluation)")
        if self.algorithm in ("oppo", "opsd"):
            sampling = getattr(self, self.algorithm).sampling
            if sampling.max_new_tokens >= self.train.seq_length:
                raise ConfigError(f"{self.algorithm}.sampling.max_new_tokens ({sampling.max_new_tokens}) must be smaller "
                                  f"than train.seq_length ({self.train.seq_length}): prompt and completion share it")
        if self.algorithm in ("oppo", "opsd") and self.parallel.virtual_pipeline_model_parallel_size:
            raise ConfigError(f"{self.algorithm.upper()} rollouts do not support interleaved pipelines: "
                              "set parallel.virtual_pipeline_model_parallel_size=null")
