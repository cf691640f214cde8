"""TP / PP / TPxPP / interleaved PP / distributed optimizer / resharded checkpoints against the
single-process run. Runs inside `torchrun --nproc-per-node 4` (tests/test_dist_suites.py:
parallel_equivalence-x4)."""
import dataclasses
import os
import tempfile
from functools import partial

import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from parallel_helpers import assert_close_rel, full_tensors

from megatron_omni.algorithms.lm import collate, lm_forward_step
from megatron_omni.data.text_corpus import TextWindows, generate_sentences
from megatron_omni.models.decoder import build_decoder
from megatron_omni.parallel import init_distributed, initialize_parallel, set_seed
from megatron_omni.training.checkpoint import load_checkpoint, save_checkpoint
from megatron_omni.training.config import RunConfig
from megatron_omni.training.model_setup import build_model_chunks
from megatron_omni.training.optimizer import build_optimizer
from megatron_omni.training.step import optimizer_step, run_microbatches

GLOBAL_BATCH, MICRO, SEQ = 8, 2, 32


@pytest.fixture(scope="module", autouse=True)
def world():
    init_distributed()
    assert dist.get_world_size() == 4
    yield


def make_cfg(tp=1, pp=1, vpp=None, tied=True, dist_opt=False, ep=1, moe=False) -> RunConfig:
    cfg = RunConfig()
    if moe:  # a Qwen3-Omni-style decoder: 4 experts top-2 in every layer, q/k norms, interleaved MRoPE
        cfg.model = dataclasses.replace(
            cfg.model, family="qwen3_omni_moe", add_qkv_bias=False, qk_layernorm=True, mrope_interleaved=True,
            num_moe_experts=4, moe_ffn_hidden_size=32, moe_router_topk=2, moe_norm_topk_prob=True,
            moe_aux_loss_coeff=0.01)
    cfg.parallel.expert_model_parallel_size = ep
    cfg.model.vocab_size = 512  # no TP-dependent padding: padded rows would change the softmax
    cfg.model.tie_word_embeddings = tied
    cfg.parallel.tensor_model_parallel_size = tp
    cfg.parallel.pipeline_model_parallel_size = pp
    cfg.parallel.virtual_pipeline_model_parallel_size = vpp
    cfg.parallel.use_distributed_optimizer = dist_opt
    cfg.optimizer.lr = 1e-2
    cfg.optimizer.clip_grad = 0.0
    cfg.optimizer.lr_decay_style = "constant"
    cfg.optimizer.weight_decay = 0.0
    cfg.train.micro_batch_size = MICRO
    cfg.train.global_batch_size = GLOBAL_BATCH
    cfg.train.seq_length = SEQ
    return cfg.validate(4)


DATASET = TextWindows(generate_sentences(200, 0), SEQ)


def global_batch(step: int) -> list[int]:
    return list(range(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH))


def my_microbatches(step: int) -> list[dict]:
    """This data-parallel rank's share of the global batch, as micro-batches."""
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    share = GLOBAL_BATCH // dp
    mine = global_batch(step)[dp_rank * share : (dp_rank + 1) * share]
    return [collate([DATASET[i] for i in mine[j : j + MICRO]]) for j in range(0, len(mine), MICRO)]


def setup(cfg: RunConfig, ddp=True):
    p = cfg.parallel
    initialize_parallel(p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size,
                        p.expert_model_parallel_size)
    set_seed(cfg.train.seed)
    return build_model_chunks(cfg, build_decoder, wrap_ddp=ddp)


def reference_grads(tied=True):
    """Single-process loss and gradients: TP=1, PP=1, no DDP, the whole global batch."""
    cfg = make_cfg(tied=tied)
    (model,) = setup(cfg, ddp=False)
    microbatches = [collate([DATASET[i] for i in global_batch(0)[j : j + MICRO]]) for j in range(0, GLOBAL_BATCH, MICRO)]
    tokens = sum(mb["loss_mask"].sum() for mb in microbatches)
    total = 0.0
    for mb in microbatches:
        output, loss_func = lm_forward_step(mb, model, mrope=True)
        loss_sum, _, _ = loss_func(output)
        (loss_sum / tokens).backward()
        total += loss_sum.item() / tokens.item()
    grads = {name: p.grad.detach().float().clone() for name, p in model.named_parameters()}
    return total, grads


@pytest.fixture(scope="module")
def single_process():
    """{tied: (loss, grads)}: the single-process reference of each embedding kind, which every layout is compared with."""
    return {tied: reference_grads(tied) for tied in (True, False)}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize(
    "tp,pp,vpp",
    [(2, 1, None), (1, 2, None), (2, 2, None), (1, 2, 2)],
    ids=["tp2", "pp2", "tp2pp2", "pp2-interleaved2"],
)
def test_loss_and_grads_match_single_process(single_process, tp, pp, vpp, tied):
    ref_loss, ref_grads = single_process[tied]
    cfg = make_cfg(tp, pp, vpp, tied=tied)
    chunks = setup(cfg)
    for chunk in chunks:
        chunk.zero_grad_buffer()
    metrics = run_microbatches(chunks, my_microbatches(0), partial(lm_forward_step, mrope=True), SEQ, MICRO)
    # run_microbatches returns the DP mean of per-micro-batch means == the global-batch mean.
    assert abs(metrics["lm_loss"] - ref_loss) <= 1e-6 * abs(ref_loss)
    assert_close_rel(full_tensors(chunks, "grad"), ref_grads, rtol=1e-6)


