"""GRPO advantages and loss, several updates per rollout batch, the aggregations, TIS and DAPO's
pieces against hand-computed values; the new keys' validation."""
import math
import re

import pytest
import torch

from megatron_omni.algorithms.grpo import (
    GroupSelection,
    GRPOConfig,
    GRPOLoss,
    PolicyLossConfig,
    group_advantages,
    informative_groups,
    k3_kl,
    kl_beta_at,
    overlong_penalty,
)
from megatron_omni.algorithms.opsd.config import OPSDConfig
from megatron_omni.config import ConfigError, load_config
from megatron_omni.runs.config import OmniTrainConfig


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


# --- several updates per rollout batch -------------------------------------------------------

def _two_minibatch_second_update(cfg: GRPOConfig):
    """A context-free policy over 3 tokens, logits theta = 0 (uniform). Mini-batch 1 (token 0, A=+1)
    is one SGD step of lr 1.5 -> theta = (1, -0.5, -0.5); mini-batch 2 (tokens 0 and 1, A=+1) is
    scored against the behaviour policy (uniform) the rollout sampled from. Returns its (loss,
    gradient, clip_fraction)."""
    theta = torch.zeros(3, requires_grad=True)
    behaviour = torch.log_softmax(theta.detach(), -1)
    loss = GRPOLoss(cfg)
    first, _, _ = loss(torch.log_softmax(theta, -1)[[0]].view(1, 1), behaviour[[0]].view(1, 1), torch.ones(1), torch.ones(1, 1))
    first.backward()
    assert theta.grad.tolist() == pytest.approx([-2 / 3, 1 / 3, 1 / 3])  # -(e_0 - pi)
    with torch.no_grad():
        theta -= 1.5 * theta.grad
    theta.grad = None
    tokens = [0, 1]
    total, count, metrics = loss(torch.log_softmax(theta, -1)[tokens].view(1, 2), behaviour[tokens].view(1, 2),
                                 torch.ones(1), torch.ones(1, 2))
    (total / count).backward()
    return (total / count).item(), theta.grad.clone(), metrics["clip_fraction"].tolist()


def _new_policy():
    z = math.exp(1) + 2 * math.exp(-0.5)
    return torch.tensor([math.exp(1) / z, math.exp(-0.5) / z, math.exp(-0.5) / z], dtype=torch.float64)


def test_second_minibatch_is_clipped_hand_computed():
    loss, grad, clip = _two_minibatch_second_update(GRPOConfig())
    pi = _new_policy()
    r0, r1 = 3 * pi[0].item(), 3 * pi[1].item()  # 2.074 (clipped to 1.2: no gradient), 0.463 (kept: min with 0.8)
    assert r0 > 1.2 and r1 < 0.8
    assert loss == pytest.approx(-(1.2 + r1) / 2, rel=1e-6)
    # d/dtheta of -r1 / 2 = -(r1 / 2) (e_1 - pi)
    expected = -(r1 / 2) * (torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64) - pi)
    assert grad.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert clip == [1.0, 2.0]

    # DAPO's clip-higher (1 + 1.2 > r0): nothing clipped, both tokens carry gradient.
    loss, grad, clip = _two_minibatch_second_update(GRPOConfig(clip_eps_high=1.2))
    assert loss == pytest.approx(-(r0 + r1) / 2, rel=1e-6) and clip == [0.0, 2.0]


def test_gspo_and_grpo_differ_on_the_second_minibatch():
    grpo_loss, grpo_grad, _ = _two_minibatch_second_update(GRPOConfig())
    gspo_loss, gspo_grad, clip = _two_minibatch_second_update(GRPOConfig(ratio_level="sequence"))
    pi = _new_policy()
    s = math.sqrt(3 * pi[0].item() * 3 * pi[1].item())  # 0.980: inside [0.8, 1.2], not clipped
    assert gspo_loss == pytest.approx(-s, rel=1e-6) and clip == [0.0, 2.0]
    e = torch.eye(3, dtype=torch.float64)
    expected = -(s / 2) * ((e[0] - pi) + (e[1] - pi))  # every token gets the sequence ratio's gradient
    assert gspo_grad.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert (gspo_grad - grpo_grad).abs().max() > 0.1


# --- loss aggregation --------------------------------------------------------------------------

@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"])
def test_aggregation_over_microbatches_is_the_documented_formula(aggregation):
    """Two micro-batches (as megatron sums their sums and counts over micro-batches and ranks):
    ratio 1, so completion i's per-token loss is -A_i; lengths 1, 3 | 2, 4 (one filtered row)."""
    lengths = [[1, 3], [2, 0]]
    advantages = [torch.tensor([1.0, -2.0]), torch.tensor([0.5, 7.0])]
    loss = GRPOLoss(GRPOConfig(loss_aggregation=aggregation), max_new_tokens=8)
    sums = counts = 0.0
    for lens, adv in zip(lengths, advantages):
        mask = torch.tensor([[1.0] * n + [0.0] * (4 - n) for n in lens])
        lp = torch.zeros(2, 4)
        total, count, _ = loss(lp, lp, adv, mask)
        sums, counts = sums + total.item(), counts + count.item()
    l_sum = [-1.0 * 1, 2.0 * 3, -0.5 * 2]  # the filtered completion (length 0) is not in the batch
    flat = [1, 3, 2]
    expected = {
        "token_mean": sum(l_sum) / sum(flat),
        "seq_mean_token_sum": sum(l_sum) / (3 * 8),  # Dr.GRPO: B x max_new_tokens
        "seq_mean_token_mean": sum(s / n for s, n in zip(l_sum, flat)) / 3,
    }[aggregation]
    assert sums / counts == pytest.approx(expected)


