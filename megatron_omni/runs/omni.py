"""Assembly of an omni training run (SFT cold start, OPPO or OmniOPSD): data, model chunks,
optimizer, algorithm, reward and the evaluation hook, returned as one `OmniRun`; `run` trains it.
The command line is `megatron_omni.cli.train`; tools and tests import this module.

With no manifests configured, the toy emotion data set is generated (once) and used.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist
import yaml

from megatron_omni.config import ConfigError, load_config
from megatron_omni.data import (
    Collator,
    OmniDataset,
    OmniProcessor,
    load_manifest,
    load_tokenizer,
    special_token_ids,
)
from megatron_omni.data.toy import make_toy_dataset
from megatron_omni.models.omni import build_omni_model
from megatron_omni.parallel import destroy_parallel, init_distributed
from megatron_omni.runs.config import OmniTrainConfig
from megatron_omni.runs.training_run import TrainingRun, data_parallel_sampler, start_layout
from megatron_omni.training.model_setup import build_model_chunks
from megatron_omni.training.optimizer import build_optimizer


def resolve_dataset(cfg: OmniTrainConfig) -> None:
    """Fill in the toy data set's paths when no manifests are configured (rank 0 writes it)."""
    d = cfg.dataset
    if d.train_manifest is not None:
        return
    if dist.get_rank() == 0:
        make_toy_dataset(d.toy_dir, d.toy_num_clips, d.toy_seed)
    dist.barrier()
    paths = make_toy_dataset(d.toy_dir, d.toy_num_clips, d.toy_seed)  # cached: only reads the paths
    d.train_manifest, d.test_manifest = str(paths.train_manifest), str(paths.test_manifest)
    d.tokenizer_dir = str(paths.tokenizer_dir)
    if cfg.reward.wheel_dir is None:
        cfg.reward.wheel_dir = str(paths.wheel_dir)
        if dist.get_rank() == 0:
            print(f"[data] reward.wheel_dir is not set: scoring the toy set with its own emotion wheel {paths.wheel_dir} "
                  "(the released MER lexicon comes from MERTools' MER2025 emotion_wheel folder)", flush=True)


def build_reward(cfg: OmniTrainConfig):
    """The Omni-Perception Reward when the run scores completions (`needs_lexicon`), or logs
    OmniOPSD's reward terms because a lexicon is given; None otherwise. One instance serves the
    algorithm and the evaluation, so the lexicon and the embedding model load once."""
    logs_opsd_rewards = cfg.algorithm == "opsd" and cfg.reward.wheel_dir is not None
    if not (cfg.needs_lexicon() or logs_opsd_rewards):
        return None
    from megatron_omni.rewards.omni_perception import OmniPerceptionReward

    return OmniPerceptionReward(cfg.reward)


def build_algorithm(cfg: OmniTrainConfig, tokenizer, processor, model_chunks, reward):
    if cfg.algorithm == "sft":
        from megatron_omni.algorithms.sft import SFT

        dataset = OmniDataset.from_manifest(cfg.dataset.train_manifest, processor, privileged=cfg.sft.privileged_fraction)
        collator = Collator(processor.token_ids.pad_token_id, packing=cfg.data.packing, pad_to_multiple_of=cfg.row_multiple()[0])
        return SFT(dataset, collator, cfg.train.micro_batch_size, cfg.train.seq_length), len(dataset)

    prompts = OmniDataset.from_manifest(cfg.dataset.train_manifest, processor, with_target=False)
    samples = [s.to_record() for s in load_manifest(cfg.dataset.train_manifest)]
    ids = processor.token_ids
    if cfg.algorithm == "opsd":
        from megatron_omni.algorithms.opsd.trainer import OmniOPSD

        algorithm = OmniOPSD(cfg, prompts, samples, tokenizer, reward, model_chunks, build_teacher(cfg),
                             stop_token_ids=[ids.eos_token_id], pad_token_id=ids.pad_token_id)
        return algorithm, len(prompts)

    from megatron_omni.algorithms.oppo import OPPO

    reference = frozen_model_chunks(cfg) if cfg.oppo.grpo.kl_beta else None
    algorithm = OPPO(cfg, prompts, samples, tokenizer, reward, model_chunks, reference,
                     stop_token_ids=[ids.eos_token_id], pad_token_id=ids.pad_token_id)
    return algorithm, len(prompts)


