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

    def row_multiple(self) -> tuple[int, str]:
        """What the rows of a training micro-batch are padded to a multiple of, and the key that sets
        it. Rows of exactly train.seq_length where one length is needed: pipeline stages exchange
        activations of one shape (PP > 1), packed rows, and the RL algorithms' scoring rows (their
        per-token masks are train.seq_length long). Otherwise (SFT, padded, PP = 1) a row is as
        long as its longest sample, rounded up to data.pad_to_multiple_of (expert-parallel ranks
        with rows of different lengths: `models.moe`)."""
        fixed = self.parallel.pipeline_model_parallel_size > 1 or self.data.packing or self.algorithm != "sft"
        return (self.train.seq_length, "train.seq_length") if fixed else (self.data.pad_to_multiple_of, "data.pad_to_multiple_of")

    def check_row_lengths(self) -> None:
        seq, multiple = self.train.seq_length, self.data.pad_to_multiple_of
        if seq % multiple:
            raise ConfigError(f"train.seq_length ({seq}) must be a multiple of data.pad_to_multiple_of ({multiple}): "
                              "rows are padded to a multiple of it and never beyond train.seq_length")
        rows, key = self.row_multiple()
        if self.precision.fp8 is not None and rows % 16:
            raise ConfigError(f"precision.fp8={self.precision.fp8!r}: Transformer Engine's FP8 matmuls need rows of a "
                              f"multiple of 16 tokens; {key} is {rows}")
        tp = self.parallel.tensor_model_parallel_size
        if self.parallel.sequence_parallel and rows % tp:
            raise ConfigError(f"parallel.sequence_parallel splits every row across the {tp} tensor-parallel ranks: "
                              f"{key} ({rows}) must be a multiple of parallel.tensor_model_parallel_size")

    def check_expert_parallel_run(self) -> None:
        """Expert parallelism runs every MoE layer's forward on all the ranks of an expert group at
        once. The rollout engine and the evaluation's answers keep the group's ranks in step, and
        the MoE layers take a different number of tokens on each; packed rows, though, differ in
        number between ranks, so the ranks would run different numbers of micro-batches."""
        ep = self.parallel.expert_model_parallel_size
        if ep > 1 and self.data.packing:
            raise ConfigError(f"parallel.expert_model_parallel_size ({ep}) with data.packing: ranks pack different "
                              "numbers of rows, and an expert-parallel group needs every MoE forward on all its "
                              "ranks at once; set data.packing=false")

    def check_across_sections(self, world_size: int | None) -> None:
        super().check_across_sections(world_size)
        self.check_expert_parallel_run()
        if self.algorithm == "oppo":
            check_oppo_run(self, world_size)
        validate_omni(self.model, self.omni)
        self.check_row_lengths()
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
