"""Activation recompute changes memory, not numbers: at TP=2 and at PP=2, one step's loss and every
gradient with recompute on equal those with it off, and the recomputed modules really run twice.
Runs inside `torchrun --nproc-per-node 2` (tests/test_dist_suites.py: recompute-x2)."""
from functools import partial

import pytest
import torch
import torch.distributed as dist
from parallel_helpers import assert_close_rel, full_tensors
from test_parallel_equivalence import MICRO, SEQ, make_cfg, my_microbatches, setup

from megatron_omni.algorithms.lm import lm_forward_step
from megatron_omni.models.encoders import encode_audio, encode_vision
from megatron_omni.models.omni import build_omni_model
from megatron_omni.models.omni_config import OmniConfig
from megatron_omni.parallel import init_distributed, initialize_parallel, set_seed
from megatron_omni.training.config import RunConfig
from megatron_omni.training.model_setup import unwrap
from megatron_omni.training.step import run_microbatches


@pytest.fixture(scope="module", autouse=True)
def world():
    init_distributed()
    assert dist.get_world_size() == 2
    yield


def _cfg(tp: int, pp: int, recompute: dict | None):
    # The equivalence suite's decoder run (4 layers, 8 sequences of 32 tokens) at world size 2.
    cfg = make_cfg(tp, pp)
    cfg.train.global_batch_size = 8
    for key, value in (recompute or {}).items():
        setattr(cfg.recompute, key, value)
    return cfg.validate(2)


def _step(cfg, counted: str):
    """Loss and full gradients of one forward-backward, and how often the ``counted`` modules ran."""
    chunks = setup(cfg)
    calls = [0]
    for chunk in chunks:
        for name, module in unwrap(chunk).named_modules():
            if name.endswith(counted):
                module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        chunk.zero_grad_buffer()
    metrics = run_microbatches(chunks, my_microbatches(0), partial(lm_forward_step, mrope=True), SEQ, MICRO)
    return metrics["lm_loss"], full_tensors(chunks, "grad"), calls[0]


@pytest.mark.parametrize(
    "tp,pp,recompute,counted,recomputed_layers",
    [
        (2, 1, {"granularity": "full", "method": "uniform", "num_layers": 2}, "mlp", 4),
        (2, 1, {"granularity": "selective"}, "core_attention", 4),
        (1, 2, {"granularity": "full", "method": "block", "num_layers": 1}, "mlp", 1),
    ],
    ids=["tp2-full-uniform", "tp2-selective", "pp2-full-block"],
)
def test_recompute_matches_no_recompute(tp, pp, recompute, counted, recomputed_layers):
    ref_loss, ref_grads, ref_calls = _step(_cfg(tp, pp, None), counted)
    loss, grads, calls = _step(_cfg(tp, pp, recompute), counted)
    assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss)
    assert_close_rel(grads, ref_grads, rtol=1e-6)
    # Each recomputed layer (of this rank's stage) runs once more per micro-batch in the backward.
    microbatches = len(my_microbatches(0))
    assert calls - ref_calls == recomputed_layers * microbatches, (calls, ref_calls)


def _tower_grads(towers: bool):
    cfg = RunConfig()
    cfg.recompute.towers = towers
    initialize_parallel(2, 1, None)
    set_seed(7)
    omni = OmniConfig()
    model = build_omni_model(cfg.validate(2), omni=omni).train()
    calls = [0]
    # A module inside each block: transformers checkpoints a block's forward, so hooks on the
    # block itself stay outside the checkpoint and run once. Pre-hooks: the non-reentrant
    # recompute stops as soon as the last saved tensor is back, inside the block's last module.
    for inner in (*(b.mlp for b in model.visual.blocks), *(layer.fc1 for layer in model.audio_tower.layers)):
        inner.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    gen = torch.Generator().manual_seed(3)
    v = omni.vision
    grid = torch.tensor([[2, 4, 4]])
    pixels = torch.randn(32, v.in_channels * v.temporal_patch_size * v.patch_size**2, generator=gen)
    mel = torch.randn(1, omni.audio.num_mel_bins, 40, generator=gen)
    vision = encode_vision(model.visual, pixels, grid).tokens
    loss = vision.square().sum() + encode_audio(model.audio_tower, mel, None).square().sum()
    loss.backward()
    grads = {f"{tower}.{n}": p.grad.clone() for tower in ("visual", "audio_tower")
             for n, p in getattr(model, tower).named_parameters() if p.grad is not None}
    return loss.item(), grads, calls[0]


def test_tower_recompute_matches_no_recompute():
    ref_loss, ref_grads, ref_calls = _tower_grads(False)
    loss, grads, calls = _tower_grads(True)
    assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss)
    assert_close_rel(grads, ref_grads, rtol=1e-6)
    assert calls == 2 * ref_calls > 0  # every block ran again in the backward
