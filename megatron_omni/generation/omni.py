"""Sampling completions of omni prompts (media + text) in one decode: shared by the RL rollouts and
the evaluation's greedy answers."""
from __future__ import annotations

import zlib

from megatron_omni.data.batch import pad
from megatron_omni.data.rope_index import extend_positions
from megatron_omni.generation.generator import Generated, Generator, Prompt, SamplingConfig
from megatron_omni.models.masking import ModalityMask
from megatron_omni.parallel.device import step_device


class OmniAdapter:
    """The generator's view of an OmniModel stage: media (and a modality mask) go in with the
    prompt's prefill only."""

    mrope = True  # OmniModel takes TMRoPE positions [3, b, s], text-only prompts too

    def __init__(self, model, modality_mask: ModalityMask | None = None):
        self.model, self.modality_mask = model, modality_mask

    def forward(self, tokens, position_ids, ctx, media):
        extra = {**media, "modality_mask": self.modality_mask} if media else {}
        # True: GPTModel's inference check; the generator keeps the output layer's logits sharded.
        return self.model(tokens, position_ids, None, inference_context=ctx, runtime_gather_output=True, **extra)

    def set_input_tensor(self, tensor):
        self.model.set_input_tensor(tensor)


def rollout_seed(train_seed: int, step: int, sample_id: str) -> int:
    """The sampling seed of one prompt at one step: the same on every rank and after a resume."""
    return train_seed * 1_000_003 + step * 7919 + zlib.crc32(sample_id.encode())


def prompt_media(prompt) -> dict:
    """The OmniModel media arguments of one processed prompt (a padded batch of one)."""
    return pad([prompt]).to(step_device()).model_kwargs()


def sample_prompts(model, prompts: list, sampling: SamplingConfig, group_size: int, seeds: list[int], vocab_size: int,
                   pad_token_id: int, modality_mask: ModalityMask | None = None) -> Generated:
    """``group_size`` completions of each processed prompt, all prompts decoded together, one
    seed per prompt. Media placeholder tokens are never sampled: a completion holding one would
    not match the prompt's media features when it is scored."""
    placeholders = [model.omni.tokens.audio, model.omni.tokens.image, model.omni.tokens.video]
    generator = Generator(OmniAdapter(model, modality_mask), vocab_size, model.config.hidden_size, pad_token_id,
                          model.config.params_dtype, suppressed_token_ids=placeholders)
    requests = [Prompt(p.input_ids, extend_positions(p.position_ids, sampling.max_new_tokens), seed, prompt_media(p))
                for p, seed in zip(prompts, seeds, strict=True)]
    return generator.generate(requests, group_size, sampling)
