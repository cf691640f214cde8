"""Compiled Triton kernels on CUDA. Run with TRITON_INTERPRET=0 (the test session otherwise
defaults to the interpreter): `TRITON_INTERPRET=0 python -m pytest -q tests/kernels/test_kernel_gpu.py`."""
import pytest
import torch
from kernel_oracles import GRAD_ATOL, KL_ATOL, assert_close, kl_oracle, logprob_oracle, ulp

from megatron_omni.kernels import vocab_parallel_kl, vocab_parallel_logprob_entropy

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def compiled_triton():
    from megatron_omni.kernels.common import triton_common

    if triton_common.INTERPRETED:
        pytest.skip("Triton is in interpreter mode: run with TRITON_INTERPRET=0")


def _logits(shape, seed, dtype):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, generator=gen, device="cuda").to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["forward", "reverse", "jsd"])
def test_kl_matches_autograd_on_cuda(mode, dtype):
    rows, v_pad, v_real = 300, 32064, 32000
    student, teacher = _logits((rows, v_pad), 1, dtype), _logits((rows, v_pad), 2, dtype)
    gen = torch.Generator(device="cuda").manual_seed(3)
    mask = torch.rand(rows, generator=gen, device="cuda") > 0.2
    weights = torch.rand(rows, generator=gen, device="cuda") + 0.5
    kw = dict(mode=mode, beta=0.3, temperature=0.8, vocab_size=v_real)
    s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    out = vocab_parallel_kl(s, t, row_mask=mask, **kw)
    (out * weights).sum().backward()
    ref, ref_s, ref_t = kl_oracle(student, teacher, row_mask=mask, weights=weights, teacher_grad=True, **kw)
    assert_close(out, ref, KL_ATOL, "KL")
    for grad, want in ((s.grad, ref_s), (t.grad, ref_t)):
        slack = ulp(want, torch.bfloat16) if dtype == torch.bfloat16 else 0.0
        assert ((grad.double() - want).abs() - slack).max() <= GRAD_ATOL


def test_logprob_entropy_on_cuda():
    rows, v_pad, v_real = 300, 32064, 32000
    logits = _logits((rows, v_pad), 4, torch.float32) * 2
    targets = torch.randint(0, v_real, (rows,), device="cuda")
    w_lp, w_ent = torch.rand(rows, device="cuda"), torch.rand(rows, device="cuda")
    x = logits.clone().requires_grad_()
    logprob, entropy = vocab_parallel_logprob_entropy(x, targets, temperature=0.9, vocab_size=v_real)
    ((logprob * w_lp).sum() + (entropy * w_ent).sum()).backward()
    ref_lp, ref_ent, ref_g = logprob_oracle(logits, targets, temperature=0.9, vocab_size=v_real,
                                            w_logprob=w_lp, w_entropy=w_ent)
    assert_close(logprob, ref_lp, KL_ATOL, "log-prob")
    assert_close(entropy, ref_ent, KL_ATOL, "entropy")
    assert_close(x.grad, ref_g, GRAD_ATOL, "logits grad")


@pytest.mark.parametrize("inplace", [False, True])
def test_no_fp32_tokens_by_vocab_tensor_is_materialised(inplace):
    rows, vocab = 2048, 152064
    student = _logits((rows, vocab), 5, torch.bfloat16).requires_grad_()
    teacher = _logits((rows, vocab), 6, torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    vocab_parallel_kl(student, teacher, inplace_backward=inplace).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    fp32_tensor = rows * vocab * 4
    # Without in-place, the bf16 gradient (half an fp32 tensor) is the only large buffer.
    limit = 0.05 * fp32_tensor if inplace else 0.55 * fp32_tensor
    assert extra < limit, f"peak extra {extra / 2**20:.0f} MiB >= {limit / 2**20:.0f} MiB"
