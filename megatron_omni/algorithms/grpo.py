"""GRPO policy loss (OPPO's core) with the DAPO clip-higher and GSPO sequence-ratio options.

Input contract of ``GRPOLoss`` (all on completion tokens, shape [b, s] unless noted):
  logprobs       log pi_theta(y_t) of the sampled tokens, with grad
  old_logprobs   log pi_old(y_t) from the rollout policy, no grad
  ref_logprobs   log pi_ref(y_t) from the frozen reference, no grad (None when beta == 0)
  advantages     [b] one advantage per completion (see ``group_advantages``)
  mask           1 on completion tokens, 0 on prompt and padding
It returns the token *sum* of the loss and the token count, so megatron normalises by the
completion tokens of the whole global batch (token-level normalisation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from megatron_omni.algorithms.step_common import token_sum_loss
from megatron_omni.config import ConfigError


@dataclass
class PolicyLossConfig:
    """What ``GRPOLoss`` and the group advantages read (OmniOPSD's ``opsd.grpo`` mix)."""

    clip_eps_low: float = 0.2
    # DAPO's clip-higher: a larger upper bound (e.g. 0.28) keeps exploration tokens alive.
    clip_eps_high: float = 0.2
    # "token": PPO ratio per token (GRPO); "sequence": GSPO's length-normalised sequence ratio.
    ratio_level: Literal["token", "sequence"] = "token"
    scale_advantages_by_std: bool = False

    def validate(self, key: str) -> None:
        for name in ("clip_eps_low", "clip_eps_high"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class GRPOConfig(PolicyLossConfig):
    """OPPO's ``oppo.grpo``: the policy loss plus the group size and the decaying reference KL."""

    group_size: int = 8
    kl_beta: float = 0.04
    # beta decays linearly to kl_beta_final_fraction * beta at kl_decay_end_fraction of training.
    kl_beta_final_fraction: float = 0.25
    kl_decay_end_fraction: float = 0.5

    def validate(self, key: str) -> None:
        super().validate(key)
        if self.group_size < 2:
            raise ConfigError(f"{key}.group_size must be >= 2 (group advantages compare the completions of a prompt), "
                              f"got {self.group_size}")
        if self.kl_beta < 0:
            raise ConfigError(f"{key}.kl_beta must be >= 0, got {self.kl_beta}")
        for name in ("kl_beta_final_fraction", "kl_decay_end_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{key}.{name} must lie in [0, 1], got {getattr(self, name)}")


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """A_i = R_i - mean(R_group) (optionally / std(R_group)); rewards are grouped consecutively."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.view(-1)


def kl_beta_at(cfg: GRPOConfig, step: int, total_steps: int) -> float:
    """Linear decay from beta to final_fraction * beta, reached at decay_end_fraction of the run."""
    end = max(1.0, cfg.kl_decay_end_fraction * total_steps)
    progress = min(1.0, step / end)
    return cfg.kl_beta * (1.0 - progress * (1.0 - cfg.kl_beta_final_fraction))


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref): exp(r) - r - 1 with r = log pi_ref - log pi_theta."""
    r = ref_logprobs - logprobs
    return torch.exp(r) - r - 1.0


class GRPOLoss:
    def __init__(self, cfg: PolicyLossConfig):
        self.cfg = cfg

    def _log_ratio(self, logprobs, old_logprobs, mask):
        log_ratio = logprobs - old_logprobs
        if self.cfg.ratio_level == "token":
            return log_ratio
        # GSPO: s_i = exp(mean_t log ratio) for the whole sequence, with the gradient still
        # flowing per token: log s_i = sg(mean) + log pi_theta - sg(log pi_theta).
        lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
        seq = ((log_ratio * mask).sum(dim=1, keepdim=True) / lengths).detach()
        return seq + logprobs - logprobs.detach()

    def __call__(self, logprobs, old_logprobs, advantages, mask, ref_logprobs=None, beta: float = 0.0):
        mask = mask.float()
        ratio = torch.exp(self._log_ratio(logprobs, old_logprobs, mask))
        adv = advantages.float().unsqueeze(1)
        clipped = torch.clamp(ratio, 1.0 - self.cfg.clip_eps_low, 1.0 + self.cfg.clip_eps_high)
        per_token = -torch.minimum(ratio * adv, clipped * adv)
        metrics = {}
        if beta and ref_logprobs is not None:
            kl = k3_kl(logprobs, ref_logprobs)
            per_token = per_token + beta * kl
            metrics["ref_kl"] = torch.stack([(kl.detach() * mask).sum(), mask.sum()])
        count = mask.sum()
        was_clipped = ((ratio - clipped).abs() > 0).float()
        metrics["clip_fraction"] = torch.stack([(was_clipped * mask).sum(), count])
        return token_sum_loss((per_token * mask).sum(), count, "policy_loss", metrics)
