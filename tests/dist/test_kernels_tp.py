"""The kernels under a real 2-process gloo tensor-parallel group (launched by
tests/test_dist_suites.py through torchrun): each rank holds its vocabulary slice
of the same full logits; losses must equal the unsharded oracle's and each rank's gradient its
slice of the oracle's gradient. The padded vocabulary leaves the last rank fewer real columns."""
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from megatron_omni.kernels import evidence_masked_kl, vocab_parallel_kl, vocab_parallel_logprob_entropy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))  # the oracles beside the kernel tests
from kernel_oracles import GRAD_ATOL, KL_ATOL, assert_close, kl_oracle, logprob_oracle, make_logits  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ROWS, V_LOCAL, V_REAL = 40, 300, 593


@pytest.fixture(scope="module")
def group():
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    yield dist.group.WORLD


def _slice(x, rank):
    return x[..., rank * V_LOCAL:(rank + 1) * V_LOCAL].contiguous()


def _mask_weights():
    gen = torch.Generator().manual_seed(3)
    return torch.rand(ROWS, generator=gen) > 0.3, torch.rand(ROWS, generator=gen) + 0.5


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("mode", ["forward", "reverse", "jsd"])
def test_kl(group, backend, mode):
    rank, world = dist.get_rank(), dist.get_world_size()
    student, teacher = make_logits((ROWS, world * V_LOCAL), 1), make_logits((ROWS, world * V_LOCAL), 2)
    mask, weights = _mask_weights()
    kw = dict(mode=mode, beta=0.6, temperature=0.9, vocab_size=V_REAL)
    s = _slice(student, rank).requires_grad_()
    t = _slice(teacher, rank).requires_grad_()
    out = vocab_parallel_kl(s, t, row_mask=mask, group=group, backend=backend, **kw)
    (out * weights).sum().backward()
    ref, ref_s, ref_t = kl_oracle(student, teacher, row_mask=mask, weights=weights, teacher_grad=True, **kw)
    assert_close(out, ref, KL_ATOL, f"KL on rank {rank}")
    assert_close(s.grad, _slice(ref_s, rank), GRAD_ATOL, f"student grad on rank {rank}")
    assert_close(t.grad, _slice(ref_t, rank), GRAD_ATOL, f"teacher grad on rank {rank}")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_logprob_entropy(group, backend):
    rank, world = dist.get_rank(), dist.get_world_size()
    logits = make_logits((ROWS, world * V_LOCAL), 4, scale=2.0)
    targets = torch.randint(0, V_REAL, (ROWS,), generator=torch.Generator().manual_seed(5))
    mask, weights = _mask_weights()
    x = _slice(logits, rank).requires_grad_()
    logprob, entropy = vocab_parallel_logprob_entropy(x, targets, group, 0.9, vocab_size=V_REAL, row_mask=mask,
                                                      backend=backend)
    ((logprob * weights).sum() - entropy.sum()).backward()
    ref_lp, ref_ent, ref_g = logprob_oracle(logits, targets, temperature=0.9, vocab_size=V_REAL, row_mask=mask,
                                            w_logprob=weights, w_entropy=-torch.ones(ROWS))
    assert_close(logprob, ref_lp, KL_ATOL, "log-prob")
    assert_close(entropy, ref_ent, KL_ATOL, "entropy")
    assert_close(x.grad, _slice(ref_g, rank), GRAD_ATOL, "logits grad")


def test_evidence_masked_kl_matches_unsharded(group):
    rank, world = dist.get_rank(), dist.get_world_size()
    full = make_logits((ROWS, world * V_LOCAL), 6)
    masked = {"visual": make_logits((ROWS, world * V_LOCAL), 7), "audio": make_logits((ROWS, world * V_LOCAL), 8)}
    gen = torch.Generator().manual_seed(9)
    masks = {"visual": torch.rand(ROWS, generator=gen) > 0.5, "audio": torch.rand(ROWS, generator=gen) > 0.5}
    x = _slice(full, rank).requires_grad_()
    sharded = evidence_masked_kl(x, {k: _slice(v, rank) for k, v in masked.items()}, masks, vocab_size=V_REAL,
                                 group=group)
    sharded.loss.backward()
    y = full.clone().requires_grad_()
    whole = evidence_masked_kl(y, masked, masks, vocab_size=V_REAL, backend="torch")
    whole.loss.backward()
    assert_close(sharded.loss, whole.loss, 1e-8, "loss")
    assert_close(x.grad, _slice(y.grad, rank), 1e-9, "full-logits grad")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_no_selected_rows(group, backend):
    rank = dist.get_rank()
    x = _slice(make_logits((ROWS, dist.get_world_size() * V_LOCAL), 10), rank).requires_grad_()
    out = vocab_parallel_kl(x, x.detach() + 1, row_mask=torch.zeros(ROWS, dtype=torch.bool), group=group,
                            backend=backend)
    out.sum().backward()
    assert (out == 0).all() and (x.grad == 0).all()
