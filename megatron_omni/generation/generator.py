"""Sampling from a megatron model with megatron-core's static KV cache, at any TP/PP.

One prompt at a time is expanded into G completions: the prompt (with its multimodal prefix) is
run once with batch 1, its KV cache is copied into the G batch slots, then all G completions are
decoded together. Logits are gathered over TP (``runtime_gather_output``) and every TP rank draws
the same sample from a generator seeded per prompt, so ranks never disagree. Under PP, hidden
states travel stage to stage with megatron's inference p2p helpers and the sampled tokens are
broadcast from the last stage.

Everything the decode makes (tokens, masks, log-probs, the sampling generator, pipeline receive
buffers) lives on `step_device()`: the rank's GPU under NCCL, so sampling never leaves the device.
The one host read per token is ``done.all()``, which decides in Python whether to stop early.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from megatron.core import parallel_state
from megatron.core.inference.communication_utils import (
    broadcast_from_last_pipeline_stage,
    recv_from_prev_pipeline_rank_,
    send_to_next_pipeline_rank,
)
from megatron.core.inference.contexts import StaticInferenceContext

from megatron_omni.config import ConfigError
from megatron_omni.parallel.device import step_device


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.9
    top_p: float = 1.0
    top_k: int = 50  # 0: no top-k
    greedy: bool = False
    stop_token_ids: list[int] = field(default_factory=list)

    def validate(self, key: str) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"{key}.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ConfigError(f"{key}.temperature must be > 0 when sampling, got {self.temperature} "
                              f"(set {key}.greedy=true for greedy decoding)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"{key}.top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"{key}.top_k must be >= 0 (0: no top-k), got {self.top_k}")


@dataclass
class Completions:
    """G completions of one prompt; ``tokens`` holds prompt + completion, padded after the stop."""

    tokens: torch.Tensor  # [G, P + N]
    completion_mask: torch.Tensor  # [G, P + N], 1 on generated tokens (the stop token included)
    logprobs: torch.Tensor  # [G, N] log pi(y_t) of the sampled tokens at temperature 1
    prompt_length: int
    tokens_per_second: float


class ModelAdapter(Protocol):
    """What the generator needs from a model stage.

    ``forward(tokens [b, s], position_ids, inference_context, prefill)`` returns gathered logits
    [b, s', V] on the last pipeline stage and the hidden state to send on elsewhere; ``prefill``
    tells a multimodal model to add its media embeddings.
    """

    model: torch.nn.Module

    def forward(self, tokens, position_ids, ctx: StaticInferenceContext, prefill: bool) -> torch.Tensor: ...

    def set_input_tensor(self, tensor: torch.Tensor) -> None: ...


def filter_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k and top-p (nucleus) filtering of [b, V] logits."""
    logits = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= cfg.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class Generator:
    def __init__(self, adapter: ModelAdapter, vocab_size: int, hidden_size: int, pad_token_id: int,
                 params_dtype: torch.dtype = torch.float32, suppressed_token_ids: list[int] = ()):
        self.adapter = adapter
        self.device = step_device()
        self.vocab_size = vocab_size  # real vocabulary: padded logit columns are never sampled
        # Never generated (e.g. media placeholders, which must match the media a prompt carries).
        self.suppressed = torch.tensor(sorted(set(suppressed_token_ids)), dtype=torch.long, device=self.device)
        self.hidden_size = hidden_size
        self.pad_token_id = pad_token_id
        self.params_dtype = params_dtype
        self.pp_group = parallel_state.get_pipeline_model_parallel_group()
        self.first_stage = parallel_state.is_pipeline_first_stage()
        self.last_stage = parallel_state.is_pipeline_last_stage()

    def _run(self, tokens, position_ids, ctx, prefill):
        """One forward over the pipeline; returns [b, V] last-token logits on every stage."""
        b, s = tokens.shape
        if not self.first_stage:
            recv = torch.empty((s, b, self.hidden_size), dtype=self.params_dtype, device=self.device)
            recv_from_prev_pipeline_rank_(recv, self.pp_group)
            self.adapter.set_input_tensor(recv)
        output = self.adapter.forward(tokens, position_ids, ctx, prefill)
        if not self.last_stage:
            send_to_next_pipeline_rank(output.to(self.params_dtype), self.pp_group)
        ctx.increment_sequence_len_offset(s)
        logits = output[:, -1, : self.vocab_size].float().contiguous() if self.last_stage else None
        return broadcast_from_last_pipeline_stage([b, self.vocab_size], torch.float32, logits, self.pp_group)

    @torch.no_grad()
    def generate(self, prompt_tokens: torch.Tensor, position_ids: torch.Tensor, group_size: int,
                 cfg: SamplingConfig, seed: int) -> Completions:
        """``prompt_tokens`` [1, P]; ``position_ids`` [3, 1, P + max_new_tokens] (or [1, ...] for 1-D RoPE)."""
        if prompt_tokens.shape[0] != 1:
            raise ValueError(f"generate() takes one prompt at a time, got a batch of {prompt_tokens.shape[0]}")
        model = self.adapter.model
        was_training = model.training
        ctx = StaticInferenceContext(max_batch_size=group_size, max_sequence_length=prompt_tokens.shape[1] + cfg.max_new_tokens)
        model.eval()  # megatron uses the KV cache only outside training mode
        try:
            return self._generate(ctx, prompt_tokens, position_ids, group_size, cfg, seed)
        finally:
            # The KV cache (keys and values [P + N, G, groups, head dim] per layer) goes here, before
            # the training forwards, even while something (a traceback) still holds the context.
            ctx.key_value_memory_dict.clear()
            model.train(was_training)

    def _generate(self, ctx, prompt_tokens, position_ids, group_size, cfg, seed) -> Completions:
        started = time.perf_counter()
        prompt_tokens, position_ids = prompt_tokens.to(self.device), position_ids.to(self.device)
        prompt_len = prompt_tokens.shape[1]
        total = prompt_len + cfg.max_new_tokens
        if position_ids.shape[-1] < total:
            raise ValueError(f"position_ids cover {position_ids.shape[-1]} positions, need {total}")
        # [3, 1, T] or [1, T] -> the same positions for every completion of the group
        pos = position_ids.expand(*position_ids.shape[:-2], group_size, position_ids.shape[-1])
        gen = torch.Generator(device=self.device).manual_seed(seed)

        logits = self._run(prompt_tokens, position_ids[..., :prompt_len], ctx, True)
        for keys, values in ctx.key_value_memory_dict.values():  # share the prompt's cache
            keys[:prompt_len, 1:] = keys[:prompt_len, :1]
            values[:prompt_len, 1:] = values[:prompt_len, :1]
        logits = logits.expand(group_size, -1)

        tokens = torch.full((group_size, total), self.pad_token_id, dtype=torch.long, device=self.device)
        tokens[:, :prompt_len] = prompt_tokens
        mask = torch.zeros((group_size, total), dtype=torch.long, device=self.device)
        logprobs = torch.zeros((group_size, cfg.max_new_tokens), device=self.device)
        done = torch.zeros(group_size, dtype=torch.bool, device=self.device)
        stops = torch.tensor(cfg.stop_token_ids, dtype=torch.long, device=self.device)
        steps = 0
        for t in range(cfg.max_new_tokens):
            # Suppression only steers the choice: the log-prob is the trainer's, over the whole vocabulary.
            allowed = logits.index_fill(1, self.suppressed, float("-inf"))
            if cfg.greedy:
                chosen = allowed.argmax(dim=-1)
            else:
                probs = torch.softmax(filter_logits(allowed, cfg), dim=-1)
                chosen = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            chosen = torch.where(done, torch.full_like(chosen, self.pad_token_id), chosen)
            logprobs[:, t] = torch.log_softmax(logits, dim=-1).gather(1, chosen.unsqueeze(1)).squeeze(1) * (~done)
            cur = prompt_len + t
            tokens[:, cur] = chosen
            mask[:, cur] = (~done).long()
            done = done | torch.isin(chosen, stops)
            steps = t + 1
            if bool(done.all()) or t == cfg.max_new_tokens - 1:
                break
            logits = self._run(tokens[:, cur : cur + 1], pos[..., : cur + 1], ctx, False)
        end = prompt_len + steps
        elapsed = time.perf_counter() - started
        return Completions(
            tokens=tokens[:, :end], completion_mask=mask[:, :end], logprobs=logprobs[:, :steps],
            prompt_length=prompt_len, tokens_per_second=float(mask.sum()) / max(elapsed, 1e-9),
        )


class GPTAdapter:
    """A megatron ``GPTModel`` stage with text prompts."""

    def __init__(self, model):
        self.model = model

    def forward(self, tokens, position_ids, ctx, prefill):
        return self.model(tokens, position_ids, None, inference_context=ctx, runtime_gather_output=True)

    def set_input_tensor(self, tensor):
        self.model.set_input_tensor(tensor)