def build_teacher(cfg: OmniTrainConfig):
    """The OmniOPSD teacher's model: a frozen copy of the starting weights (initial, and the start
    of an EMA), none of its own (student), or another checkpoint."""
    from megatron_omni.algorithms.opsd.teacher import Teacher

    o = cfg.opsd
    if o.teacher == "student":
        return Teacher("student", None)
    source = teacher_model_config(cfg) if o.teacher == "checkpoint" else cfg
    return Teacher(o.teacher, frozen_model_chunks(source), o.ema_decay)


def teacher_model_config(cfg: OmniTrainConfig) -> OmniTrainConfig:
    """The student's run config with the teacher's weights (and, with opsd.teacher_config, its
    architecture); the vocabulary must be the student's for a token-level KL."""
    o = cfg.opsd
    teacher = dataclasses.replace(cfg, init_from=o.teacher_checkpoint)
    if o.teacher_config:
        other = load_config(o.teacher_config, [], cls=OmniTrainConfig)
        for field in ("vocab_size", "make_vocab_size_divisible_by"):
            mine, theirs = getattr(cfg.model, field), getattr(other.model, field)
            if mine != theirs:
                raise ConfigError(
                    f"opsd.teacher_config {o.teacher_config}: the teacher's model.{field} is {theirs}, the student's "
                    f"is {mine}; distilling over the full vocabulary needs one tokenizer and vocabulary"
                )
        # The placeholder ids come from the (shared) tokenizer, as the student's do.
        omni = dataclasses.replace(other.omni, tokens=cfg.omni.tokens)
        teacher = dataclasses.replace(teacher, model=other.model, omni=omni)
    return teacher


def sync_token_ids(cfg: OmniTrainConfig, tokenizer) -> None:
    """The model's placeholder ids come from the tokenizer; its vocabulary must hold the tokenizer's."""
    if cfg.model.vocab_size < len(tokenizer):
        raise ConfigError(
            f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's {len(tokenizer)} tokens "
            f"({cfg.dataset.tokenizer_dir})"
        )
    ids = special_token_ids(tokenizer)
    t = cfg.omni.tokens
    t.audio, t.image, t.video = ids.audio_token_id, ids.image_token_id, ids.video_token_id
    t.audio_start, t.audio_end = ids.audio_start_token_id, ids.audio_end_token_id
    t.vision_start, t.vision_end = ids.vision_start_token_id, ids.vision_end_token_id


def answerer_for(cfg: OmniTrainConfig, model_chunks, tokenizer, processor, manifest: str):
    """Greedy answers of the model for the samples of ``manifest`` (the evaluation's generate)."""
    from megatron_omni.eval.model_answers import OmniAnswerer

    prompts = OmniDataset.from_manifest(manifest, processor, with_target=False)
    ids = processor.token_ids
    return OmniAnswerer(model_chunks, prompts, tokenizer, cfg.model.vocab_size,
                        [ids.eos_token_id], ids.pad_token_id, cfg.evaluation.max_new_tokens,
                        cfg.omni.modality_mask_ratio)


def checkpoint_answerer(config: str, checkpoint: str, manifest: str, overrides: list[str] = ()):
    """Greedy answers of a saved model for tools/evaluate.py: TP=1 / PP=1 in one process unless
    ``overrides`` set another layout (then launched under torchrun)."""
    layout = ["parallel.tensor_model_parallel_size=1", "parallel.pipeline_model_parallel_size=1",
              "parallel.virtual_pipeline_model_parallel_size=null", "parallel.use_distributed_optimizer=false"]
    cfg = load_config(config, [*layout, *overrides, f"init_from={checkpoint}"], cls=OmniTrainConfig)
    init_distributed()
    tokenizer, processor, model_chunks = prepare_model(cfg, wrap_ddp=False)
    return answerer_for(cfg, model_chunks, tokenizer, processor, manifest)


def evaluate(cfg: OmniTrainConfig, model_chunks, tokenizer, processor, reward, tag: str) -> dict[str, float]:
    """Greedy answers on the held-out split, scored; rank 0 writes ``output_dir/eval_<tag>.json``."""
    from megatron_omni.eval.model_answers import sample_records, score_answers
    from megatron_omni.text.lexicon import EmotionWheelLexicon

    answerer = answerer_for(cfg, model_chunks, tokenizer, processor, cfg.dataset.test_manifest)
    records = sample_records(answerer.prompts)[: cfg.evaluation.max_samples]
    answers = dict(zip([str(r["id"]) for r in records], answerer(records)))
    scores = score_answers(answers, records, EmotionWheelLexicon.from_dir(cfg.reward.wheel_dir), reward)
    if dist.get_rank() == 0:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"eval_{tag}.json").write_text(json.dumps({"scores": scores, "answers": answers}, indent=1) + "\n")
        print(f"[eval:{tag}] " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()), flush=True)
    return scores


