"""Every section validates its own fields through one walk; messages name the dotted key, also
for a section class that sits at several places (oppo.sampling and opsd.sampling)."""
from dataclasses import dataclass, field

import pytest

from megatron_omni.algorithms.opsd.config import DistillationLossConfig, OPSDConfig
from megatron_omni.config import ConfigError, validate_sections
from megatron_omni.data.config import DataConfig
from megatron_omni.runs.config import OmniTrainConfig


def omni_config(*overrides: str) -> OmniTrainConfig:
    return OmniTrainConfig.load(None, ["reward.wheel_dir=lexicon", *overrides])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["oppo.grpo.group_size=1"], "oppo.grpo.group_size must be >= 2"),
        (["opsd.group_size=1"], "opsd.group_size must be >= 2"),
        (["oppo.sampling.temperature=0"], "oppo.sampling.temperature must be > 0 when sampling"),
        (["opsd.sampling.temperature=-1"], "opsd.sampling.temperature must be > 0 when sampling"),
        (["oppo.sampling.top_p=0"], r"oppo.sampling.top_p must lie in (0, 1]"),
        (["oppo.sampling.top_p=1.5"], r"oppo.sampling.top_p must lie in (0, 1]"),
        (["oppo.sampling.max_decode_rows=0"], r"oppo.sampling.max_decode_rows must be >= 1 (null: all prompts in one decode)"),
        (["opsd.sampling.top_k=-1"], "opsd.sampling.top_k must be >= 0"),
        (["oppo.sampling.max_new_tokens=0"], "oppo.sampling.max_new_tokens must be >= 1"),
        (["opsd.loss.temperature=0"], "opsd.loss.temperature must be positive"),
        (["oppo.grpo.kl_beta=-0.1"], "oppo.grpo.kl_beta must be >= 0"),
        (["oppo.perception_gamma=-1"], "oppo.perception_gamma must be >= 0"),
        (["oppo.offload_reference=true", "oppo.grpo.kl_beta=0"],
         "oppo.offload_reference=true needs a reference model, which exists only with oppo.grpo.kl_beta > 0"),
        (["opsd.offload_teacher=true", "opsd.teacher=student"],
         "opsd.offload_teacher=true needs a teacher with weights of its own: opsd.teacher=student"),
        (["reward.tau=1"], r"reward.tau must lie in [0, 1)"),
        (["reward.evidence_threshold=3"], r"reward.evidence_threshold is a cosine similarity"),
        (["sft.privileged_fraction=1.5"], r"sft.privileged_fraction must be in [0, 1]"),
        (["evaluation.max_new_tokens=0"], "evaluation.max_new_tokens must be >= 1"),
        (["omni.modality_mask_ratio=2"], r"omni.modality_mask_ratio (2.0) must lie in [0, 1]"),
        (["train.steps=0"], "train.steps must be >= 1"),
        (["optimizer.min_lr=0.1", "optimizer.lr=0.01"], "optimizer.min_lr (0.1) must lie in [0, optimizer.lr (0.01)]"),
        (["optimizer.lr=-0.001", "optimizer.min_lr=0"], "optimizer.lr must be >= 0, got -0.001"),
        (["train.micro_batch_size=0"], "train.micro_batch_size must be >= 1, got 0"),
        (["train.seq_length=0"], "train.seq_length must be >= 1, got 0"),
        (["oppo.grpo.group_size=0"], "oppo.grpo.group_size must be >= 2"),
        (["opsd.group_size=0"], "opsd.group_size must be >= 2"),
        (["opsd.sampling.max_new_tokens=0"], "opsd.sampling.max_new_tokens must be >= 1"),
        (["algorithm=oppo", "oppo.sampling.max_new_tokens=64", "train.seq_length=64"],
         "oppo.sampling.max_new_tokens (64) must be smaller than train.seq_length (64)"),
        (["data.max_skipped_fraction=1.5"], r"data.max_skipped_fraction must lie in [0, 1]"),
        (["data.video.fps=0"], "data.video.fps must be positive"),
        (["dataset.train_manifest=train.jsonl"], "dataset.tokenizer_dir must name the tokenizer folder"),
        (["train.seq_length=100", "data.pad_to_multiple_of=64"],
         "train.seq_length (100) must be a multiple of data.pad_to_multiple_of (64)"),
        (["algorithm=oppo", "reward.wheel_dir=null"], "reward.wheel_dir must name the MER emotion-wheel lexicon folder"),
    ],
)
def test_section_rules_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        omni_config(*overrides).validate(world_size=1)
    assert message in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["data.pad_to_multiple_of=8"], "precision.fp8='e4m3': Transformer Engine's FP8 matmuls need rows of a multiple of "
                                    "16 tokens; data.pad_to_multiple_of is 8"),
    # Pipeline stages and RL scoring rows are train.seq_length long whatever the multiple.
    (["data.pad_to_multiple_of=8", "train.seq_length=200", "parallel.pipeline_model_parallel_size=2"],
     "train.seq_length is 200"),
    (["algorithm=oppo", "train.seq_length=200"], "train.seq_length is 200"),
    (["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true", "precision.fp8=null"],
     "parallel.sequence_parallel splits every row across the 2 tensor-parallel ranks: data.pad_to_multiple_of (1) must"),
])
def test_row_lengths_fit_fp8_and_sequence_parallelism(monkeypatch, overrides, message):
    """Checked without a GPU: the Transformer Engine these settings need is taken to be there."""
    for module in ("megatron_omni.models.config", "megatron_omni.training.config"):
        monkeypatch.setattr(f"{module}.transformer_engine_available", lambda: True)
    layout = ["precision.fp8=e4m3", "train.seq_length=256", "model.num_layers=2"]
    with pytest.raises(ConfigError) as err:
        omni_config(*layout, *overrides).validate(world_size=None)
    assert message in str(err.value)
    omni_config(*layout, "data.pad_to_multiple_of=16").validate(world_size=None)


