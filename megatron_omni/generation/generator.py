"""Sampling from a megatron model at any TP/PP: all prompts of a step in one decode.

Layout. ``B`` prompts of lengths ``P_i`` with ``G`` completions each make ``B x G`` rows. Each
prompt is prefilled once, alone (batch 1, causal, its media encoded once), and its keys and values
are written into its G rows of one KV cache *left-padded* to the longest prompt ``L``: prompt i
sits at slots ``[L - P_i, L)``, its completions from slot ``L`` on. All rows share one write slot,
so every decode step runs all live rows as one batch of one token each.

The cache is the engine's own (`KVCache`), not megatron's ``StaticInferenceContext`` cache:
megatron's static path keeps keys unrotated and re-applies RoPE to the whole cache at every step,
and repeats grouped keys and values to every head, which made a CPU decode step several times
dearer than transformers' (tools/bench_rollout.py). While the engine runs, each megatron attention module of the model
computes its projections, RoPE and output projection with megatron's own functions, but stores
keys *rotated* (RoPE of the new token only, with the positions the model computed) and attends
over the grouped cache without repeating it per head (prefill: causal SDPA over the prompt; a
decode step: two batched matmuls per key group). megatron's ``StaticInferenceContext`` is
still passed, for what GPTModel does in inference (logits of the last token only, 1-D RoPE tables).

Per-op overhead. A decode step of a small model is hundreds of small ops, so while the engine runs
megatron's local-spec linear layers call their weights directly (`_direct_linears`: the same
matmul, bias and TP all-reduce, bit-equal, without the autograd functions), and on CPU the
compatibility layer's TorchFunctionMode, which would route every op through Python, is left
(``cuda_redirect_suspended``). docs/PERFORMANCE.md "Rollout engine" has the figures.

Exactness. Pad slots are masked (-inf scores: exactly zero weight on their zero keys and values)
and nothing is recomputed.
Positions are per row: position_ids [3, rows, 1] carry each row's own TMRoPE positions (and
``extend_positions`` text positions after the prompt); with 1-D RoPE a row's positions are its
slots, which shifts a row's positions by its padding and leaves every relative distance as is.

Work. A finished row stops costing work: once a quarter of the batch has finished, the batch is
compacted (the live rows of the cache, positions and masks are gathered), so the decode batch
shrinks with the rows still running.

Sampling (`sampling.choose_tokens`) runs on the last pipeline stage's logits shard, on its device,
without gathering the vocabulary over TP; the chosen tokens and their log-probs are broadcast
from the last stage. Row ``g`` of a prompt draws its noise from the key of (prompt seed, g), so a
prompt's completions do not depend on the other prompts of the batch, the layout or a resume.
The one host read per token is whether every row is done.

Expert parallelism. The ranks of an expert-parallel group are data-parallel replicas with their own
prompts, but every MoE layer's forward exchanges tokens over the whole group, so their forwards
must run in step: the same number of prefills and of decode steps on each (the token counts may
differ, `models.moe`). Under EP > 1 a rank with fewer prompts prefills and decodes one-token pad
prompts in their place (their completions are dropped), and the decode ends when the rows of every
rank of the group are done: a rank whose rows are all done decodes one finished row on (its tokens
are cut). That costs one small all-reduce per token, on the expert group only.
"""
from __future__ import annotations

import functools
import math
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.inference.communication_utils import (
    broadcast_from_last_pipeline_stage,
    recv_from_prev_pipeline_rank_,
    send_to_next_pipeline_rank,
)
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import (
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    scatter_to_tensor_model_parallel_region,
)
from megatron.core.transformer.attention import SelfAttention

from megatron_omni.generation.sampling import SamplingConfig, VocabShard, choose_tokens, row_keys
from megatron_omni.parallel.cpu_compat import cuda_redirect_suspended
from megatron_omni.parallel.device import step_device
from megatron_omni.parallel.runtime import expert_group_max

