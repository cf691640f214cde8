"""The toy Qwen3-Omni MoE SFT config (examples/configs/toy_moe_sft.yaml) builds its run and trains
one step in this pytest process: the toy clips become 128x128 frames of 16-pixel patches, whole
Qwen3-Omni time ids, and the step logs the load-balancing loss; a scoring pass (forward_only, as
OPPO's reference and masked forwards) before a step leaves that metric as it is."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from megatron_omni.config import load_config
from megatron_omni.models.moe import router_metrics
from megatron_omni.runs.config import OmniTrainConfig
from megatron_omni.runs.omni import build_run
from megatron_omni.training.model_setup import unwrap
from megatron_omni.training.step import forward_only, run_microbatches

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "toy_moe_sft.yaml"


@pytest.fixture(scope="module")
def toy_run(single_process, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("toy_moe")
    cfg = load_config(CONFIG, [
        f"dataset.toy_dir={tmp_path / 'toy'}", "dataset.toy_num_clips=6", "train.save_dir=null", "train.steps=1",
        "train.micro_batch_size=2", "train.global_batch_size=2", "optimizer.lr_warmup_steps=0",
        "logging.progress_bar=false", "logging.tensorboard=false", f"output_dir={tmp_path / 'out'}",
    ], cls=OmniTrainConfig)
    return build_run(cfg)


def test_toy_moe_sft_config_trains_a_step(toy_run):
    r = toy_run
    sample = r.algorithm.sample_source.dataset.load(0)
    # 4 sampled frames of 128x128: 2 temporal patches of 8x8 16-pixel patches.
    assert sample.media.video.grid_thw == (2, 8, 8)
    [metrics] = r.train()
    # A fresh model's next-token distribution is near uniform over the 768 toy tokens.
    assert abs(metrics["lm_loss"] - math.log(768)) < 0.5
    # transformers' E x sum_i f_i P_i with f_i summed over the k = 2 routing slots: k for perfectly
    # balanced routing, at most k x E = 8 (every token on the same experts with all the probability).
    assert 0.0 < metrics["moe_load_balancing_loss"] <= 8.0


def test_scoring_forwards_leave_the_load_balancing_metric(toy_run):
    r = toy_run
    batches, _ = r.algorithm.prepare(r.sampler.next_indices(), 1)
    config = unwrap(r.model_chunks[0]).config

    def step_metric(score_first: bool) -> float:
        if score_first:
            forward_only(r.model_chunks, batches, lambda b: b, lambda b, logits: None, r.cfg.train.seq_length,
                         r.cfg.train.micro_batch_size)
        run_microbatches(r.model_chunks, batches, r.algorithm.forward_step, r.cfg.train.seq_length,
                         r.algorithm.microbatch_rows)
        return router_metrics(config, len(batches))["moe_load_balancing_loss"]

    assert step_metric(score_first=True) == pytest.approx(step_metric(score_first=False), rel=1e-6)
