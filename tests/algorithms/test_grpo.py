"""GRPO advantages and loss against hand-computed values."""
import math

import pytest
import torch

from megatron_omni.algorithms.grpo import GRPOConfig, GRPOLoss, group_advantages, k3_kl, kl_beta_at


def test_group_advantages_mean_centred_and_std_scaled():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0])
    assert group_advantages(rewards, 4).tolist() == [0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    scaled = group_advantages(rewards, 4, scale_by_std=True)
    std = torch.tensor([1.0, 0.0, 0.5, 0.5]).std().item()  # unbiased, as torch.std
    assert scaled[0].item() == pytest.approx(0.5 / (std + 1e-6))
    assert scaled[4:].abs().max().item() == 0.0  # a group with equal rewards teaches nothing
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        group_advantages(rewards, 3)


def test_clipped_surrogate_hand_computed():
    # token 1: ratio 0.5/0.4 = 1.25 (clipped to 1.2 for A>0), token 2: ratio 1, token 3 is padding.
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.9]])).requires_grad_()
    old = torch.log(torch.tensor([[0.4, 0.25, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss = GRPOLoss(GRPOConfig())
    total, count, metrics = loss(logprobs, old, torch.tensor([1.0]), mask)
    assert count.item() == 2 and count.dtype == torch.int32
    assert total.item() == pytest.approx(-(1.2 + 1.0))
    total.backward()
    # clipped token: no gradient; unclipped: d(-ratio*A)/dlogp = -ratio*A = -1; padding: 0.
    assert logprobs.grad[0].tolist() == pytest.approx([0.0, -1.0, 0.0])
    assert metrics["clip_fraction"].tolist() == [1.0, 2.0]

    # Negative advantage: min(1.25 * -1, 1.2 * -1) = -1.25 -> not clipped, loss 1.25 + 1.
    total, _, _ = loss(logprobs.detach(), old, torch.tensor([-1.0]), mask)
    assert total.item() == pytest.approx(1.25 + 1.0)


def test_dapo_clip_higher():
    logprobs = torch.log(torch.tensor([[0.5]]))
    old = torch.log(torch.tensor([[0.4]]))
    total, _, _ = GRPOLoss(GRPOConfig(clip_eps_high=0.28))(logprobs, old, torch.tensor([1.0]), torch.ones(1, 1))
    assert total.item() == pytest.approx(-1.25)  # 1.25 < 1.28: not clipped any more


def test_gspo_sequence_ratio():
    logprobs = torch.log(torch.tensor([[0.5, 0.3]])).requires_grad_()
    old = torch.log(torch.tensor([[0.4, 0.25]]))
    total, _, _ = GRPOLoss(GRPOConfig(ratio_level="sequence", clip_eps_high=1.0))(
        logprobs, old, torch.tensor([1.0]), torch.ones(1, 2)
    )
    seq_ratio = math.exp((math.log(0.5 / 0.4) + math.log(0.3 / 0.25)) / 2)
    assert total.item() == pytest.approx(-2 * seq_ratio)
    total.backward()
    assert logprobs.grad[0].tolist() == pytest.approx([-seq_ratio, -seq_ratio])


def test_k3_reference_kl_and_beta_schedule():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert k3_kl(lp, ref).item() == pytest.approx(0.5 - math.log(0.5) - 1)
    assert k3_kl(lp, lp).item() == 0.0
    total, _, metrics = GRPOLoss(GRPOConfig())(lp.view(1, 1), lp.view(1, 1), torch.zeros(1), torch.ones(1, 1),
                                               ref_logprobs=ref.view(1, 1), beta=0.04)
    assert total.item() == pytest.approx(0.04 * (0.5 - math.log(0.5) - 1))
    assert metrics["ref_kl"][0].item() == pytest.approx(0.5 - math.log(0.5) - 1)
    cfg = GRPOConfig()
    assert kl_beta_at(cfg, 0, 100) == pytest.approx(0.04)
    assert kl_beta_at(cfg, 25, 100) == pytest.approx(0.04 * (1 - 0.5 * 0.75))
    assert kl_beta_at(cfg, 50, 100) == pytest.approx(0.01)
    assert kl_beta_at(cfg, 100, 100) == pytest.approx(0.01)
