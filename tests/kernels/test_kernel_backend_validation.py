"""Bad inputs fail with errors that name the argument; backend selection is explicit."""
import pytest
import torch

from megatron_omni.kernels import vocab_parallel_kl, vocab_parallel_logprob_entropy
from megatron_omni.kernels.common import triton_common
from megatron_omni.kernels.common.backend import resolve_backend

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

S = torch.zeros(4, 10)


@pytest.mark.parametrize("kwargs, field", [
    (dict(student_logits=S, teacher_logits=torch.zeros(4, 11)), "teacher_logits: shape"),
    (dict(student_logits=S.double(), teacher_logits=S.double()), "student_logits: dtype"),
    (dict(student_logits=torch.zeros(4, 10, dtype=torch.long), teacher_logits=S), "student_logits: dtype"),
    (dict(student_logits=torch.zeros(10), teacher_logits=torch.zeros(10)), "student_logits: must have shape"),
    (dict(student_logits=S, teacher_logits=S.numpy()), "teacher_logits: must be a torch.Tensor"),
    (dict(student_logits=S, teacher_logits=S, mode="kl"), "mode"),
    (dict(student_logits=S, teacher_logits=S, mode="jsd", beta=1.5), "beta"),
    (dict(student_logits=S, teacher_logits=S, temperature=0.0), "temperature"),
    (dict(student_logits=S, teacher_logits=S, vocab_size=11), "vocab_size"),
    (dict(student_logits=S, teacher_logits=S, vocab_size=0), "vocab_size"),
    (dict(student_logits=S, teacher_logits=S, row_mask=torch.ones(4)), "row_mask: must be a bool"),
    (dict(student_logits=S, teacher_logits=S, row_mask=torch.ones(5, dtype=torch.bool)), "row_mask: shape"),
    (dict(student_logits=S, teacher_logits=S, row_index=torch.tensor([0, 4])), "row_index: values"),
    (dict(student_logits=S, teacher_logits=S, row_index=torch.tensor([1, 1])), "row_index: contains duplicate"),
    (dict(student_logits=S, teacher_logits=S, row_index=torch.tensor([0.0])), "row_index: must be an int"),
    (dict(student_logits=S, teacher_logits=S, row_mask=torch.ones(4, dtype=torch.bool),
          row_index=torch.tensor([0])), "row_mask/row_index"),
    (dict(student_logits=S, teacher_logits=S, backend="cuda"), "backend"),
    (dict(student_logits=S.t(), teacher_logits=S.t(), inplace_backward=True), "inplace_backward"),
])
def test_kl_rejects(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        vocab_parallel_kl(**kwargs)


def test_rejects_mixed_devices():
    # The meta device stands in for a second device: the check fails before any computation.
    meta = torch.empty(4, 10, device="meta")
    with pytest.raises(ValueError, match="teacher_logits: is on meta"):
        vocab_parallel_kl(S, meta)
    with pytest.raises(ValueError, match="row_mask: is on meta"):
        vocab_parallel_kl(S, S, row_mask=torch.ones(4, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match="target_ids: is on meta"):
        vocab_parallel_logprob_entropy(S, torch.zeros(4, dtype=torch.long, device="meta"))


@pytest.mark.parametrize("targets, field", [
    (torch.zeros(4), "target_ids: must be an int"),
    (torch.zeros(3, dtype=torch.long), "target_ids: shape"),
    (torch.tensor([0, 1, 2, 10]), r"target_ids: values must lie in \[0, 10\)"),
    (torch.tensor([0, 1, 2, -1]), "target_ids: values"),
])
def test_logprob_rejects(targets, field):
    with pytest.raises(ValueError, match=field):
        vocab_parallel_logprob_entropy(S, targets)


def test_logprob_checks_targets_against_real_vocab():
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        vocab_parallel_logprob_entropy(S, torch.tensor([0, 1, 2, 8]), vocab_size=8)
    # ... but only on the selected rows
    vocab_parallel_logprob_entropy(S, torch.tensor([0, 1, 2, 8]), vocab_size=8,
                                   row_mask=torch.tensor([True, True, True, False]))


def test_backend_selection(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "triton"  # the test session runs Triton's interpreter
    assert resolve_backend("torch", cpu) == "torch"
    monkeypatch.setattr(triton_common, "INTERPRETED", False)
    assert resolve_backend("auto", cpu) == "torch"
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", cpu)
    # With neither CUDA nor the interpreter, the op still runs, on the chunked path.
    out = vocab_parallel_kl(torch.randn(3, 7), torch.randn(3, 7))
    assert out.shape == (3,) and (out > 0).all()