def prepare_model(cfg: OmniTrainConfig, wrap_ddp: bool = True):
    """Tokenizer, processor and this rank's model chunks (with ``init_from`` weights), after
    checking the config and creating the parallel groups."""
    tokenizer = load_tokenizer(cfg.dataset.tokenizer_dir)
    sync_token_ids(cfg, tokenizer)
    cfg.validate(dist.get_world_size())
    start_layout(cfg)
    # Qwen3-Omni's placeholder layout and positions follow its audio tower's window.
    audio_n_window = cfg.omni.audio.n_window if cfg.model.family == "qwen3_omni_moe" else None
    processor = OmniProcessor(tokenizer, cfg.data, cfg.omni.position_id_per_seconds, cfg.omni.seconds_per_chunk,
                              audio_n_window)
    return tokenizer, processor, initial_model_chunks(cfg, wrap_ddp)


def initial_model_chunks(cfg: OmniTrainConfig, wrap_ddp: bool):
    """This rank's model chunks with the run's starting weights (``init_from``, else the seeded init)."""
    model_chunks = build_model_chunks(cfg, build_omni_model, wrap_ddp=wrap_ddp)
    if cfg.init_from:
        from megatron_omni.convert.megatron_checkpoint import load_model_checkpoint

        load_model_checkpoint(cfg.init_from, model_chunks)
    return model_chunks


def frozen_model_chunks(cfg: OmniTrainConfig):
    """Starting weights that never train (OPPO's reference, OmniOPSD's teacher)."""
    chunks = initial_model_chunks(cfg, wrap_ddp=False)
    for chunk in chunks:
        chunk.requires_grad_(False)
    return chunks


def save_run_config(cfg: OmniTrainConfig) -> None:
    """The resolved config beside the run's outputs and checkpoints, so evaluation needs no guessing."""
    if dist.get_rank() != 0:
        return
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    for folder in {cfg.output_dir, cfg.train.save_dir} - {None}:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "run_config.yaml").write_text(text)
    if cfg.train.save_dir is not None:
        # The model description and source files tools/convert_megatron_to_hf.py exports with.
        from megatron_omni.convert import OmniModelConfig
        from megatron_omni.convert.megatron_checkpoint import describe_run_checkpoints

        description = OmniModelConfig(model=cfg.model, omni=cfg.omni, params_dtype=cfg.precision.params_dtype)
        describe_run_checkpoints(cfg.train.save_dir, description, cfg.init_from, cfg.dataset.tokenizer_dir)


@dataclass
class OmniRun(TrainingRun):
    """An omni training run: a `TrainingRun` plus the tokenizer, processor, reward and the
    held-out evaluation (tests and benchmarks drive single steps through it)."""

    tokenizer: object
    processor: OmniProcessor
    reward: object | None

    def evaluate(self, tag: str) -> dict[str, float]:
        return evaluate(self.cfg, self.model_chunks, self.tokenizer, self.processor, self.reward, tag)


def build_run(cfg: OmniTrainConfig, reward=None) -> OmniRun:
    """A run in an initialised process group; ``reward`` replaces the configured one (tests)."""
    resolve_dataset(cfg)
    tokenizer, processor, model_chunks = prepare_model(cfg)
    save_run_config(cfg)
    optimizer, scheduler = build_optimizer(cfg, model_chunks)
    reward = reward if reward is not None else build_reward(cfg)
    algorithm, num_samples = build_algorithm(cfg, tokenizer, processor, model_chunks, reward)
    return OmniRun(cfg, model_chunks, optimizer, scheduler, data_parallel_sampler(num_samples, cfg), algorithm,
                   tokenizer=tokenizer, processor=processor, reward=reward)


def run(cfg: OmniTrainConfig, reward=None) -> list[dict]:
    r = build_run(cfg, reward)
    if cfg.evaluation.at_start:
        r.evaluate("start")
    history = r.train()
    if cfg.evaluation.at_end:
        r.evaluate("end")
    destroy_parallel()
    return history
