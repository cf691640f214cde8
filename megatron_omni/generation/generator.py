"""Sampling from a megatron model with megatron-core's static KV cache, at any TP/PP: all
prompts of a step in one decode.

Layout. ``B`` prompts of lengths ``P_i`` with ``G`` completions each make ``B x G`` rows. Each
prompt is prefilled once, alone (batch 1, causal, its media encoded once), in a context of its own;
its KV cache is then copied into its G rows of one shared cache, *left-padded* to the longest
prompt ``L``: prompt i's keys sit at slots ``[L - P_i, L)``, its completions from slot ``L`` on.
All rows therefore share megatron's one ``sequence_len_offset`` (``StaticInferenceContext`` has
no per-row offset), and every decode step runs all live rows as one batch of one token each.

Exactness. The pad slots hold zeros and are masked: each decode step passes a boolean attention
mask [rows, 1, 1, slots] that is True on a row's pad slots, and megatron's local attention adds
-10000 there, so their softmax weight is exactly 0 and the zero values add nothing; nothing is
recomputed. Positions are per row: position_ids [3, rows, slots] carry each prompt's own TMRoPE
positions (and ``extend_positions`` text positions after it); megatron rotates the cached
(unrotated) keys with them at every step. Transformer Engine's attention ignores masks in
megatron's static inference, so prompts of different lengths need the local attention spec.

Work. A finished row stops costing work: once a quarter of the batch has finished, the batch is
compacted (the live rows of the KV cache, positions and masks are gathered), so the decode
batch shrinks with the rows still running.

Sampling (`sampling.choose_tokens`) runs on the last pipeline stage's logits shard, on its device,
without gathering the vocabulary over TP; the chosen tokens and their log-probs are broadcast
from the last stage. Row ``g`` of a prompt draws its noise from the key of (prompt seed, g), so a
prompt's completions do not depend on the other prompts of the batch, the layout or a resume.
The one host read per token is whether every row is done.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
from megatron.core import parallel_state
from megatron.core.inference.communication_utils import (
    broadcast_from_last_pipeline_stage,
    recv_from_prev_pipeline_rank_,
    send_to_next_pipeline_rank,
)
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.transformer.dot_product_attention import DotProductAttention

from megatron_omni.generation.sampling import SamplingConfig, VocabShard, choose_tokens, row_keys
from megatron_omni.parallel.device import step_device

__all__ = ["Generated", "Generator", "GPTAdapter", "ModelAdapter", "Prompt", "SamplingConfig"]

COMPACT_WHEN_DONE = 0.25  # compact once this share of the current batch has finished


@dataclass
class Prompt:
    """One prompt to expand into G completions."""

    tokens: torch.Tensor  # [P]
    positions: torch.Tensor  # [3, P + max_new_tokens] (TMRoPE) or [P + max_new_tokens] (1-D RoPE)
    seed: int  # its completions' sampling seed (unused when greedy)
    media: dict | None = None  # what the adapter's prefill takes besides the tokens (None: text only)


@dataclass
class Generated:
    """The completions of every prompt: ``completions[i][g]`` holds prompt i's g-th completion
    (stop token included) and ``logprobs[i][g]`` the log-prob of each of its tokens at
    temperature 1 (fp32 on the CPU)."""

    completions: list[list[list[int]]]
    logprobs: list[list[torch.Tensor]]
    tokens_per_second: float


class ModelAdapter(Protocol):
    """What the generator needs from a model stage.

    ``forward(tokens [b, s], position_ids, ctx, attention_mask, media)`` returns this TP rank's
    vocabulary shard of the logits [b, s', V / tp] on the last pipeline stage and the hidden state
    to send on elsewhere; ``media`` (prefill only) holds a multimodal prompt's media inputs.
    """

    model: torch.nn.Module

    def forward(self, tokens, position_ids, ctx: StaticInferenceContext, attention_mask, media) -> torch.Tensor: ...

    def set_input_tensor(self, tensor: torch.Tensor) -> None: ...


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
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.masks_apply = all(isinstance(m, DotProductAttention) for m in adapter.model.modules()
                               if type(m).__name__.endswith("DotProductAttention"))

    def _forward(self, tokens, position_ids, ctx, attention_mask=None, media=None) -> torch.Tensor | None:
        """One forward over the pipeline: this TP rank's last-token logits shard [b, V / tp] on the
        last stage, None elsewhere."""
        b, s = tokens.shape
        if not self.first_stage:
            recv = torch.empty((s, b, self.hidden_size), dtype=self.params_dtype, device=self.device)
            recv_from_prev_pipeline_rank_(recv, self.pp_group)
            self.adapter.set_input_tensor(recv)
        output = self.adapter.forward(tokens, position_ids, ctx, attention_mask, media)
        if not self.last_stage:
            send_to_next_pipeline_rank(output.to(self.params_dtype), self.pp_group)
        ctx.increment_sequence_len_offset(s)
        return output[:, -1] if self.last_stage else None

    def _choose(self, logits, cfg, keys, step) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and log-probs of the rows on every pipeline stage (sampled on the last)."""
        rows = keys.shape[0]
        picked = None
        if self.last_stage:
            width = logits.shape[-1]
            shard = VocabShard(self.tp_rank * width, width, self.vocab_size, self.tp_group)
            token, logprob = choose_tokens(logits, shard, cfg, keys, step, self.suppressed)
            picked = torch.stack([token.double(), logprob.double()])
        picked = broadcast_from_last_pipeline_stage([2, rows], torch.float64, picked, self.pp_group)
        return picked[0].long(), picked[1].float()

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], group_size: int, cfg: SamplingConfig) -> Generated:
        """``group_size`` completions of each prompt, all decoded together (collective over the
        model's TP/PP ranks)."""
        model = self.adapter.model
        was_training = model.training
        contexts: list[StaticInferenceContext] = []
        model.eval()  # megatron uses the KV cache only outside training mode
        # GPTModel insists on gathering the vocabulary over TP in inference; the sampler works on
        # the shards, so the output layer's gather is switched off for the decode.
        hooks = [m.register_forward_pre_hook(_keep_vocab_shard, with_kwargs=True)
                 for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "output_layer"]
        try:
            return self._generate(prompts, group_size, cfg, contexts)
        finally:
            for hook in hooks:
                hook.remove()
            # The KV caches (keys and values [slots, rows, groups, head dim] per layer) go here,
            # before the training forwards, even while something (a traceback) still holds a context.
            for ctx in contexts:
                ctx.key_value_memory_dict.clear()
            model.train(was_training)

    def _generate(self, prompts, group_size, cfg, contexts) -> Generated:
        started = time.perf_counter()
        if not prompts:
            raise ValueError("generate() needs at least one prompt")
        lengths = [int(p.tokens.shape[0]) for p in prompts]
        longest, new = max(lengths), cfg.max_new_tokens
        if not self.masks_apply and len(set(lengths)) > 1:
            raise NotImplementedError(
                f"prompts of lengths {sorted(set(lengths))} need attention masks, which Transformer Engine's "
                "attention ignores in megatron's static inference: generate with the local attention spec "
                "(precision.transformer_engine=false)")
        rows, slots = len(prompts) * group_size, longest + new
        device = self.device
        mrope = prompts[0].positions.dim() == 2
        positions = torch.zeros((3, rows, slots) if mrope else (rows, slots), dtype=torch.long, device=device)
        padded = torch.zeros(rows, slots, dtype=torch.bool, device=device)  # True: a row's pad slots
        seeds = []

        # Prefill: each prompt alone (its media once), its KV into its G rows, left-padded to `longest`.
        decode = StaticInferenceContext(max_batch_size=rows, max_sequence_length=slots)
        contexts.append(decode)
        first_logits = []
        for i, (prompt, length) in enumerate(zip(prompts, lengths)):
            if prompt.positions.shape[-1] < length + new:
                raise ValueError(f"prompt {i}: positions cover {prompt.positions.shape[-1]} tokens, "
                                 f"need {length} + max_new_tokens ({new})")
            ctx = StaticInferenceContext(max_batch_size=1, max_sequence_length=length)
            contexts.append(ctx)
            pos = prompt.positions[..., : length + new].to(device)
            logits = self._forward(prompt.tokens[None].to(device), pos[..., :length].unsqueeze(-2), ctx,
                                   media=prompt.media)
            first_logits.append(logits)
            block, pad = slice(i * group_size, (i + 1) * group_size), longest - length
            positions[..., block, pad:] = pos.unsqueeze(-2)
            padded[block, :pad] = True
            for layer, (keys, values) in ctx.key_value_memory_dict.items():
                if layer not in decode.key_value_memory_dict:
                    shape = (slots, rows, *keys.shape[2:])
                    decode.key_value_memory_dict[layer] = (keys.new_zeros(shape), values.new_zeros(shape))
                cache_k, cache_v = decode.key_value_memory_dict[layer]
                cache_k[pad:longest, block] = keys[:length]
                cache_v[pad:longest, block] = values[:length]
            ctx.key_value_memory_dict.clear()
            seeds += [_row_seed(prompt.seed, g) for g in range(group_size)]
        decode.sequence_len_offset = longest
        logits = torch.cat(first_logits).repeat_interleave(group_size, dim=0) if self.last_stage else None
        keys = row_keys(seeds, device)

        out_tokens = torch.full((rows, new), self.pad_token_id, dtype=torch.long, device=device)
        out_logprobs = torch.zeros((rows, new), device=device)
        lengths_out = torch.full((rows,), new, dtype=torch.long, device=device)
        live = torch.arange(rows, device=device)  # the original row of each row of the batch
        done = torch.zeros(rows, dtype=torch.bool, device=device)  # per row of the batch
        stops = torch.tensor(cfg.stop_token_ids, dtype=torch.long, device=device)
        mask = padded[:, None, None, :] if bool(padded.any()) else None  # None: nothing to hide
        for t in range(new):
            token, logprob = self._choose(logits, cfg, keys, t)
            out_tokens[live, t], out_logprobs[live, t] = token, logprob
            # A finished row still in the batch keeps decoding until a compaction; its tokens are cut.
            finished = torch.isin(token, stops) & ~done
            lengths_out[live[finished]] = t + 1
            done |= finished
            running = int((~done).sum())  # the step's one host read
            if running == 0 or t == new - 1:
                break
            if live.shape[0] - running >= COMPACT_WHEN_DONE * live.shape[0]:
                keep = ~done
                live, keys, token, done = live[keep], keys[keep], token[keep], done[keep]
                positions = positions[..., keep, :]
                mask = mask[keep] if mask is not None else None
                for layer, (cache_k, cache_v) in decode.key_value_memory_dict.items():
                    decode.key_value_memory_dict[layer] = (cache_k[:, keep], cache_v[:, keep])
            end = longest + t + 1
            logits = self._forward(token[:, None], positions[..., :end], decode,
                                   mask[..., :end] if mask is not None else None)

        lengths_host = lengths_out.tolist()
        tokens_host, logprobs_host = out_tokens.cpu(), out_logprobs.cpu()
        completions, logprobs = [], []
        for i in range(len(prompts)):
            block = range(i * group_size, (i + 1) * group_size)
            completions.append([tokens_host[r, : lengths_host[r]].tolist() for r in block])
            logprobs.append([logprobs_host[r, : lengths_host[r]].clone() for r in block])
        elapsed = time.perf_counter() - started
        return Generated(completions, logprobs, tokens_per_second=sum(lengths_host) / max(elapsed, 1e-9))


def _keep_vocab_shard(module, args, kwargs):
    return args, {**kwargs, "runtime_gather_output": False}


def _row_seed(seed: int, completion: int) -> int:
    """The sampling seed of a prompt's ``completion``-th row."""
    return seed * 1_000_003 + completion


class GPTAdapter:
    """A megatron ``GPTModel`` stage with text prompts."""

    def __init__(self, model):
        self.model = model

    def forward(self, tokens, position_ids, ctx, attention_mask, media):
        if media:
            raise ValueError("a text model takes no media")
        # True: GPTModel's inference check; the generator keeps the output layer's logits sharded.
        return self.model(tokens, position_ids, attention_mask, inference_context=ctx, runtime_gather_output=True)

    def set_input_tensor(self, tensor):
        self.model.set_input_tensor(tensor)