__all__ = ["Generated", "Generator", "GPTAdapter", "KVCache", "ModelAdapter", "Prompt", "SamplingConfig"]

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

    ``forward(tokens [b, s], position_ids, ctx, media)`` returns this TP rank's vocabulary shard of
    the last token's logits [b, 1, V / tp] on the last pipeline stage and the hidden state to send
    on elsewhere; ``media`` (prefill only) holds a multimodal prompt's media inputs. ``mrope``:
    whether positions are [3, ...] (TMRoPE) rather than 1-D.
    """

    model: torch.nn.Module
    mrope: bool

    def forward(self, tokens, position_ids, ctx: StaticInferenceContext, media) -> torch.Tensor: ...

    def set_input_tensor(self, tensor: torch.Tensor) -> None: ...


class KVCache:
    """Rotated keys [rows, groups, head dim, slots] (stored transposed: the decode scores' batched
    matmul over [head dim, slots] runs 3x faster on CPU than over their transpose) and values
    [rows, groups, slots, head dim] of each attention layer of this stage, and where the next
    forward goes: ``rows`` (a prefill's G rows; None: the whole batch decodes), ``start`` (the
    first slot it writes) and ``padding`` (decode: [rows, 1, 1, slots] True on a row's pad slots,
    None: no row has any)."""

    def __init__(self, rows: int, slots: int):
        self.size, self.slots = rows, slots
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.rows: slice | None = None
        self.start = 0
        self.padding: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None  # the decode's additive score mask, made from _bias_of
        self._bias_of: torch.Tensor | None = None

    def attend(self, layer: int, query, key, value, scale: float) -> torch.Tensor:
        """Store this forward's (rotated) keys and values; attention of ``query`` [b, heads, s, d]
        over what its rows may see: [b, heads, s, d]."""
        key, value = key.permute(1, 2, 0, 3), value.permute(1, 2, 0, 3)  # [b, groups, s, d]
        _, groups, s, d = key.shape
        if layer not in self.layers:
            self.layers[layer] = (key.new_zeros(self.size, groups, d, self.slots),
                                  value.new_zeros(self.size, groups, self.slots, d))
        keys, values = self.layers[layer]
        end = self.start + s
        if self.rows is not None:  # a prompt's prefill: it attends to itself, causally
            keys[self.rows, :, :, self.start : end] = key.transpose(-1, -2)
            values[self.rows, :, self.start : end] = value
            return F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale, enable_gqa=True)
        if s != 1:
            raise ValueError(f"a decode step takes one token per row, got {s}")
        keys[..., self.start : end] = key.transpose(-1, -2)
        values[:, :, self.start : end] = value
        # One query token against the grouped cache: each group's query heads share its keys
        # (megatron orders the heads group by group), without repeating the keys per head; batched
        # matmuls beat SDPA's CPU kernel, which tiles for long queries. The scale and the pad mask
        # go into the scores' matmul (baddbmm).
        b, heads = query.shape[:2]
        rows = b * groups
        scores = torch.baddbmm(self._score_bias(groups)[..., :end], query.reshape(rows, heads // groups, d),
                               keys.view(rows, d, self.slots)[..., :end], alpha=scale)
        probs = torch.softmax(scores.float(), dim=-1).to(values.dtype)
        return torch.bmm(probs, values.view(rows, self.slots, d)[:, :end]).reshape(b, heads, 1, d)

    def _score_bias(self, groups: int) -> torch.Tensor:
        """0 on the slots a row sees, -inf on its pad slots: [rows x groups, 1, slots], made once
        per ``padding`` (the decode's, then each compaction's)."""
        if self._bias is None or self._bias_of is not self.padding:
            keys = next(iter(self.layers.values()))[0]
            bias = keys.new_zeros(self.size, groups, 1, self.slots)
            if self.padding is not None:
                bias.masked_fill_(self.padding, float("-inf"))
            self._bias, self._bias_of = bias.view(self.size * groups, 1, self.slots), self.padding
        return self._bias

    def keep(self, rows: torch.Tensor) -> None:
        """Only the rows of the batch marked in ``rows`` (bool [rows]) decode on (a compaction)."""
        self.layers = {layer: (k[rows], v[rows]) for layer, (k, v) in self.layers.items()}
        self.size = int(rows.sum())
        self._bias = None
        if self.padding is not None:
            self.padding = self.padding[rows]


def _cached_attention(cache: KVCache, attn: SelfAttention, hidden_states, attention_mask=None, key_value_states=None,
                      inference_context=None, rotary_pos_emb=None, **unused):
    """megatron's SelfAttention.forward on the engine's cache (its projections, RoPE and output
    projection; keys stored rotated; attention over the grouped cache)."""
    query, key, value = attn.get_query_key_value_tensors(hidden_states, key_value_states)  # [s, b, heads, d]
    s, b = query.shape[:2]
    if rotary_pos_emb is not None:
        q_emb, k_emb = rotary_pos_emb if isinstance(rotary_pos_emb, tuple) else (rotary_pos_emb, None)
        if q_emb.shape[0] != s:  # 1-D RoPE: a table over every slot
            q_emb = q_emb[cache.start : cache.start + s]
            k_emb = None if k_emb is None else k_emb[cache.start : cache.start + s]
        if k_emb is None:  # one table: the query and key heads rotate in one call (elementwise, the same values)
            heads = query.shape[2]
            rotated = apply_rotary_pos_emb(torch.cat([query, key], dim=2), q_emb, config=attn.config)
            query, key = rotated[:, :, :heads], rotated[:, :, heads:]
        else:
            query = apply_rotary_pos_emb(query, q_emb, config=attn.config)
            key = apply_rotary_pos_emb(key, k_emb, config=attn.config)
    scale = attn.config.softmax_scale or 1.0 / math.sqrt(query.shape[-1])
    context = cache.attend(attn.layer_number, query.permute(1, 2, 0, 3), key, value, scale)
    return attn.linear_proj(context.permute(2, 0, 1, 3).reshape(s, b, -1))


@contextmanager
def _engine_attention(model: torch.nn.Module, cache: KVCache):
    """The model's megatron attention modules on ``cache`` while the engine runs."""
    modules = [m for m in model.modules() if isinstance(m, SelfAttention)]
    for m in modules:
        if getattr(m.config, "attention_output_gate", False) or m.config.sequence_parallel or m.config.context_parallel_size > 1:
            raise NotImplementedError("the generation engine's attention needs parallel.sequence_parallel=false, no "
                                      "context parallelism and no gated attention (one decode token cannot be split)")
        m.forward = types.MethodType(lambda self, *args, **kwargs: _cached_attention(cache, self, *args, **kwargs), m)
    try:
        yield
    finally:
        for m in modules:
            del m.forward


