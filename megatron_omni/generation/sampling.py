"""Choosing the next token where the logits are: greedy, or temperature / top-k / top-p sampling
by Gumbel-max, on this rank's vocabulary shard, without gathering the vocabulary over TP.

Gumbel-max draws ``argmax_v (z_v + g_v)``, ``z = logits / T`` restricted to the top-k / top-p set
and ``g_v = -log(-log u_v)``: a sample of ``softmax(z)`` over that set. ``u_v`` is a counter-based
hash of (row key, step, *global* vocabulary id), so every TP rank computes the noise of its own
columns only, and TP=1 and TP=2 draw the same token; nothing is stateful, so a resumed run draws
what the uninterrupted one drew. The TP collectives per step are small: the log-prob normaliser
(a max and a sum per row), the top-k candidates of each shard (k values per row; top-p alone
gathers the shard's whole sorted values, the one case where the set is not bounded by k) and
(value, id, logit) of each shard's winner.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from megatron_omni.config import ConfigError

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.9
    top_p: float = 1.0
    top_k: int = 50  # 0: no top-k
    greedy: bool = False
    stop_token_ids: list[int] = field(default_factory=list)
    # Rows (prompts x completions per prompt) decoded together at most: a rank's prompts go in
    # consecutive decodes of max_decode_rows // G prompts (one at least), which bounds the KV cache
    # at rows x (longest prompt + max_new_tokens) slots. null: all of a rank's prompts at once.
    # The completions do not depend on it.
    max_decode_rows: int | None = None

    def validate(self, key: str) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"{key}.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_decode_rows is not None and self.max_decode_rows < 1:
            raise ConfigError(f"{key}.max_decode_rows must be >= 1 (null: all prompts in one decode), "
                              f"got {self.max_decode_rows}")
        if not self.greedy and self.temperature <= 0:
            raise ConfigError(f"{key}.temperature must be > 0 when sampling, got {self.temperature} "
                              f"(set {key}.greedy=true for greedy decoding)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"{key}.top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"{key}.top_k must be >= 0 (0: no top-k), got {self.top_k}")


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash of int64 values, elementwise (Wellons' hash-prospector function with
    multipliers below 2**31: a product of a 32-bit value never leaves int64's range)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def row_keys(seeds: list[int], device) -> torch.Tensor:
    """The noise key of each row from its seed (any Python int): int64 [rows]."""
    seeds = [int(s) % (1 << 64) for s in seeds]
    low = torch.tensor([s & _MASK32 for s in seeds], dtype=torch.long, device=device)
    high = torch.tensor([s >> 32 for s in seeds], dtype=torch.long, device=device)
    return mix32(mix32(low) ^ mix32(high + _GOLDEN))


def gumbel_noise(keys: torch.Tensor, step: int, ids: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise of (row key, step, global vocabulary id): fp32 [rows, n] for ``ids``
    [n] (the same ids on every row) or [rows, n]."""
    step_keys = mix32(keys ^ mix32(torch.full_like(keys, (step * _GOLDEN + 1) & _MASK32)))
    bits = mix32(step_keys[:, None] ^ mix32(ids + 0x632BE5AB))
    # 24 bits -> u in (0, 1), never 0 or 1, exact in fp32
    u = ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))
    return -torch.log(-torch.log(u))


@dataclass
class VocabShard:
    """This rank's columns of the logits: global ids [start, start + width), the real ones below
    ``vocab_size`` (the rest is megatron's padding), under the TP ``group`` (None: unsharded)."""

    start: int
    width: int
    vocab_size: int
    group: dist.ProcessGroup | None = None

    @property
    def sharded(self) -> bool:
        return self.group is not None and dist.get_world_size(self.group) > 1

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """[tp, *tensor.shape] in rank order (the shards' vocabulary order)."""
        if not self.sharded:
            return tensor.unsqueeze(0)
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(out, tensor.contiguous(), group=self.group)
        return torch.stack(out)

    def all_reduce(self, tensor: torch.Tensor, op) -> torch.Tensor:
        if self.sharded:
            dist.all_reduce(tensor, op=op, group=self.group)
        return tensor