def test_seq_mean_token_sum_needs_its_constant():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GRPOLoss(GRPOConfig(loss_aggregation="seq_mean_token_sum"))


# --- truncated importance sampling --------------------------------------------------------------

def test_tis_weights_and_mismatch_metrics():
    old = torch.log(torch.tensor([[0.5, 0.2, 0.3]]))  # the trainer's behaviour log-probs
    engine = torch.log(torch.tensor([[0.25, 0.2, 0.9]]))  # what the engine sampled with: w = 2, 1, 1/3
    lp = old.clone().requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    total, count, metrics = GRPOLoss(GRPOConfig(tis_cap=1.5))(lp, old, torch.tensor([1.0]), mask, engine_logprobs=engine)
    # ratio 1: per-token loss -A * min(w, cap) = -1.5, -1, -1/3
    assert total.item() == pytest.approx(-(1.5 + 1.0 + 1 / 3))
    total.backward()
    assert lp.grad[0].tolist() == pytest.approx([-1.5, -1.0, -1 / 3])
    diff = (math.log(2) + 0 + math.log(3)) / 3
    assert metrics["tis_logprob_abs_diff"][0].item() / metrics["tis_logprob_abs_diff"][1].item() == pytest.approx(diff)
    assert metrics["tis_capped_fraction"].tolist() == [1.0, 3.0]


# --- DAPO: dynamic sampling and overlong handling -------------------------------------------------

def test_dynamic_sampling_drops_equal_groups_and_refills():
    assert informative_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.3, 0.3]), 2).tolist() == [False, True, False]
    selection = GroupSelection(wanted=3, group_size=2)
    # first draw: groups 0 and 2 have equal rewards
    assert selection.add(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.3, 0.3])) == 2 and selection.shortfall == 2
    # second draw: one informative group, one equal
    assert selection.add(torch.tensor([0.0, 0.0, 0.2, 0.9, 0.5, 0.5])) == 2 and selection.shortfall == 1
    # rounds run out: the batch is filled with groups of equal rewards in draw order
    assert selection.chosen() == [(0, 1), (1, 1), (0, 0)]
    assert selection.add(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])) == 0 and selection.shortfall == 0
    assert selection.chosen() == [(0, 1), (1, 1), (2, 0)]  # full: only unequal groups, the first ones drawn


def test_soft_overlong_penalty():
    # max 10 tokens, buffer 4: free up to 6, then -1/4 per token up to -factor at 10.
    penalty = overlong_penalty(torch.tensor([3, 6, 7, 10]), max_new_tokens=10, buffer=4, factor=2.0)
    assert penalty.tolist() == pytest.approx([0.0, 0.0, -0.5, -2.0])


@pytest.mark.parametrize("overrides,message", [
    ({"mini_batches": 0}, "oppo.grpo.mini_batches must be >= 1"),
    ({"epochs": 0}, "oppo.grpo.epochs must be >= 1"),
    ({"tis_cap": 0.0}, "oppo.grpo.tis_cap must be > 0 or null"),
    ({"tis_cap": 2.0, "behaviour_logprobs": "engine"}, "with oppo.grpo.behaviour_logprobs=engine the PPO ratio"),
    ({"overlong": "penalty"}, "oppo.grpo.overlong=penalty needs oppo.grpo.overlong_buffer >= 1"),
    ({"overlong_buffer": 4}, "oppo.grpo.overlong_buffer is read only with oppo.grpo.overlong=penalty"),
    ({"max_resample_rounds": -1}, "oppo.grpo.max_resample_rounds must be >= 0"),
])
def test_new_keys_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        GRPOConfig(**overrides).validate("oppo.grpo")


def test_run_rules_of_the_new_keys():
    base = ["algorithm=oppo", "reward.wheel_dir=unused", "train.global_batch_size=4", "train.micro_batch_size=1",
            "train.seq_length=128"]
    with pytest.raises(ConfigError, match=re.escape("oppo.grpo.mini_batches (3) must divide the micro-batches of a step "
                                                    "on each data-parallel rank: train.global_batch_size (4) / "
                                                    "(train.micro_batch_size (1) x data-parallel size (2)) = 2")):
        load_config(None, [*base, "oppo.grpo.mini_batches=3"], cls=OmniTrainConfig).validate(world_size=2)
    with pytest.raises(ConfigError, match=re.escape("oppo.grpo.overlong_buffer (96) must be smaller than "
                                                    "oppo.sampling.max_new_tokens (96)")):
        load_config(None, [*base, "oppo.grpo.overlong=penalty", "oppo.grpo.overlong_buffer=96",
                           "oppo.sampling.max_new_tokens=96"], cls=OmniTrainConfig).validate()
    with pytest.raises(ConfigError, match=re.escape("optimizer.lr_warmup_steps (9) must be smaller than train.steps (3) "
                                                    "x 3 optimizer steps per batch")):
        load_config(None, [*base, "oppo.grpo.epochs=3", "train.steps=3", "optimizer.lr_warmup_steps=9"],
                    cls=OmniTrainConfig).validate()
    cfg = load_config(None, [*base, "oppo.grpo.mini_batches=2", "oppo.grpo.epochs=2"], cls=OmniTrainConfig)
    assert cfg.validate(world_size=1).optimizer_steps_per_batch() == 4


@pytest.mark.parametrize("key,value", [("ratio_level", "sequence"), ("clip_eps_high", 0.28),
                                       ("loss_aggregation", "seq_mean_token_mean"), ("tis_cap", 2.0)])
def test_opsd_refuses_what_one_update_cannot_honour(key, value):
    with pytest.raises(ConfigError, match=re.escape(f"opsd.grpo.{key}={value!r} is not supported by OmniOPSD")):
        OPSDConfig(grpo=PolicyLossConfig(**{key: value})).validate("opsd")
