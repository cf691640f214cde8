"""data.pad_to_multiple_of and data.num_workers as an SFT run uses them, in this process (a
one-process gloo world): rows as long as their longest sample rounded up to the multiple, or
train.seq_length where pipeline stages need one shape; and the training loop with two loader
workers and short rows trains exactly as the in-process loader with rows of train.seq_length."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from megatron_omni.config import load_config
from megatron_omni.convert.world import single_process_world
from megatron_omni.runs.config import OmniTrainConfig
from megatron_omni.runs.omni import build_algorithm, build_run

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "toy_omni_sft.yaml"
SEQ = 320  # the toy SFT config's train.seq_length


def sft_config(toy_set, out: Path, *overrides: str) -> OmniTrainConfig:
    return load_config(CONFIG, [
        "model.hidden_size=64", "model.ffn_hidden_size=128", "model.mrope_section=[2, 3, 3]", "model.num_layers=1",
        "omni.vision.out_hidden_size=64", "omni.audio.output_dim=64",
        f"dataset.train_manifest={toy_set.train_manifest}", f"dataset.test_manifest={toy_set.test_manifest}",
        f"dataset.tokenizer_dir={toy_set.tokenizer_dir}", "train.steps=2", "train.global_batch_size=4",
        "train.micro_batch_size=2", "train.save_dir=null", "optimizer.lr_warmup_steps=0", f"output_dir={out}",
        "logging.progress_bar=false", "logging.tensorboard=false", *overrides,
    ], cls=OmniTrainConfig)


@pytest.fixture(scope="module")
def world():
    with single_process_world():
        yield


def test_rows_round_up_to_the_multiple_unless_the_pipeline_needs_one_shape(world, toy_set, tmp_path):
    r = build_run(sft_config(toy_set, tmp_path, "data.pad_to_multiple_of=64"))
    indices = r.sampler.indices_at(0)
    batches, _ = r.algorithm.prepare(indices, 0)
    lengths = [r.algorithm.sample_source.load(i).length for i in indices]
    expected = [64 * math.ceil(max(lengths[k : k + 2]) / 64) for k in (0, 2)]
    assert [b.tokens.shape[1] for b in batches] == expected and min(expected) < SEQ
    # Two pipeline stages: every row is train.seq_length (the toy set's samples need fewer).
    cfg = sft_config(toy_set, tmp_path, "data.pad_to_multiple_of=64", "parallel.pipeline_model_parallel_size=2")
    algorithm, _ = build_algorithm(cfg, r.tokenizer, r.processor, None, None)
    assert [b.tokens.shape for b in algorithm.prepare(indices, 0)[0]] == [(2, SEQ), (2, SEQ)]


def test_workers_and_short_rows_train_as_the_in_process_loader(world, toy_set, tmp_path):
    """Two steps of the training loop (read-ahead, close): the losses and gradient norms of rows
    rounded to 64 loaded by two workers equal those of rows of train.seq_length loaded in process."""
    short = build_run(sft_config(toy_set, tmp_path / "short", "data.pad_to_multiple_of=64", "data.num_workers=2"))
    history = short.train()
    assert [h["step"] for h in history] == [1, 2]
    assert short.algorithm.sample_source.pool is None  # the loop closed the workers
    full = build_run(sft_config(toy_set, tmp_path / "full", f"data.pad_to_multiple_of={SEQ}")).train()
    for key in ("lm_loss", "grad_norm"):
        assert [h[key] for h in history] == pytest.approx([h[key] for h in full], rel=1e-5), key