def _threshold(values: torch.Tensor, cfg: SamplingConfig, shard: VocabShard, k: int) -> torch.Tensor:
    """[rows, 1]: the smallest value of z kept by top-k, then top-p over the renormalised top-k
    set (a token is dropped once the mass before it reaches top_p; the top token always stays).
    ``values``: this shard's candidates, its k largest values of z (k = 0: all, sorted)."""
    values = shard.all_gather(values).transpose(0, 1).reshape(values.shape[0], -1)  # [rows, tp * C]
    values = torch.sort(values, dim=-1, descending=True).values[:, : k or None]
    if cfg.top_p >= 1.0:
        return values[:, -1:]
    probs = torch.softmax(values, dim=-1)
    before = probs.cumsum(dim=-1) - probs
    kept = (before < cfg.top_p).sum(dim=-1, keepdim=True)  # >= 1: the top token's "before" is 0
    return values.gather(1, kept - 1)


def choose_tokens(logits: torch.Tensor, shard: VocabShard, cfg: SamplingConfig, keys: torch.Tensor | None,
                  step: int, suppressed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token of each row and its log-prob at temperature 1 over the real vocabulary
    (unfiltered: the trainer's definition), from this shard's logits [rows, width].

    ``keys``: each row's noise key (`row_keys`), unused when greedy; ``suppressed``: global ids
    never chosen (they still count in the log-prob's normaliser). Collective over ``shard.group``;
    every rank returns the same tokens [rows] (int64) and log-probs [rows] (fp32).

    With top-k only a shard's k largest values can be drawn, so the noise is drawn for those
    candidates alone (k per row instead of the vocabulary). Equal logits at the top-k boundary
    are the one case where a shard's candidates and the whole vocabulary's could differ."""
    width = logits.shape[-1]
    raw = logits.float()
    if shard.start + width > shard.vocab_size:  # megatron's padding columns
        raw = raw.masked_fill(torch.arange(shard.start, shard.start + width, device=raw.device) >= shard.vocab_size,
                              float("-inf"))
    peak = shard.all_reduce(raw.max(dim=-1).values, dist.ReduceOp.MAX)
    total = shard.all_reduce(torch.exp(raw - peak[:, None]).sum(dim=-1), dist.ReduceOp.SUM)
    local = suppressed[(suppressed >= shard.start) & (suppressed < shard.start + width)] - shard.start
    score = raw.index_fill(1, local, float("-inf"))
    k = cfg.top_k if 0 < cfg.top_k < shard.vocab_size else 0
    if cfg.greedy:
        best, index = score.max(dim=-1)  # the first of equal maxima: the lowest id, as on one rank
    elif k:
        values, index = torch.topk(score / cfg.temperature, min(k, width), dim=-1)
        values = values.masked_fill(values < _threshold(values, cfg, shard, k), float("-inf"))
        best, pick = (values + gumbel_noise(keys, step, index + shard.start)).max(dim=-1)
        index = index.gather(1, pick[:, None])[:, 0]
    else:
        score = score / cfg.temperature
        if cfg.top_p < 1.0:
            ordered = torch.sort(score, dim=-1, descending=True).values
            score = score.masked_fill(score < _threshold(ordered, cfg, shard, 0), float("-inf"))
        columns = torch.arange(shard.start, shard.start + width, device=raw.device)
        best, index = (score + gumbel_noise(keys, step, columns)).max(dim=-1)
    winners = torch.stack([best.double(), (index + shard.start).double(), raw.gather(1, index[:, None])[:, 0].double()])
    gathered = shard.all_gather(winners)  # [tp, 3, rows]; equal maxima: the lowest rank, i.e. the lowest id
    rank = gathered[:, 0].argmax(dim=0, keepdim=True)  # [1, rows]
    token = gathered[:, 1].gather(0, rank)[0].long()
    chosen = gathered[:, 2].gather(0, rank)[0]
    return token, (chosen - peak.double() - torch.log(total.double())).float()