def _moe_step(ep: int, pp: int):
    chunks = setup(make_cfg(pp=pp, ep=ep, moe=True))
    for chunk in chunks:
        chunk.zero_grad_buffer()
    metrics = run_microbatches(chunks, my_microbatches(0), partial(lm_forward_step, mrope=True), SEQ, MICRO)
    return metrics["lm_loss"], full_tensors(chunks, "grad")


@pytest.fixture(scope="module")
def moe_reference():
    """The MoE decoder's loss and gradients with every expert on every rank (EP = 1, DP = 4), the
    load-balancing loss's gradients included."""
    return _moe_step(ep=1, pp=1)


@pytest.mark.parametrize("ep,pp", [(2, 1), (4, 1), (2, 2)], ids=["ep2", "ep4", "ep2pp2"])
def test_moe_expert_parallel_matches_all_experts_on_every_rank(moe_reference, ep, pp):
    """Experts split over 2 or 4 ranks (with PP=2: two stages of EP=2): the same initial weights
    (drawn by global expert index), loss and gradients as EP = 1."""
    ref_loss, ref_grads = moe_reference
    loss, grads = _moe_step(ep, pp)
    assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss)
    assert_close_rel(grads, ref_grads, rtol=1e-5)
    assert any(".local_experts.3." in name for name in grads)


def test_distributed_optimizer_tp2_dp2_matches_single_rank_adam():
    cfg = make_cfg(tp=2, dist_opt=True)
    # The key bias has a gradient of exactly zero in theory (softmax ignores a constant shift),
    # i.e. rounding noise in practice; Adam with eps=1e-8 would turn that noise into full-size
    # steps in both runs. A larger eps keeps the comparison about the optimizer, not the noise.
    cfg.optimizer.adam_eps = 1e-4
    # Reference: the plain model and torch's own Adam, three steps on the whole global batch.
    ref_cfg = make_cfg()
    ref_cfg.optimizer.adam_eps = cfg.optimizer.adam_eps
    (ref,) = setup(ref_cfg, ddp=False)
    adam = torch.optim.Adam(ref.parameters(), lr=cfg.optimizer.lr, betas=(cfg.optimizer.adam_beta1, cfg.optimizer.adam_beta2),
                            eps=cfg.optimizer.adam_eps)
    for step in range(3):
        adam.zero_grad()
        mbs = [collate([DATASET[i] for i in global_batch(step)[j : j + MICRO]]) for j in range(0, GLOBAL_BATCH, MICRO)]
        tokens = sum(mb["loss_mask"].sum() for mb in mbs)
        for mb in mbs:
            output, loss_func = lm_forward_step(mb, ref, mrope=True)
            (loss_func(output)[0] / tokens).backward()
        adam.step()
    expected = {n: p.detach().float().clone() for n, p in ref.named_parameters()}

    chunks = setup(cfg)
    optimizer, scheduler = build_optimizer(cfg, chunks)
    for step in range(3):
        optimizer_step(chunks, optimizer, scheduler, my_microbatches(step), partial(lm_forward_step, mrope=True), SEQ, MICRO)
    assert_close_rel(full_tensors(chunks, "data"), expected, rtol=1e-5)


def _train_steps(chunks, optimizer, scheduler, steps):
    forward = partial(lm_forward_step, mrope=True)
    return [optimizer_step(chunks, optimizer, scheduler, my_microbatches(s), forward, SEQ, MICRO)["lm_loss"] for s in steps]


def test_checkpoint_tp2_resumes_at_pp2_with_same_losses():
    folder = [tempfile.mkdtemp() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(folder, src=0)
    save_dir = os.path.join(folder[0], "ckpt")

    cfg = make_cfg(tp=2)
    chunks = setup(cfg)
    optimizer, scheduler = build_optimizer(cfg, chunks)
    _train_steps(chunks, optimizer, scheduler, [0, 1])
    save_checkpoint(save_dir, 2, chunks, optimizer, {"scheduler": scheduler.state_dict()})
    expected = _train_steps(chunks, optimizer, scheduler, [2, 3])

    cfg = make_cfg(tp=1, pp=2)
    chunks = setup(cfg)
    optimizer, scheduler = build_optimizer(cfg, chunks)
    run_state = load_checkpoint(os.path.join(save_dir, "iter_0000002"), chunks, optimizer)
    scheduler.load_state_dict(run_state["scheduler"])
    resumed = _train_steps(chunks, optimizer, scheduler, [2, 3])
    for a, b in zip(resumed, expected):
        assert abs(a - b) <= 1e-5 * abs(b), (resumed, expected)
