"""The toy Qwen3-Omni MoE SFT config (examples/configs/toy_moe_sft.yaml) builds its run and trains
one step in this pytest process: the toy clips become 128x128 frames of 16-pixel patches, whole
Qwen3-Omni time ids, and the step logs the load-balancing loss."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from megatron_omni.config import load_config
from megatron_omni.runs.config import OmniTrainConfig
from megatron_omni.runs.omni import build_run

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "toy_moe_sft.yaml"


@pytest.fixture(scope="module")
def world():
    from megatron_omni.convert.world import single_process_world

    with single_process_world():
        yield


def test_toy_moe_sft_config_trains_a_step(world, tmp_path):
    cfg = load_config(CONFIG, [
        f"dataset.toy_dir={tmp_path / 'toy'}", "dataset.toy_num_clips=6", "train.save_dir=null", "train.steps=1",
        "train.micro_batch_size=2", "train.global_batch_size=2", "optimizer.lr_warmup_steps=0",
        "logging.progress_bar=false", "logging.tensorboard=false", f"output_dir={tmp_path / 'out'}",
    ], cls=OmniTrainConfig)
    r = build_run(cfg)
    sample = r.algorithm.sample_source.dataset.load(0)
    # 4 sampled frames of 128x128: 2 temporal patches of 8x8 16-pixel patches.
    assert sample.media.video.grid_thw == (2, 8, 8)
    [metrics] = r.train()
    # A fresh model's next-token distribution is near uniform over the 768 toy tokens.
    assert abs(metrics["lm_loss"] - math.log(768)) < 0.5
    # transformers' E x sum_i f_i P_i: 1 for perfectly balanced routing, at most E = 4.
    assert 0.5 < metrics["moe_load_balancing_loss"] <= 4.0