def _column_forward(layer: ColumnParallelLinear, input_, weight=None, runtime_gather_output=None):
    """ColumnParallelLinear.forward under no_grad without its autograd function: the same matmul
    and bias add (bit-equal), the input's copy to the TP region being the identity forward."""
    output = torch.matmul(input_, (layer.weight if weight is None else weight).t())
    if layer.bias is not None and not layer.skip_bias_add:
        output = output + layer.bias
    if layer.gather_output if runtime_gather_output is None else runtime_gather_output:
        output = gather_from_tensor_model_parallel_region(output, group=layer.tp_group)
    return output, layer.bias if layer.skip_bias_add else None


def _row_forward(layer: RowParallelLinear, input_, reduce: bool):
    """RowParallelLinear.forward under no_grad without its autograd function: the same matmul,
    the all-reduce over TP (``reduce``: TP > 1 and not an expert's explicit communication), the
    bias add."""
    if not layer.input_is_parallel:
        input_ = scatter_to_tensor_model_parallel_region(input_, group=layer.tp_group)
    output = torch.matmul(input_, layer.weight.t())
    if reduce:
        output = reduce_from_tensor_model_parallel_region(output, group=layer.tp_group)
    if layer.skip_bias_add or layer.bias is None:
        return output, layer.bias if layer.skip_bias_add else None
    return output + layer.bias, None


@contextmanager
def _direct_linears(model: torch.nn.Module):
    """megatron's local-spec linear layers of the model call their weights directly while the
    engine runs (under no_grad): their autograd functions, saving inputs for a backward that
    never comes, are most of a small decode step's per-op overhead. Subclasses (and Transformer
    Engine's layers) keep their own forward."""
    modules = []
    for m in model.modules():
        if type(m) is ColumnParallelLinear:
            m.forward = functools.partial(_column_forward, m)
        elif type(m) is RowParallelLinear:
            m.forward = functools.partial(_row_forward, m, reduce=m.tp_group.size() > 1 and not m.explicit_expert_comm)
        else:
            continue
        modules.append(m)
    try:
        yield
    finally:
        for m in modules:
            del m.forward


