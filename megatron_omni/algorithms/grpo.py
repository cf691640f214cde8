"""GRPO policy loss (OPPO's core) with the DAPO clip-higher, GSPO sequence-ratio, Dr.GRPO
aggregation and truncated importance sampling options, and the group-level pieces of a rollout
batch: advantages, DAPO's informative groups and overlong handling.

Input contract of ``GRPOLoss`` (all on completion tokens, shape [b, s] unless noted):
  logprobs        log pi_theta(y_t) of the sampled tokens, with grad
  old_logprobs    log pi_old(y_t) of the behaviour policy, no grad
  ref_logprobs    log pi_ref(y_t) from the frozen reference, no grad (None when beta == 0)
  engine_logprobs log-probs the rollout engine sampled with, no grad (read with tis_cap only)
  advantages      [b] one advantage per completion (see ``group_advantages``)
  mask            1 on completion tokens, 0 on prompt, padding and filtered completions
It returns a sum and a count whose quotient over the global batch (megatron divides the summed
sums by the summed counts, ``calculate_per_token_loss``) is the ``loss_aggregation`` formula:
  token_mean           sum_i sum_t l_it / sum_i |y_i|            (count: tokens)
  seq_mean_token_sum   sum_i sum_t l_it / (B * L), L = max_new_tokens  (count: sequences)
  seq_mean_token_mean  sum_i (sum_t l_it / |y_i|) / B           (count: sequences)
with B the completions of the mini-batch that have a loss token, over every data-parallel rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from megatron_omni.algorithms.step_common import token_sum_loss
from megatron_omni.config import ConfigError

Aggregation = Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"]


@dataclass
class PolicyLossConfig:
    """What ``GRPOLoss`` and the group advantages read (OmniOPSD's ``opsd.grpo`` mix refuses what
    it cannot honour, opsd/config.py)."""

    clip_eps_low: float = 0.2
    # DAPO's clip-higher: a larger upper bound (e.g. 0.28) keeps exploration tokens alive.
    clip_eps_high: float = 0.2
    # "token": PPO ratio per token (GRPO); "sequence": GSPO's length-normalised sequence ratio.
    ratio_level: Literal["token", "sequence"] = "token"
    scale_advantages_by_std: bool = False
    # How the per-token losses of a mini-batch become one number (formulas in the module docstring).
    loss_aggregation: Aggregation = "token_mean"
    # Truncated importance sampling: the policy term of each token is weighted by
    # min(pi_old / pi_engine, tis_cap), pi_old the trainer's behaviour log-prob, pi_engine the
    # engine's; null: off.
    tis_cap: float | None = None

    def validate(self, key: str) -> None:
        for name in ("clip_eps_low", "clip_eps_high"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name} must be >= 0, got {getattr(self, name)}")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ConfigError(f"{key}.tis_cap must be > 0 or null, got {self.tis_cap}")


@dataclass
class GRPOConfig(PolicyLossConfig):
    """OPPO's ``oppo.grpo``: the policy loss plus the group size, the decaying reference KL, the
    mini-batches of a rollout batch, DAPO's dynamic sampling and overlong handling."""

    group_size: int = 8
    kl_beta: float = 0.04
    # beta decays linearly to kl_beta_final_fraction * beta at kl_decay_end_fraction of training.
    kl_beta_final_fraction: float = 0.25
    kl_decay_end_fraction: float = 0.5
    # One rollout batch gives mini_batches x epochs optimizer steps (PPO): the rollout batch's
    # micro-batches are split into mini_batches consecutive parts, each optimised once per epoch.
    mini_batches: int = 1
    epochs: int = 1
    # pi_old of the PPO ratio. "trainer": a no-grad forward of the rollout policy before the first
    # update (with one update it is the policy itself, detached: no forward); "engine": the
    # rollout engine's log-probs of the sampled tokens.
    behaviour_logprobs: Literal["trainer", "engine"] = "trainer"
    # DAPO dynamic sampling: groups whose rewards are all equal are dropped and further prompts
    # drawn, at most max_resample_rounds times, until the batch is full.
    dynamic_sampling: bool = False
    max_resample_rounds: int = 4
    # Completions cut at max_new_tokens: "keep" them, "filter" them out of the loss (DAPO's
    # overlong filtering), or add DAPO's soft overlong "penalty" to their reward.
    overlong: Literal["keep", "filter", "penalty"] = "keep"
    overlong_buffer: int = 0  # L_cache of the penalty: it ramps from 0 to -factor over the last this many tokens
    overlong_penalty_factor: float = 1.0

    @property
    def updates_per_rollout(self) -> int:
        return self.mini_batches * self.epochs

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
        for name in ("mini_batches", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_resample_rounds < 0:
            raise ConfigError(f"{key}.max_resample_rounds must be >= 0, got {self.max_resample_rounds}")
        if self.tis_cap is not None and self.behaviour_logprobs == "engine":
            raise ConfigError(f"{key}.tis_cap corrects the trainer's behaviour log-probs towards the engine's; with "
                              f"{key}.behaviour_logprobs=engine the PPO ratio already uses the engine's: set one of them")
        if self.overlong == "penalty":
            if self.overlong_buffer < 1:
                raise ConfigError(f"{key}.overlong=penalty needs {key}.overlong_buffer >= 1 (the tokens over which the "
                                  f"penalty ramps up), got {self.overlong_buffer}")
            if self.overlong_penalty_factor < 0:
                raise ConfigError(f"{key}.overlong_penalty_factor must be >= 0, got {self.overlong_penalty_factor}")
        elif self.overlong_buffer:
            raise ConfigError(f"{key}.overlong_buffer is read only with {key}.overlong=penalty (it is {self.overlong})")


def group_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """A_i = R_i - mean(R_group) (optionally / std(R_group)); rewards are grouped consecutively."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.view(-1)


def informative_groups(rewards: torch.Tensor, group_size: int, tol: float = 1e-6) -> torch.Tensor:
    """[groups] bool: the groups whose rewards are not all equal (DAPO's dynamic sampling keeps
    these; a group of equal rewards has zero advantages and teaches nothing)."""
    grouped = rewards.float().view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) > tol


class GroupSelection:
    """DAPO's dynamic sampling on one rank: the first ``wanted`` groups of unequal rewards over
    the parts sampled so far, then, if the parts ran out, groups of equal rewards in the order
    drawn (the batch keeps its shape). Groups are (part, group within the part)."""

    def __init__(self, wanted: int, group_size: int):
        self.wanted, self.group_size = wanted, group_size
        self.informative: list[tuple[int, int]] = []
        self.uninformative: list[tuple[int, int]] = []
        self.parts = 0

    def add(self, rewards: torch.Tensor) -> int:
        """Sort one part's groups; returns how many have equal rewards."""
        keep = informative_groups(rewards, self.group_size).tolist()
        for g, informative in enumerate(keep):
            (self.informative if informative else self.uninformative).append((self.parts, g))
        self.parts += 1
        return keep.count(False)

    @property
    def shortfall(self) -> int:
        return max(0, self.wanted - len(self.informative))

    def chosen(self) -> list[tuple[int, int]]:
        return (self.informative + self.uninformative)[: self.wanted]


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to max_new_tokens - buffer tokens, then a linear ramp
    to -factor at max_new_tokens (a completion cannot be longer)."""
    over = (lengths.float() - (max_new_tokens - buffer)).clamp(min=0)
    return -factor * over / buffer


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
    def __init__(self, cfg: PolicyLossConfig, max_new_tokens: int | None = None):
        if cfg.loss_aggregation == "seq_mean_token_sum" and not max_new_tokens:
            raise ValueError("seq_mean_token_sum needs the constant normaliser max_new_tokens")
        self.cfg, self.max_new_tokens = cfg, max_new_tokens

    def _log_ratio(self, logprobs, old_logprobs, mask):
        log_ratio = logprobs - old_logprobs
        if self.cfg.ratio_level == "token":
            return log_ratio
        # GSPO: s_i = exp(mean_t log ratio) for the whole sequence, with the gradient still
        # flowing per token: log s_i = sg(mean) + log pi_theta - sg(log pi_theta).
        lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)
        seq = ((log_ratio * mask).sum(dim=1, keepdim=True) / lengths).detach()
        return seq + logprobs - logprobs.detach()

    def _aggregate(self, per_token: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum, count) of this micro-batch: see the module docstring for what megatron makes of them."""
        how = self.cfg.loss_aggregation
        if how == "token_mean":
            return (per_token * mask).sum(), mask.sum()
        per_sequence = (per_token * mask).sum(dim=1)
        lengths = mask.sum(dim=1)
        if how == "seq_mean_token_sum":
            per_sequence = per_sequence / self.max_new_tokens
        else:
            per_sequence = per_sequence / lengths.clamp(min=1)
        return per_sequence.sum(), (lengths > 0).float().sum()

    def __call__(self, logprobs, old_logprobs, advantages, mask, ref_logprobs=None, beta: float = 0.0,
                 engine_logprobs=None):
        mask = mask.float()
        ratio = torch.exp(self._log_ratio(logprobs, old_logprobs, mask))
        adv = advantages.float().unsqueeze(1)
        clipped = torch.clamp(ratio, 1.0 - self.cfg.clip_eps_low, 1.0 + self.cfg.clip_eps_high)
        per_token = -torch.minimum(ratio * adv, clipped * adv)
        tokens = mask.sum()
        metrics = {}
        if self.cfg.tis_cap is not None:
            # Truncated importance sampling: the engine sampled from pi_engine, the trainer's
            # behaviour policy is pi_old; weight w = min(pi_old / pi_engine, cap), no gradient.
            mismatch = (old_logprobs - engine_logprobs).detach()
            weight = torch.exp(mismatch)
            per_token = per_token * weight.clamp(max=self.cfg.tis_cap)
            metrics["tis_logprob_abs_diff"] = torch.stack([(mismatch.abs() * mask).sum(), tokens])
            metrics["tis_capped_fraction"] = torch.stack([((weight > self.cfg.tis_cap).float() * mask).sum(), tokens])
        if beta and ref_logprobs is not None:
            kl = k3_kl(logprobs, ref_logprobs)
            per_token = per_token + beta * kl
            metrics["ref_kl"] = torch.stack([(kl.detach() * mask).sum(), tokens])
        # Where the clipped term is the one taken (its gradient cut), as TRL and verl count it.
        was_clipped = (clipped * adv < ratio * adv).float()
        metrics["clip_fraction"] = torch.stack([(was_clipped * mask).sum(), tokens])
        total, count = self._aggregate(per_token, mask)
        return token_sum_loss(total, count, "policy_loss", metrics)
