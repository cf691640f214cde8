"""Core attention of the local (plain torch) layer spec that honours packed sequences.

megatron-core's ``DotProductAttention`` refuses ``PackedSeqParams``; Transformer Engine's
attention takes them on GPU. ``PackedDotProductAttention`` is the local spec's core attention
with the same contract as TE's: for ``qkv_format="thd"`` the query, key and value come as
[t, heads, head_dim] (megatron squeezes the batch of one) and each token attends causally to the
tokens of its own segment of ``cu_seqlens`` only, so a packed row computes what each of its
samples computes alone. Padded batches take megatron's own path unchanged.
"""
from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


def packed_causal_mask(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Bool [1, 1, total, total], True where attention is masked: a key of another segment of
    ``cu_seqlens`` or a later token. Built on the device of ``cu_seqlens`` with no host read."""
    positions = torch.arange(total, device=cu_seqlens.device)
    segment = torch.bucketize(positions, cu_seqlens[1:].to(positions.dtype), right=True)
    other = segment[:, None] != segment[None, :]
    later = positions[None, :] > positions[:, None]
    return (other | later)[None, None]


class PackedDotProductAttention(DotProductAttention):
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ):
        if packed_seq_params is None:
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias)
        if packed_seq_params.qkv_format != "thd":
            raise ValueError(f"PackedSeqParams.qkv_format {packed_seq_params.qkv_format!r}: the local core "
                             "attention takes packed sequences in the 'thd' layout only")
        if attention_mask is not None:
            raise ValueError("packed sequences take their mask from cu_seqlens: attention_mask must be None")
        cu_q, cu_kv = packed_seq_params.cu_seqlens_q, packed_seq_params.cu_seqlens_kv
        if cu_kv is not cu_q and not torch.equal(cu_q, cu_kv):
            raise ValueError("the local core attention packs self-attention only: cu_seqlens_q must equal cu_seqlens_kv")
        mask = packed_causal_mask(cu_q, query.shape[0])
        # [t, heads, dim] -> [t, 1, heads, dim]: megatron's batched path with the packed mask.
        context = super().forward(query[:, None], key[:, None], value[:, None], mask, AttnMaskType.arbitrary)
        return context.squeeze(1)