def _keep_vocab_shard(module, args, kwargs):
    return args, {**kwargs, "runtime_gather_output": False}


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
        self.pp_size = parallel_state.get_pipeline_model_parallel_world_size()
        self.first_stage = parallel_state.is_pipeline_first_stage()
        self.last_stage = parallel_state.is_pipeline_last_stage()
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        # Whether this rank's forwards run in step with its expert group's (module docstring).
        self.lockstep = parallel_state.get_expert_model_parallel_world_size() > 1

    def _pad_prompt(self, new_tokens: int) -> Prompt:
        """A one-token text prompt that keeps this rank's forwards in step (its completions are dropped)."""
        positions = torch.zeros((3, 1 + new_tokens) if self.adapter.mrope else (1 + new_tokens,), dtype=torch.long)
        return Prompt(torch.tensor([self.pad_token_id]), positions, seed=0)

    def _forward(self, tokens, position_ids, ctx, media=None) -> torch.Tensor | None:
        """One forward over the pipeline: this TP rank's last-token logits shard [b, V / tp] on the
        last stage, None elsewhere."""
        b, s = tokens.shape
        if not self.first_stage:
            recv = torch.empty((s, b, self.hidden_size), dtype=self.params_dtype, device=self.device)
            recv_from_prev_pipeline_rank_(recv, self.pp_group)
            self.adapter.set_input_tensor(recv)
        output = self.adapter.forward(tokens, position_ids, ctx, media)
        if not self.last_stage:
            send_to_next_pipeline_rank(output.to(self.params_dtype), self.pp_group)
        return output[:, -1] if self.last_stage else None

    def _choose(self, logits, cfg, keys, step) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and log-probs of the rows on every pipeline stage (sampled on the last)."""
        rows = keys.shape[0]
        picked = None
        if self.last_stage:
            width = logits.shape[-1]
            shard = VocabShard(self.tp_rank * width, width, self.vocab_size, self.tp_group)
            token, logprob = choose_tokens(logits, shard, cfg, keys, step, self.suppressed)
            if self.pp_size == 1:
                return token, logprob
            picked = torch.stack([token.double(), logprob.double()])
        picked = broadcast_from_last_pipeline_stage([2, rows], torch.float64, picked, self.pp_group)
        return picked[0].long(), picked[1].float()

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], group_size: int, cfg: SamplingConfig) -> Generated:
        """``group_size`` completions of each prompt, decoded together up to ``cfg.max_decode_rows``
        rows at a time (collective over the model's TP/PP ranks and, under expert parallelism, its
        expert group, where a rank may have no prompt). A row's draws depend on its prompt's seed
        only, so how the prompts are split into decodes changes no completion."""
        started = time.perf_counter()
        requested = len(prompts)
        if self.lockstep:
            prompts = prompts + [self._pad_prompt(cfg.max_new_tokens)] * (expert_group_max(requested) - requested)
        per_decode = max(1, len(prompts)) if cfg.max_decode_rows is None else max(1, cfg.max_decode_rows // group_size)
        completions, logprobs = [], []
        for i in range(0, len(prompts), per_decode):
            part = self._decode(prompts[i : i + per_decode], group_size, cfg)
            completions += part[0]
            logprobs += part[1]
        completions, logprobs = completions[:requested], logprobs[:requested]
        tokens = sum(len(ids) for group in completions for ids in group)
        return Generated(completions, logprobs, tokens_per_second=tokens / max(time.perf_counter() - started, 1e-9))

    def _decode(self, prompts: list[Prompt], group_size: int, cfg: SamplingConfig):
        """One decode of every prompt's G rows in one batch: (completions, logprobs) per prompt."""
        model = self.adapter.model
        was_training = model.training
        longest = max(int(p.tokens.shape[0]) for p in prompts)
        cache = KVCache(len(prompts) * group_size, longest + cfg.max_new_tokens)
        # GPTModel's inference mode: logits of the last token only, 1-D RoPE tables over every slot.
        ctx = StaticInferenceContext(max_batch_size=cache.size, max_sequence_length=cache.slots)
        model.eval()
        # GPTModel insists on gathering the vocabulary over TP in inference; the sampler works on
        # the shards, so the output layer's gather is switched off for the decode.
        hooks = [m.register_forward_pre_hook(_keep_vocab_shard, with_kwargs=True)
                 for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "output_layer"]
        try:
            with _engine_attention(model, cache), _direct_linears(model), cuda_redirect_suspended():
                return self._generate(prompts, group_size, cfg, cache, ctx, longest)
        finally:
            # The KV cache goes here, before the training forwards, even while something (a
            # traceback) still holds the cache or the context.
            cache.layers.clear()
            ctx.key_value_memory_dict.clear()
            for hook in hooks:
                hook.remove()
            model.train(was_training)

    def _generate(self, prompts, group_size, cfg, cache: KVCache, ctx, longest):
        new, rows, device = cfg.max_new_tokens, cache.size, self.device
        mrope = prompts[0].positions.dim() == 2
        # Each row's position at each slot (pad slots: 0, never seen).
        positions = torch.zeros((3, rows, cache.slots) if mrope else (rows, cache.slots), dtype=torch.long, device=device)
        padded = torch.zeros(rows, cache.slots, dtype=torch.bool, device=device)  # True: a row's pad slots
        seeds, first_logits = [], []
        for i, prompt in enumerate(prompts):  # prefill: each prompt alone, its media once
            length = int(prompt.tokens.shape[0])
            if prompt.positions.shape[-1] < length + new:
                raise ValueError(f"prompt {i}: positions cover {prompt.positions.shape[-1]} tokens, "
                                 f"need {length} + max_new_tokens ({new})")
            pos = prompt.positions[..., : length + new].to(device)
            cache.rows, cache.start = slice(i * group_size, (i + 1) * group_size), longest - length
            positions[..., cache.rows, cache.start :] = pos.unsqueeze(-2)
            padded[cache.rows, : cache.start] = True
            first_logits.append(self._forward(prompt.tokens[None].to(device), pos[..., :length].unsqueeze(-2), ctx,
                                              media=prompt.media))
            seeds += [_row_seed(prompt.seed, g) for g in range(group_size)]
        cache.rows = None
        cache.padding = padded[:, None, None, :] if bool(padded.any()) else None
        logits = torch.cat(first_logits).repeat_interleave(group_size, dim=0) if self.last_stage else None
        keys = row_keys(seeds, device)

        out_tokens = torch.full((rows, new), self.pad_token_id, dtype=torch.long, device=device)
        out_logprobs = torch.zeros((rows, new), device=device)
        lengths = torch.full((rows,), new, dtype=torch.long, device=device)
        live = torch.arange(rows, device=device)  # the original row of each row of the batch
        done = torch.zeros(rows, dtype=torch.bool, device=device)  # per row of the batch
        stops = torch.tensor(cfg.stop_token_ids, dtype=torch.long, device=device)
        for t in range(new):
            token, logprob = self._choose(logits, cfg, keys, t)
            out_tokens[live, t], out_logprobs[live, t] = token, logprob
            # A finished row still in the batch keeps decoding until a compaction; its tokens are cut.
            finished = torch.isin(token, stops) & ~done
            lengths[live[finished]] = t + 1
            done |= finished
            running = int((~done).sum())  # the step's one host read
            if t == new - 1 or (expert_group_max(running) if self.lockstep else running) == 0:
                break
            if live.shape[0] - running >= COMPACT_WHEN_DONE * live.shape[0] and live.shape[0] > max(running, 1):
                keep = ~done
                if running == 0:  # the lockstep group decodes on: one finished row keeps this rank in step
                    keep[0] = True
                live, keys, token, done = live[keep], keys[keep], token[keep], done[keep]
                positions = positions[..., keep, :]
                cache.keep(keep)
            cache.start = longest + t
            slot = positions[..., cache.start : cache.start + 1]
            logits = self._forward(token[:, None], slot, ctx)

        lengths_host = lengths.tolist()
        tokens_host, logprobs_host = out_tokens.cpu(), out_logprobs.cpu()
        completions, logprobs = [], []
        for i in range(len(prompts)):
            block = range(i * group_size, (i + 1) * group_size)
            completions.append([tokens_host[r, : lengths_host[r]].tolist() for r in block])
            logprobs.append([logprobs_host[r, : lengths_host[r]].clone() for r in block])
        return completions, logprobs


def _row_seed(seed: int, completion: int) -> int:
    """The sampling seed of a prompt's ``completion``-th row."""
    return seed * 1_000_003 + completion


class GPTAdapter:
    """A megatron ``GPTModel`` stage with text prompts."""

    def __init__(self, model):
        self.model = model
        self.mrope = model.position_embedding_type == "mrope"

    def forward(self, tokens, position_ids, ctx, media):
        if media:
            raise ValueError("a text model takes no media")
        # True: GPTModel's inference check; the generator keeps the output layer's logits sharded.
        return self.model(tokens, position_ids, None, inference_context=ctx, runtime_gather_output=True)

    def set_input_tensor(self, tensor):
        self.model.set_input_tensor(tensor)
