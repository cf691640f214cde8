"""Sampling completions of one omni prompt (media + text): shared by OPPO rollouts and the
evaluation's greedy answers."""
from __future__ import annotations

import zlib

import torch

from megatron_omni.data.batch import pad
from megatron_omni.data.rope_index import extend_positions
from megatron_omni.generation.generator import Generator, SamplingConfig
from megatron_omni.models.masking import ModalityMask
from megatron_omni.parallel.device import step_device


class OmniAdapter:
    """The rollout generator's view of an OmniModel stage: media go in with the prompt only."""

    def __init__(self, model, media: dict):
        self.model, self.media = model, media

    def forward(self, tokens, position_ids, ctx, prefill):
        media = self.media if prefill else {}
        return self.model(tokens, position_ids, None, inference_context=ctx, runtime_gather_output=True, **media)

    def set_input_tensor(self, tensor):
        self.model.set_input_tensor(tensor)


def rollout_seed(train_seed: int, step: int, sample_id: str) -> int:
    """The sampling seed of one prompt at one step: the same on every rank and after a resume."""
    return train_seed * 1_000_003 + step * 7919 + zlib.crc32(sample_id.encode())


def prompt_media(prompt) -> dict:
    """The OmniModel media arguments of one processed prompt (a padded batch of one)."""
    return pad([prompt]).to(step_device()).model_kwargs()


def sample_completions(model, prompt, sampling: SamplingConfig, group_size: int, seed: int, vocab_size: int,
                       pad_token_id: int, modality_mask: ModalityMask | None = None
                       ) -> tuple[list[list[int]], list[torch.Tensor], float]:
    """``group_size`` completions (token ids, stop token included) of one prompt, the log-prob of
    each sampled token at temperature 1 (fp32 on the CPU, one per completion token), and tokens/s.
    Media placeholder tokens are never sampled: a completion holding one would not match the
    prompt's media features when it is scored."""
    media = prompt_media(prompt)
    if modality_mask is not None:
        media["modality_mask"] = modality_mask
    placeholders = [model.omni.tokens.audio, model.omni.tokens.image, model.omni.tokens.video]
    generator = Generator(OmniAdapter(model, media), vocab_size, model.config.hidden_size, pad_token_id,
                          model.config.params_dtype, suppressed_token_ids=placeholders)
    positions = extend_positions(prompt.position_ids, sampling.max_new_tokens).unsqueeze(1)
    out = generator.generate(prompt.input_ids.unsqueeze(0), positions, group_size, sampling, seed)
    start = out.prompt_length
    kept = out.completion_mask[:, start:].bool()
    completions = [row[start:][keep].tolist() for row, keep in zip(out.tokens, kept)]
    logprobs = [row[keep].float().cpu() for row, keep in zip(out.logprobs, kept)]
    return completions, logprobs, out.tokens_per_second
