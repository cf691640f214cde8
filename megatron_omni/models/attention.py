"""Core attention of the local (plain torch) layer spec that honours packed sequences.

megatron-core's ``DotProductAttention`` refuses ``PackedSeqParams``; Transformer Engine's
attention takes them on GPU. ``PackedDotProductAttention`` is the local spec's core attention
with the same contract as TE's: for ``qkv_format="thd"`` the query, key and value come as
[t, heads, head_dim] (megatron squeezes the batch of one) and each token attends causally to the
tokens of its own segment of ``cu_seqlens`` only, so a packed row computes what each of its
samples computes alone. Padded batches take megatron's own path unchanged.

Each segment goes through megatron's own attention alone (its causal mask, softmax, scaling and
dropout), so a packed row costs sum(L_i^2) score entries, as TE's THD attention does, and not the
t^2 of one masked [t, t] block: a row of 768 tokens holding two samples of 380 costs half as much,
and the segments' results equal what each sample computes in a padded row.
"""
from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


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
        # One host read of the segment lengths (a few numbers); the local spec runs where TE does not.
        lengths = (cu_q[1:] - cu_q[:-1]).tolist()
        if sum(lengths) != query.shape[0]:
            raise ValueError(f"cu_seqlens cover {sum(lengths)} tokens, the packed sequence holds {query.shape[0]}")
        # [L, heads, dim] -> [L, 1, heads, dim]: megatron's batched causal path, one segment at a time.
        attend = super().forward
        contexts = [attend(q[:, None], k[:, None], v[:, None], None, AttnMaskType.causal)
                    for q, k, v in zip(query.split(lengths), key.split(lengths), value.split(lengths)) if len(q)]
        return torch.cat(contexts).squeeze(1)