def test_greedy_sampling_needs_no_temperature():
    omni_config("oppo.sampling.greedy=true", "oppo.sampling.temperature=0").validate(world_size=1)


def test_keys_that_nothing_reads_are_unknown():
    # OmniOPSD groups its own opsd.group_size completions and regularises with the teacher KL.
    for key in ("opsd.grpo.group_size=4", "opsd.grpo.kl_beta=0.1"):
        with pytest.raises(ConfigError, match="unknown key opsd.grpo"):
            omni_config(key)
    # One source for the time alignment: the model's omni section.
    with pytest.raises(ConfigError, match="unknown key data.position_id_per_seconds"):
        omni_config("data.position_id_per_seconds=25")
    assert omni_config("omni.position_id_per_seconds=50").omni.position_id_per_seconds == 50


def test_reward_config_reaches_the_reward_whole():
    cfg = omni_config("reward.evidence_threshold=0.7", "reward.wheel_level=level2", "reward.device=cpu")
    assert (cfg.reward.evidence_threshold, cfg.reward.wheel_level) == (0.7, "level2")
    with pytest.raises(ConfigError, match="reward.wheel_level: 'level3' is not one of"):
        omni_config("reward.wheel_level=level3")


def test_the_walk_visits_nested_sections_children_first():
    seen = []

    @dataclass
    class Leaf:
        def validate(self, key):
            seen.append(key)

    @dataclass
    class Middle:
        leaf: Leaf = field(default_factory=Leaf)

        def validate(self, key):
            seen.append(key)

    @dataclass
    class Root:
        first: Middle = field(default_factory=Middle)
        second: Middle = field(default_factory=Middle)

    validate_sections(Root())
    assert seen == ["first.leaf", "first", "second.leaf", "second"]


def test_standalone_sections_validate_under_their_key():
    with pytest.raises(ConfigError, match=r"opsd.teacher=checkpoint needs opsd.teacher_checkpoint"):
        OPSDConfig(teacher="checkpoint").validate("opsd")
    with pytest.raises(ConfigError, match=r"opsd.ema_decay must be in \[0, 1\)"):
        OPSDConfig(teacher="ema", ema_decay=1.0).validate("opsd")
    with pytest.raises(ConfigError, match="teacher.loss.top_k must be >= 1"):
        DistillationLossConfig(top_k=0).validate("teacher.loss")
    with pytest.raises(ConfigError, match="data.video.min_pixels .* exceeds max_pixels"):
        DataConfig(video=DataConfig().video.__class__(min_pixels=999999)).validate("data")


def test_expert_parallel_runs_refuse_packing_only():
    """Every MoE forward of an expert-parallel group needs all its ranks at once: packed rows,
    whose number differs between data-parallel ranks, are refused; rollouts and the evaluation's
    answers decode in step, and SFT rows keep their own lengths (the MoE layers take uneven counts)."""
    from pathlib import Path

    from megatron_omni.config import load_config

    path = Path(__file__).resolve().parents[2] / "examples/configs/toy_moe_sft.yaml"
    layout = ["parallel.expert_model_parallel_size=2", "reward.wheel_dir=lexicon"]
    with pytest.raises(ConfigError) as err:
        load_config(path, [*layout, "data.packing=true"], cls=OmniTrainConfig).validate(world_size=2)
    assert "parallel.expert_model_parallel_size (2) with data.packing" in str(err.value)
    for algorithm in ("sft", "oppo", "opsd"):
        cfg = load_config(path, [*layout, f"algorithm={algorithm}", "evaluation.at_end=true"],
                          cls=OmniTrainConfig).validate(world_size=2)
        assert cfg.row_multiple()[1] == ("data.pad_to_multiple_of" if algorithm == "sft" else "train.seq_length")
