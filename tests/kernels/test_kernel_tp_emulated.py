"""Tensor parallelism emulated in one process: the per-shard primitives run on vocabulary slices
and their statistics are stacked, merged and finalised by the very functions the distributed
path calls after its all-gather (and summed where it all-reduces)."""
import importlib
import math

import pytest
import torch
from kernel_oracles import GRAD_ATOL, KL_ATOL, assert_close, kl_oracle, logprob_oracle, make_logits, with_extremes

from megatron_omni.kernels.common.vocab_shards import RowSelection, TPGroup, vocab_shard
from megatron_omni.kernels.kl.stats import JSD, KLSpec, add_jsd_sums, loss_from, merge_shard_stats, row_stats_from
from megatron_omni.kernels.logprob_entropy.stats import local_targets, logprob_entropy_from, merge_lp_shard_stats

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ROWS = 48
# name -> (shard sizes, real vocabulary size, logits); shard starts are the running sums of the
# sizes. Logits "plain", "extreme" (near +-1e4, falling in different shards for different rows) or
# "masked_shard" (every other row masked at -inf over all of the third shard, in both logits).
LAYOUTS = {
    "tp1": ([997], 997, "plain"),
    "tp3_even_padded": ([334, 334, 334], 997, "plain"),
    "tp4_even_padded": ([250, 250, 250, 250], 997, "plain"),
    "tp3_uneven": ([301, 450, 249], 995, "plain"),
    "tp4_padding_only_shard": ([250, 250, 250, 250], 700, "plain"),
    "tp4_extreme_logits": ([250, 250, 250, 250], 997, "extreme"),
    "tp4_masked_shard": ([250, 250, 250, 250], 997, "masked_shard"),
}
KL_IMPLS = {"triton": "megatron_omni.kernels.kl.triton_impl", "torch": "megatron_omni.kernels.kl.chunked"}
LP_IMPLS = {"triton": "megatron_omni.kernels.logprob_entropy.triton_impl",
            "torch": "megatron_omni.kernels.logprob_entropy.chunked"}


def _shards(sizes, vocab_size):
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    return [(start, vocab_shard(size, TPGroup(None, r, len(sizes)), vocab_size, start))
            for r, (start, size) in enumerate(zip(starts, sizes))]


def _hostile(x, kind, vocab_size):
    if kind == "extreme":
        return with_extremes(x, 4, vocab_size)
    if kind == "masked_shard":
        x = x.clone()
        x[::2, 500:750] = -math.inf
    return x


def _selection():
    gen = torch.Generator().manual_seed(5)
    mask = torch.rand(ROWS, generator=gen) > 0.25
    return mask, RowSelection(ROWS, mask.nonzero().squeeze(1))


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("mode", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_kl_over_emulated_shards(backend, mode, layout):
    impl = importlib.import_module(KL_IMPLS[backend])
    sizes, vocab_size, kind = LAYOUTS[layout]
    student = _hostile(make_logits((ROWS, sum(sizes)), 1, scale=1.5), kind, vocab_size)
    teacher = _hostile(make_logits((ROWS, sum(sizes)), 2, scale=1.5), kind, vocab_size)
    mask, rows = _selection()
    weights = torch.rand(ROWS, generator=torch.Generator().manual_seed(6)) + 0.5
    spec = KLSpec.of(mode, 0.4, 0.8)
    shards = _shards(sizes, vocab_size)

    def piece(x, start, shard):
        return x[:, start:start + shard.n_cols]

    local = [impl.shard_stats(piece(student, a, sh), piece(teacher, a, sh), rows, sh, spec) for a, sh in shards]
    row_stats = row_stats_from(merge_shard_stats(torch.stack(local), spec), spec)  # = all-gather + merge
    if spec.mode == JSD:
        sums = sum(impl.jsd_shard_sums(piece(student, a, sh), piece(teacher, a, sh), rows, sh, spec, row_stats)
                   for a, sh in shards)  # = all-reduce SUM
        row_stats = add_jsd_sums(row_stats, sums)
    loss = rows.scatter(loss_from(row_stats, spec))

    grad_rows = rows.gather(weights)
    grads_s, grads_t = [], []
    for a, sh in shards:
        g_s, g_t = torch.empty(ROWS, sh.n_cols), torch.empty(ROWS, sh.n_cols)
        impl.backward(piece(student, a, sh), piece(teacher, a, sh), rows, sh, spec, row_stats, grad_rows, g_s, g_t)
        grads_s.append(g_s)
        grads_t.append(g_t)

    kw = dict(mode=mode, beta=0.4, temperature=0.8, vocab_size=vocab_size)
    ref, ref_s, ref_t = kl_oracle(student, teacher, row_mask=mask, weights=weights, teacher_grad=True, **kw)
    assert_close(loss, ref, KL_ATOL, "KL")
    assert_close(torch.cat(grads_s, dim=1), ref_s, GRAD_ATOL, "student grad")
    assert_close(torch.cat(grads_t, dim=1), ref_t, GRAD_ATOL, "teacher grad")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_logprob_entropy_over_emulated_shards(backend, layout):
    impl = importlib.import_module(LP_IMPLS[backend])
    sizes, vocab_size, kind = LAYOUTS[layout]
    logits = _hostile(make_logits((ROWS, sum(sizes)), 3, scale=2.0), kind, vocab_size)
    targets = torch.randint(0, vocab_size, (ROWS,), generator=torch.Generator().manual_seed(7))
    targets[(logits.gather(1, targets[:, None]) == -math.inf).squeeze(1)] = 0  # a target with mass
    mask, rows = _selection()
    gen = torch.Generator().manual_seed(8)
    w_lp, w_ent = torch.rand(ROWS, generator=gen), torch.rand(ROWS, generator=gen)
    inv_temp = 1 / 1.3
    shards = _shards(sizes, vocab_size)
    sel_targets = rows.gather(targets)

    local = [impl.shard_stats(logits[:, a:a + sh.n_cols], local_targets(sel_targets, sh.start, sh.n_valid), rows, sh,
                              inv_temp) for a, sh in shards]
    logprob, entropy, row_stats = logprob_entropy_from(merge_lp_shard_stats(torch.stack(local), inv_temp), inv_temp)
    grads = []
    for a, sh in shards:
        g = torch.empty(ROWS, sh.n_cols)
        impl.backward(logits[:, a:a + sh.n_cols], local_targets(sel_targets, sh.start, sh.n_valid), rows, sh,
                      inv_temp, row_stats, rows.gather(w_lp), rows.gather(w_ent), g)
        grads.append(g)

    ref_lp, ref_ent, ref_g = logprob_oracle(logits, targets, temperature=1.3, vocab_size=vocab_size, row_mask=mask,
                                            w_logprob=w_lp, w_entropy=w_ent)
    # A token 1e4 below the top logit has log-prob ~ -1e4, which fp32 holds to ~1e-3 only.
    assert_close(rows.scatter(logprob), ref_lp, KL_ATOL, "log-prob", rtol=2e-7 if kind == "extreme" else 0.0)
    assert_close(rows.scatter(entropy), ref_ent, KL_ATOL, "entropy")
    assert_close(torch.cat(grads, dim=1), ref_g, GRAD_ATOL, "logits grad")
