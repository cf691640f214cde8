"""topk_tail_kl under a real 2-process gloo tensor-parallel group (launched by
tests/test_dist_suites.py through torchrun): each rank holds its vocabulary slice of
the same full logits; the loss must equal the single-process dense reference's and each rank's
gradient its slice of the reference's gradient. The padded vocabulary leaves the last rank fewer
real columns than k = 400 asks of it; integer teacher logits put ties across the shard boundary."""
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from megatron_omni.kernels import topk_tail_kl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))  # the oracles beside the kernel tests
import test_kernels_tp  # noqa: E402
from kernel_oracles import GRAD_ATOL, KL_ATOL, assert_close, kl_oracle, make_logits, topk_oracle  # noqa: E402

group = test_kernels_tp.group  # the gloo world: the fixture of the other kernel TP tests
ROWS, V_LOCAL, V_REAL = 40, 300, 593


@pytest.mark.parametrize("teacher_kind", ["plain", "tied"])
@pytest.mark.parametrize("k", [7, 400, 600])
@pytest.mark.parametrize("mode", ["forward", "reverse", "jsd"])
def test_topk_tail_kl_matches_the_dense_reference(group, mode, k, teacher_kind):
    rank, world = dist.get_rank(), dist.get_world_size()

    def mine(x):  # this rank's vocabulary slice
        return x[:, rank * V_LOCAL:(rank + 1) * V_LOCAL].contiguous()

    student = make_logits((ROWS, world * V_LOCAL), 11)
    teacher = make_logits((ROWS, world * V_LOCAL), 12, scale=2.0)
    if teacher_kind == "tied":
        teacher = teacher.round()
    gen = torch.Generator().manual_seed(13)
    mask, weights = torch.rand(ROWS, generator=gen) > 0.3, torch.rand(ROWS, generator=gen) + 0.5
    kw = dict(mode=mode, beta=0.6, temperature=0.9, vocab_size=V_REAL)
    s = mine(student).requires_grad_()
    out = topk_tail_kl(s, mine(teacher), k=k, row_mask=mask, group=group, **kw)
    (out * weights).sum().backward()
    ref, ref_grad = topk_oracle(student, teacher, mask, weights, k=k, **kw)
    assert_close(out, ref, KL_ATOL, f"loss on rank {rank}")
    assert_close(s.grad, mine(ref_grad), GRAD_ATOL, f"student grad on rank {rank}")
    if k >= V_REAL:  # no tail: the full-vocabulary divergence
        full, full_grad, _ = kl_oracle(student, teacher, row_mask=mask, weights=weights, **kw)
        assert_close(out, full, KL_ATOL, f"loss vs kl_reference on rank {rank}")
        assert_close(s.grad, mine(full_grad), GRAD_ATOL, f"student grad vs kl_reference on rank {rank}")
