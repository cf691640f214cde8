"""OmniOPSD under torchrun: the distillation loss on TP-sharded logits equals the dense
definition; with no privileged context and the frozen initial teacher the loss is exactly 0 at
step 0; one step (the teacher interleaved with the student at PP=1, scored first at PP=2) at
TP=2 and PP=2 equals the single-process step; a run with an EMA teacher resumes exactly; with
the teacher offloaded to the CPU (scored first at PP=1, its completion rows kept) the step is the
same to the last bit; with data.packing the teacher logits and the step equal the padded ones and
the packed step at PP=2 equals the packed single process.

Launched by tests/test_dist_suites.py as opsd_step-x1 (one process: computes the single-process
step and writes it to $OPSD_WORK/reference.pt) and opsd_step-x2 (two processes: compares with it;
its launcher fixture, opsd_reference, is the x1 launch).
"""
import os
from functools import partial
from pathlib import Path

import pytest
import rl_step_helpers
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from rl_step_helpers import check_resumes_exactly, check_step_matches, one_step, single_process_step, start_world, tiny_config

from megatron_omni.algorithms.opsd.config import DistillationLossConfig
from megatron_omni.algorithms.opsd.loss import DistillationLoss
from megatron_omni.kernels import kl_reference
from megatron_omni.parallel import destroy_parallel, initialize_parallel

WORK = Path(os.environ.get("OPSD_WORK", "/nonexistent"))
OPSD = ["opsd.group_size=2", "opsd.sampling.max_new_tokens=6", "opsd.grpo_weight=0.5"]
config = partial(tiny_config, "toy_omniopsd.yaml", WORK, overrides=OPSD)


@pytest.fixture(scope="module", autouse=True)
def world():
    start_world(WORK, "opsd_step-x1, opsd_step-x2")


@pytest.mark.parametrize("divergence,temperature", [("reverse", 1.0), ("forward", 1.5), ("jsd", 1.0)])
def test_loss_on_sharded_logits_equals_dense_reference(divergence, temperature):
    tp = dist.get_world_size()
    initialize_parallel(tp, 1)
    try:
        torch.manual_seed(0)  # every rank draws the same full logits and keeps its vocabulary shard
        vocab, padded = 90, 96
        student_full = 4 * torch.randn(23, padded, dtype=torch.float64)
        teacher_full = 4 * torch.randn(23, padded, dtype=torch.float64)
        width, rank = padded // tp, parallel_state.get_tensor_model_parallel_rank()
        student = student_full[:, rank * width : (rank + 1) * width].float().requires_grad_()
        teacher = teacher_full[:, rank * width : (rank + 1) * width].float()
        loss = DistillationLoss(DistillationLossConfig(divergence=divergence, beta=0.3, temperature=temperature), vocab,
                                group=parallel_state.get_tensor_model_parallel_group())
        total, count, _ = loss(student, teacher)
        reference = student_full.clone().requires_grad_()
        expected = kl_reference(reference, teacher_full, divergence, 0.3, temperature, vocab, torch.float64).sum()
        expected.backward()
        assert count.item() == 23
        assert abs(total.item() - expected.item()) <= 1e-5 * abs(expected.item())
        total.backward()
        # fp32 kernel vs float64 definition
        torch.testing.assert_close(student.grad.double(), reference.grad[:, rank * width : (rank + 1) * width],
                                   rtol=1e-4, atol=1e-5)
    finally:
        destroy_parallel()


def test_no_privileged_context_and_initial_teacher_give_zero_loss():
    metrics, _ = one_step(config(dist.get_world_size(), 1, **{"opsd.privileged": "false", "opsd.grpo_weight": 0}))
    assert metrics["teacher_prompt_extra_tokens"] == 0.0
    assert metrics["distill_kl"] == 0.0


def step(tp, pp):
    return one_step(config(tp, pp))


@pytest.fixture(scope="module")
def reference():
    """The single-process step: computed (and saved) by the one-process launch, loaded by the two-process one."""
    return single_process_step(WORK / "reference.pt", step)


def test_step_matches_single_process(reference):
    if dist.get_world_size() == 1:  # the reference itself: the privileged teacher disagrees with the student
        assert reference["metrics"]["distill_kl"] > 0 and reference["metrics"]["teacher_prompt_extra_tokens"] > 0
        return
    check_step_matches(reference, step, [(2, 1), (1, 2)],
                       ("reward_total", "completion_length", "distill_kl", "policy_loss", "teacher_prompt_extra_tokens"))


