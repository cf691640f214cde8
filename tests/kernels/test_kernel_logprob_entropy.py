"""vocab_parallel_logprob_entropy against torch autograd through the materialising reference."""
import pytest
import torch
from kernel_oracles import GRAD_ATOL, KL_ATOL, assert_close, logprob_oracle, make_logits, ulp, with_extremes

from megatron_omni.kernels import vocab_parallel_logprob_entropy

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

B, S, V_PAD, V_REAL = 2, 24, 1000, 990


def _inputs(seed, extremes=False):
    logits = make_logits((B * S, V_PAD), seed, scale=2.0)
    if extremes:
        logits = with_extremes(logits, seed + 1, V_REAL)
    gen = torch.Generator().manual_seed(seed + 2)
    targets = torch.randint(0, V_REAL, (B, S), generator=gen)
    mask = torch.rand((B, S), generator=gen) > 0.3
    w_lp, w_ent = torch.rand((B, S), generator=gen), torch.rand((B, S), generator=gen)
    return logits.view(B, S, V_PAD), targets, mask, w_lp, w_ent


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("temperature", [1.0, 0.9])
@pytest.mark.parametrize("extremes", [False, True])
def test_matches_autograd(backend, temperature, extremes):
    logits, targets, mask, w_lp, w_ent = _inputs(11, extremes)
    x = logits.clone().requires_grad_()
    logprob, entropy = vocab_parallel_logprob_entropy(x, targets, temperature=temperature, vocab_size=V_REAL,
                                                      row_mask=mask, backend=backend)
    ((logprob * w_lp).sum() + (entropy * w_ent).sum()).backward()
    ref_lp, ref_ent, ref_g = logprob_oracle(logits, targets, temperature=temperature, vocab_size=V_REAL,
                                            row_mask=mask, w_logprob=w_lp, w_entropy=w_ent)
    # A token 1e4 below the top logit has log-prob ~ -1e4, which fp32 holds to ~1e-3 only.
    assert_close(logprob, ref_lp, KL_ATOL, "log-prob", rtol=2e-7 if extremes else 0.0)
    assert_close(entropy, ref_ent, KL_ATOL, "entropy")
    assert_close(x.grad, ref_g, GRAD_ATOL, "logits grad")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_bf16_within_one_ulp(backend):
    logits, targets, mask, w_lp, w_ent = _inputs(12)
    logits = logits.bfloat16()
    x = logits.clone().requires_grad_()
    logprob, entropy = vocab_parallel_logprob_entropy(x, targets, vocab_size=V_REAL, row_mask=mask, backend=backend)
    ((logprob * w_lp).sum() + (entropy * w_ent).sum()).backward()
    ref_lp, ref_ent, ref_g = logprob_oracle(logits, targets, vocab_size=V_REAL, row_mask=mask,
                                            w_logprob=w_lp, w_entropy=w_ent)
    assert_close(logprob, ref_lp, KL_ATOL, "log-prob")
    assert_close(entropy, ref_ent, KL_ATOL, "entropy")
    excess = (x.grad.double() - ref_g).abs() - ulp(ref_g, torch.bfloat16) - GRAD_ATOL
    assert excess.max() <= 0, f"grad beyond 1 bf16 ulp by {excess.max():.3g}"


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_only_logprob_used(backend):
    logits, targets, _, _, _ = _inputs(13)
    x = logits.clone().requires_grad_()
    logprob, _ = vocab_parallel_logprob_entropy(x, targets, backend=backend)
    logprob.sum().backward()
    ref_lp, _, ref_g = logprob_oracle(logits, targets, w_logprob=torch.ones(B, S), w_entropy=torch.zeros(B, S))
    assert_close(logprob, ref_lp, KL_ATOL, "log-prob")
    assert_close(x.grad, ref_g, GRAD_ATOL, "logits grad")
