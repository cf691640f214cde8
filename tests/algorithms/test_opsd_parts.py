"""OmniOPSD pieces in one process: the distillation loss against a dense torch definition, the
completion-row alignment and its error, the EMA teacher, and the teacher/config checks."""
import dataclasses

import pytest
import torch

from megatron_omni.algorithms.opsd.alignment import AlignmentError, completion_rows
from megatron_omni.algorithms.opsd.config import DistillationLossConfig, OPSDConfig
from megatron_omni.algorithms.opsd.loss import DistillationLoss
from megatron_omni.algorithms.opsd.teacher import Teacher
from megatron_omni.config import ConfigError
from megatron_omni.data.batch import OmniBatch
from megatron_omni.kernels import kl_reference, topk_tail_kl_reference
from megatron_omni.runs.config import OmniTrainConfig
from megatron_omni.runs.omni import teacher_model_config


@pytest.mark.parametrize("divergence,beta,temperature", [
    ("reverse", 0.5, 1.0), ("forward", 0.5, 1.0), ("jsd", 0.5, 1.0), ("jsd", 0.2, 1.0), ("reverse", 0.5, 2.0),
])
def test_loss_and_gradient_equal_dense_reference(divergence, beta, temperature):
    torch.manual_seed(0)
    student = (3 * torch.randn(37, 101)).requires_grad_()
    teacher = 3 * torch.randn(37, 101)
    loss = DistillationLoss(DistillationLossConfig(divergence=divergence, beta=beta, temperature=temperature),
                            vocab_size=97)  # the last 4 columns are vocabulary padding
    total, count, metrics = loss(student, teacher)
    assert count.item() == 37 and count.dtype == torch.int32
    assert metrics["distill_kl"][1].item() == 37
    reference_student = student.detach().double().requires_grad_()
    expected = kl_reference(reference_student, teacher, divergence, beta, temperature, 97, torch.float64).sum()
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    total.backward()
    expected.backward()
    torch.testing.assert_close(student.grad.double(), reference_student.grad, rtol=1e-5, atol=1e-6)
    assert student.grad[:, 97:].abs().max().item() == 0.0


def test_teacher_is_never_back_propagated():
    student = torch.randn(5, 16, requires_grad=True)
    teacher = torch.randn(5, 16, requires_grad=True)  # the student itself scoring, as with teacher=student
    total, _, _ = DistillationLoss(DistillationLossConfig(), vocab_size=16)(student, teacher)
    total.backward()
    assert teacher.grad is None and student.grad is not None


def test_identical_logits_give_exactly_zero():
    logits = torch.randn(9, 50, dtype=torch.bfloat16)
    for divergence in ("reverse", "forward", "jsd"):
        total, _, _ = DistillationLoss(DistillationLossConfig(divergence=divergence), vocab_size=50)(logits.clone(), logits)
        assert total.item() == 0.0, divergence


def batch_of(rows_ids: list[list[int]], completion_starts: list[int], pad: int = 0) -> OmniBatch:
    """A padded batch whose loss mask covers each row's tokens from its completion start on."""
    length = max(len(r) for r in rows_ids) + 1
    tokens = torch.full((len(rows_ids), length), pad)
    labels = torch.full((len(rows_ids), length), pad)
    mask = torch.zeros(len(rows_ids), length)
    for b, (ids, start) in enumerate(zip(rows_ids, completion_starts)):
        tokens[b, : len(ids)] = torch.tensor(ids)
        labels[b, : len(ids) - 1] = torch.tensor(ids[1:])
        mask[b, start - 1 : len(ids) - 1] = 1
    return OmniBatch(tokens=tokens, labels=labels, loss_mask=mask, position_ids=torch.zeros(3, *tokens.shape, dtype=torch.long),
                     attention_mask=tokens != pad, rope_deltas=torch.zeros(len(rows_ids), dtype=torch.long),
                     sample_ids=[f"s{b}" for b in range(len(rows_ids))], prompt_lengths=completion_starts)


