"""The rollout phase shared by the on-policy algorithms (OPPO, OmniOPSD): G sampled completions
per prompt from the current policy, flattened one entry per completion, and their padded
micro-batches."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_omni.data.processor import ProcessedSample, attach_completion
from megatron_omni.data.skips import SampleRules
from megatron_omni.generation.generator import SamplingConfig
from megatron_omni.generation.omni import rollout_seed, sample_prompts
from megatron_omni.parallel.device import step_device
from megatron_omni.training.config import TrainConfig
from megatron_omni.training.model_setup import unwrap


@dataclass
class Rollouts:
    """One entry per completion; a prompt's G completions are consecutive."""

    indices: list[int]  # data set index of each completion's prompt
    prompts: list[ProcessedSample]
    completion_ids: list[list[int]]  # sampled tokens, the stop token included
    texts: list[str]  # decoded without special tokens (what rewards read)
    # The sampler's log-prob of each sampled token at temperature 1, unfiltered (the trainer's
    # definition): fp32 on the CPU, len(completion_ids[i]) values per completion.
    logprobs: list[torch.Tensor]
    tokens_per_second: float  # of the step's decode

    @classmethod
    def joined(cls, parts: list[Rollouts], entries: list[tuple[int, int]]) -> Rollouts:
        """The (part, entry) pairs of several rollouts, in that order; tokens/s is the parts' mean."""
        lists = {f.name: [getattr(parts[p], f.name)[k] for p, k in entries]
                 for f in fields(cls) if f.name != "tokens_per_second"}
        return cls(**lists, tokens_per_second=sum(r.tokens_per_second for r in parts) / len(parts))

    def sequences(self) -> list[ProcessedSample]:
        """Prompt + completion of each entry, the loss mask on the completion."""
        return [attach_completion(p, ids) for p, ids in zip(self.prompts, self.completion_ids)]

    def metrics(self, rewards: dict[str, torch.Tensor], means: dict[str, float] | None = None,
                counts: dict[str, float] | None = None) -> dict[str, float]:
        """The step's reward means, mean completion length and further per-completion ``means``
        over the completions of every data-parallel rank (each rank holds as many), ``counts``
        summed over them (one all-reduce); the decode rate is this rank's."""
        lengths = torch.tensor([len(ids) for ids in self.completion_ids], dtype=torch.float)
        means = {**{f"reward_{k}": float(v.mean()) for k, v in rewards.items()},
                 "completion_length": float(lengths.mean()), **(means or {})}
        counts = counts or {}
        group = parallel_state.get_data_parallel_group()
        values = torch.tensor([*means.values(), *counts.values()], dtype=torch.float64, device=step_device())
        dist.all_reduce(values, group=group)
        values[: len(means)] /= dist.get_world_size(group)
        metrics = dict(zip([*means, *counts], values.tolist()))
        metrics["rollout_tokens_per_s"] = self.tokens_per_second
        return metrics


def stopping_at(sampling: SamplingConfig, stop_token_ids: list[int]) -> SamplingConfig:
    """The configured sampling; completions end at ``stop_token_ids`` unless stop ids are configured."""
    return sampling if sampling.stop_token_ids else replace(sampling, stop_token_ids=list(stop_token_ids))


def prompt_rules(train: TrainConfig, sampling_key: str, sampling: SamplingConfig,
                 required: tuple[tuple[str, str], ...]) -> SampleRules:
    """An RL prompt must leave room for a whole completion in train.seq_length."""
    budget = (f"train.seq_length ({train.seq_length}) minus {sampling_key}.max_new_tokens "
              f"({sampling.max_new_tokens}) for the completion")
    return SampleRules(required=required, max_tokens=train.seq_length - sampling.max_new_tokens, budget=budget)


def collect_rollouts(model_chunks, prompts: list[ProcessedSample], indices: list[int], step: int, sampling: SamplingConfig,
                     group_size: int, train_seed: int, vocab_size: int, pad_token_id: int, tokenizer) -> Rollouts:
    """Sample ``group_size`` completions of each prompt, all prompts in one decode (collective over
    the model's TP/PP ranks); ``indices``: the data set index of each prompt."""
    seeds = [rollout_seed(train_seed, step, prompt.sample_id) for prompt in prompts]
    generated = sample_prompts(unwrap(model_chunks[0]), prompts, sampling, group_size, seeds, vocab_size, pad_token_id)
    out = Rollouts([], [], [], [], [], generated.tokens_per_second)
    for index, prompt, completions, logprobs in zip(indices, prompts, generated.completions, generated.logprobs):
        for ids, logprob in zip(completions, logprobs):
            out.indices.append(index)
            out.prompts.append(prompt)
            out.completion_ids.append(ids)
            out.logprobs.append(logprob)
            out.texts.append(tokenizer.decode(ids, skip_special_tokens=True))
    return out
