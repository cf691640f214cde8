"""One SFT step on the toy set with data.packing equals the padded step: the loss and every
gradient within 1e-5, with two samples in each packed row (one process, in this pytest process)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from megatron_omni.algorithms.sft import SFT
from megatron_omni.config import load_config
from megatron_omni.runs.config import OmniTrainConfig
from megatron_omni.runs.omni import build_run
from megatron_omni.training.step import run_microbatches

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "toy_omni_sft.yaml"


@pytest.fixture(scope="module")
def toy_run(single_process, tmp_path_factory):
    """A 64-wide toy SFT run, padded; its rows of 640 tokens hold two toy samples each when packed."""
    work = tmp_path_factory.mktemp("sft_packing")
    cfg = load_config(CONFIG, [
        f"dataset.toy_dir={work / 'toy'}", "dataset.toy_num_clips=6", "init_from=null", "train.save_dir=null",
        "model.hidden_size=64", "model.ffn_hidden_size=128", "model.mrope_section=[2, 3, 3]",
        "omni.vision.out_hidden_size=64", "omni.audio.output_dim=64", "parallel.tensor_model_parallel_size=1",
        "train.seq_length=640", "train.micro_batch_size=2", "train.global_batch_size=4", "train.steps=2",
        "optimizer.lr_warmup_steps=0", "evaluation.at_start=false", "evaluation.at_end=false",
        "logging.progress_bar=false", "logging.tensorboard=false", f"output_dir={work / 'out'}",
    ], cls=OmniTrainConfig)
    return build_run(cfg)


def sft_step(r, algorithm, indices):
    """The micro-batches, metrics and gradients (no optimizer update) of one step of ``algorithm``."""
    for chunk in r.model_chunks:
        chunk.zero_grad_buffer()
    batches, metrics = algorithm.prepare(indices, 0)
    metrics.update(run_microbatches(r.model_chunks, batches, algorithm.forward_step, r.cfg.train.seq_length,
                                    algorithm.microbatch_rows))
    grads = {name: p.main_grad.clone() for name, p in r.model_chunks[0].named_parameters() if p.requires_grad}
    return batches, metrics, grads


def test_packed_sft_step_equals_padded(toy_run):
    padded_sft = toy_run.algorithm
    collator = dataclasses.replace(padded_sft.collator, packing=True, pad_to_multiple_of=toy_run.cfg.train.seq_length)
    packed_sft = SFT(padded_sft.sample_source.dataset, collator, padded_sft.micro_batch_size, padded_sft.seq_length)
    indices = toy_run.sampler.next_indices()
    padded_batches, padded, padded_grads = sft_step(toy_run, padded_sft, indices)
    packed_batches, packed, packed_grads = sft_step(toy_run, packed_sft, indices)
    assert [b.tokens.shape[0] for b in padded_batches] == [2, 2]
    assert [b.tokens.shape for b in packed_batches] == [(1, 640)] * 2 and all(b.num_samples == 2 for b in packed_batches)
    assert sorted(i for b in packed_batches for i in b.sample_ids) == sorted(i for b in padded_batches for i in b.sample_ids)
    assert abs(packed["lm_loss"] - padded["lm_loss"]) <= 1e-5 * abs(padded["lm_loss"])
    assert packed_grads.keys() == padded_grads.keys()
    for name, grad in padded_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-5 * grad.abs().max().item(), msg=name)