def test_completion_rows_align_the_same_tokens():
    # Student prompts [1, 2] and [1]; teacher prompts carry 3 more tokens; completions 7 8 9 / 5 6.
    student = batch_of([[1, 2, 7, 8, 9], [1, 5, 6]], [2, 1])
    teacher = batch_of([[1, 2, 40, 41, 42, 7, 8, 9], [1, 40, 41, 42, 5, 6]], [5, 4])
    rows = completion_rows(student, teacher)
    assert rows.student.tolist() == [[0, 1], [0, 2], [0, 3], [1, 0], [1, 1]]
    assert rows.teacher.tolist() == [[0, 4], [0, 5], [0, 6], [1, 3], [1, 4]]
    logits = torch.arange(2 * 8 * 3).view(2, 8, 3)
    assert torch.equal(student.labels[rows.student[:, 0], rows.student[:, 1]],
                       teacher.labels[rows.teacher[:, 0], rows.teacher[:, 1]])
    assert rows.select(logits, "teacher").shape == (5, 3)


def test_misaligned_completion_names_sample_and_first_mismatch():
    student = batch_of([[1, 2, 7, 8, 9]], [2])
    teacher = batch_of([[1, 2, 40, 7, 3, 9]], [3])
    mismatch = r"sample s0: 3 vs 3 tokens, first mismatch at completion token 1: student 8, teacher 3"
    with pytest.raises(AlignmentError, match=mismatch):
        completion_rows(student, teacher)
    shorter = batch_of([[1, 2, 40, 7, 8]], [3])
    ended = r"3 vs 2 tokens, first mismatch at completion token 2: student 9, teacher end of completion"
    with pytest.raises(AlignmentError, match=ended):
        completion_rows(student, shorter)


def test_ema_teacher_update():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema = Teacher("ema", [teacher], ema_decay=0.9)
    ema.update([student], step=0)  # the first step starts from the initial weights
    assert all(torch.equal(p, b) for p, b in zip(teacher.parameters(), before))
    ema.update([student], step=1)
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s.detach())
    assert ema.checkpointed_models() == {"teacher": [teacher]}
    assert Teacher("initial", [teacher]).checkpointed_models() == {}
    assert Teacher("student", None).model_chunks(["policy"]) == ["policy"]
    with pytest.raises(ValueError, match="'initial' teacher needs model chunks"):
        Teacher("initial", None)


def test_teacher_with_another_vocabulary_is_refused(tmp_path):
    other = tmp_path / "teacher.yaml"
    other.write_text("model: {vocab_size: 1024, hidden_size: 256, num_layers: 8}\n")
    cfg = OmniTrainConfig(algorithm="opsd")
    cfg.model.vocab_size = 768
    cfg.opsd = OPSDConfig(teacher="checkpoint", teacher_checkpoint=str(tmp_path / "ckpt"), teacher_config=str(other))
    with pytest.raises(ConfigError, match=r"teacher's model.vocab_size is 1024, the student's is 768"):
        teacher_model_config(cfg)
    other.write_text("model: {vocab_size: 768, hidden_size: 256, num_layers: 8}\n")
    teacher = teacher_model_config(cfg)
    assert (teacher.model.hidden_size, teacher.model.num_layers, teacher.init_from) == (256, 8, str(tmp_path / "ckpt"))
    assert teacher.omni.tokens == cfg.omni.tokens and cfg.model.hidden_size != 256
    assert dataclasses.asdict(teacher.parallel) == dataclasses.asdict(cfg.parallel)


def test_top_k_teacher_support_with_tail_bucket():
    torch.manual_seed(1)
    student = (2 * torch.randn(11, 64)).requires_grad_()
    teacher = 2 * torch.randn(11, 64)
    full, _, _ = DistillationLoss(DistillationLossConfig(), vocab_size=60)(student, teacher)
    every, _, _ = DistillationLoss(DistillationLossConfig(top_k=60), vocab_size=60)(student, teacher)
    assert every.item() == pytest.approx(full.item(), rel=1e-5)  # an empty tail: the full KL
    top5, _, _ = DistillationLoss(DistillationLossConfig(top_k=5, divergence="forward"), vocab_size=60)(student, teacher)
    expected = topk_tail_kl_reference(student.detach(), teacher, 5, "forward", 0.5, 1.0, 60, torch.float64).sum()
    assert top5.item() == pytest.approx(expected.item(), rel=1e-5) and top5.item() < full.item()