def test_stopped_run_with_ema_teacher_resumes_exactly():
    """Stopped and resumed with two prompt-loading workers per rank (the prompts of the step after
    the stop already read ahead): equal to the straight run without workers."""
    if dist.get_world_size() == 1:
        pytest.skip("the resume check runs in the two-process launch")
    # A fast EMA (0.5) and a larger learning rate make the teacher move visibly between steps.
    ema = partial(config, 2, 1, **{"opsd.teacher": "ema", "opsd.ema_decay": 0.5, "optimizer.lr": 1e-3, "optimizer.min_lr": 1e-3})
    check_resumes_exactly(ema, WORK / "resume", ("distill_kl", "reward_total", "policy_loss", "grad_norm"), workers=2)


def test_a_prompt_without_description_is_skipped_and_replaced(reference, capsys):
    if dist.get_world_size() > 1:
        pytest.skip("runs in the one-process launch")
    reader = "the OmniOPSD teacher's privileged prompt"
    rl_step_helpers.check_prompt_without_is_replaced(config, WORK, "description", reader, capsys)


def teacher_logits_by_completion(kept: dict, r, microbatches) -> None:
    """Check what an offloaded teacher scored first keeps, and keep each completion's teacher
    logits, keyed by its sample and completion tokens (the same in any layout)."""
    assert r.algorithm.teacher_first
    assert {p.device.type for chunk in r.algorithm.teacher.chunks for p in chunk.parameters()} == {"cpu"}
    for mb in microbatches:  # the completion rows of the teacher's view only, in the model's dtype
        assert mb.teacher_logits.shape[0] == mb.batch.loss_mask.sum() == mb.teacher_batch.loss_mask.sum()
        assert mb.teacher_logits.dim() == 2
        assert mb.teacher_logits.dtype == next(r.algorithm.teacher.chunks[0].parameters()).dtype
        rows = mb.rows.student
        for sample_id, (row, start, end) in zip(mb.batch.sample_ids, mb.batch.sample_spans()):
            mine = (rows[:, 0] == row) & (rows[:, 1] >= start) & (rows[:, 1] < end)
            kept[(sample_id, tuple(mb.batch.labels[row, rows[mine, 1]].tolist()))] = mb.teacher_logits[mine].clone()


@pytest.fixture(scope="module")
def offloaded_step():
    """The one-process step with the teacher offloaded (scored first) and its teacher logits."""
    kept = {}
    metrics, grads = one_step(config(1, 1, **{"opsd.offload_teacher": True}), inspect=partial(teacher_logits_by_completion, kept))
    return {"metrics": metrics, "grads": grads}, kept


def test_offloaded_teacher_scored_first_gives_the_same_step(reference, offloaded_step):
    if dist.get_world_size() > 1:
        pytest.skip("runs in the one-process launch")
    step, _ = offloaded_step
    rl_step_helpers.check_same_step(step["metrics"], step["grads"], reference)


# Packed rows of train.seq_length, the teacher scored first (offloaded) so its logits can be read.
PACKED = {"data.packing": True, "opsd.offload_teacher": True}


def packed_step(tp, pp, kept=None):
    inspect = None if kept is None else partial(teacher_logits_by_completion, kept)
    return one_step(config(tp, pp, **PACKED), inspect=inspect)


@pytest.fixture(scope="module")
def packed_reference():
    """The packed single-process step (x1 computes and saves it, x2 loads it) and, in the
    one-process launch, its teacher logits."""
    kept = {}
    return single_process_step(WORK / "packed_reference.pt", partial(packed_step, kept=kept)), kept


def test_packed_step_equals_padded_and_matches_single_process(reference, packed_reference, request):
    """Packed teacher logits and step equal the padded ones (1e-5); packed at PP=2 (the teacher's
    packed rows through its own pipeline schedule) equals the packed single process."""
    packed, packed_teacher = packed_reference
    keys = ("reward_total", "completion_length", "distill_kl", "policy_loss", "teacher_prompt_extra_tokens")
    if dist.get_world_size() > 1:
        check_step_matches(packed, packed_step, [(1, 2)], keys)
        return
    check_step_matches(reference, lambda tp, pp: (packed["metrics"], packed["grads"]), [(1, 1)], keys)
    _, padded_teacher = request.getfixturevalue("offloaded_step")
    assert packed_teacher.keys() == padded_teacher.keys() and len(padded_teacher) == 4
    for key, logits in padded_teacher.items():
        assert logits.shape[0] > 0
        torch.testing.assert_close(packed_teacher[key], logits, atol=1e-5, rtol=0)
