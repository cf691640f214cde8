"""A decoder pretraining run: the Qwen2.5 language decoder on the generated text corpus. The
command line is `megatron_omni.cli.pretrain_decoder`."""
from __future__ import annotations

import torch.distributed as dist

from megatron_omni.algorithms.lm import LanguageModeling
from megatron_omni.config import ConfigError
from megatron_omni.data.text_corpus import VOCAB_SIZE, TextWindows, generate_sentences
from megatron_omni.models.decoder import build_decoder
from megatron_omni.parallel import destroy_parallel
from megatron_omni.runs.training_run import TrainingRun, data_parallel_sampler, start_layout
from megatron_omni.training.config import RunConfig
from megatron_omni.training.model_setup import build_model_chunks
from megatron_omni.training.optimizer import build_optimizer

CORPUS_SENTENCES = 2000


def build_run(cfg: RunConfig) -> TrainingRun:
    """A decoder run in an initialised process group."""
    cfg.validate(dist.get_world_size())
    if cfg.model.vocab_size < VOCAB_SIZE:
        raise ConfigError(f"model.vocab_size ({cfg.model.vocab_size}) must be >= {VOCAB_SIZE} for the byte-level text corpus")
    start_layout(cfg)
    model_chunks = build_model_chunks(cfg, build_decoder)
    optimizer, scheduler = build_optimizer(cfg, model_chunks)
    dataset = TextWindows(generate_sentences(CORPUS_SENTENCES, cfg.train.seed), cfg.train.seq_length)
    sampler = data_parallel_sampler(len(dataset), cfg)
    algorithm = LanguageModeling(dataset, cfg.train.micro_batch_size, mrope=cfg.model.mrope_section is not None)
    return TrainingRun(cfg, model_chunks, optimizer, scheduler, sampler, algorithm)


def run(cfg: RunConfig) -> list[dict]:
    """Train in an initialised process group; returns this run's per-step metrics."""
    history = build_run(cfg).train()
    if dist.get_rank() == 0 and history:
        first, last = history[0]["lm_loss"], history[-1]["lm_loss"]
        print(f"[train] lm_loss {first:.4f} (step {history[0]['step']}) -> {last:.4f} (step {history[-1]['step']})", flush=True)
    destroy_parallel()
    return history
