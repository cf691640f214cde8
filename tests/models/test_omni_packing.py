"""Packed (THD) forwards of the omni model against padded ones and transformers: the local core
attention keeps packed samples apart, TMRoPE positions restart per sample, each sample's video
and audio reach its own placeholders, and the loss and masked-modality forwards agree."""
from __future__ import annotations

import pytest
import torch
from megatron.core.packed_seq_params import PackedSeqParams
from omni_helpers import VOCAB, hf_logits, make_batch, processed_samples

from megatron_omni.algorithms.lm import masked_token_sum
from megatron_omni.data.batch import pack, pad
from megatron_omni.models.attention import PackedDotProductAttention
from megatron_omni.models.masking import ModalityMask

# A packed row longer than both samples: it ends in a padding segment of its own.
ROW = 160


@pytest.fixture(params=[False, True], ids=["separate", "audio_in_video"])
def layouts(request, converted_thinker):
    batch = make_batch(converted_thinker.hf_model, use_audio_in_video=request.param)
    samples = processed_samples(batch)
    assert sum(s.length for s in samples) < ROW
    return batch, pad(samples), pack(samples, pad_to_multiple_of=ROW)


def forward(model, batch, **kwargs):
    with torch.no_grad():
        return model(batch.tokens, batch.position_ids, None, **batch.model_kwargs(), **kwargs)


def test_local_spec_takes_packed_sequences(omni_model):
    attention = omni_model.language_model.decoder.layers[0].self_attention.core_attention
    assert isinstance(attention, PackedDotProductAttention)


def test_segment_attention_equals_masked_full_attention(omni_model):
    """Each segment attended alone (megatron's causal path per segment) against one hand-built
    block-diagonal causal softmax over the whole row, forward and gradients, the row ending in a
    padding segment and holding a one-token segment."""
    attention = omni_model.language_model.decoder.layers[0].self_attention.core_attention
    heads, groups = attention.num_attention_heads_per_partition, attention.num_query_groups_per_partition
    dim = attention.hidden_size_per_attention_head
    cu = torch.tensor([0, 5, 6, 13, 16], dtype=torch.int32)  # samples of 5, 1 and 7 tokens, 3 of padding
    total = int(cu[-1])
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(total, n, dim, generator=generator, requires_grad=True) for n in (heads, groups, groups))
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=7, max_seqlen_kv=7)
    mine = attention(q, k, v, None, packed_seq_params=params)

    segment = torch.repeat_interleave(torch.arange(len(cu) - 1), cu.diff().long())
    position = torch.arange(total)
    allowed = (segment[:, None] == segment[None, :]) & (position[None, :] <= position[:, None])
    keys, values = (x.repeat_interleave(heads // groups, dim=1) for x in (k, v))
    scores = torch.einsum("qhd,khd->hqk", q, keys) / dim**0.5
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    reference = torch.einsum("hqk,khd->qhd", probs, values).reshape(total, heads * dim)
    assert mine.shape == reference.shape
    torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)
    weights = torch.randn(reference.shape, generator=generator)
    mine_grads = torch.autograd.grad((mine * weights).sum(), (q, k, v))
    reference_grads = torch.autograd.grad((reference * weights).sum(), (q, k, v))
    for got, want in zip(mine_grads, reference_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    short = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu[:-1], cu_seqlens_kv=cu[:-1])
    with pytest.raises(ValueError, match="cu_seqlens cover 13 tokens, the packed sequence holds 16"):
        attention(q, k, v, None, packed_seq_params=short)


def per_sample(logits, batch) -> list[torch.Tensor]:
    """Each sample's [length, VOCAB] logits of a padded or packed batch."""
    return [logits[row, start:end, :VOCAB] for row, start, end in batch.sample_spans()]


def test_packed_logits_equal_padded_and_transformers(omni_model, converted_thinker, layouts):
    helper, padded, packed = layouts
    assert packed.tokens.shape == (1, ROW) and packed.cu_seqlens.tolist()[-1] == ROW
    reference = hf_logits(converted_thinker.hf_model, helper)
    padded_logits, packed_logits = (per_sample(forward(omni_model, b), b) for b in (padded, packed))
    for k, (mine, theirs) in enumerate(zip(packed_logits, padded_logits)):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
        torch.testing.assert_close(mine, reference[k, : len(mine), :VOCAB], atol=1e-4, rtol=0)


def test_packed_loss_and_masked_forwards_equal_padded(omni_model, layouts):
    _, padded, packed = layouts
    with torch.no_grad():
        sums = [masked_token_sum(omni_model(b.tokens, b.position_ids, None, labels=b.labels, **b.model_kwargs()),
                                 b.loss_mask)[:2] for b in (padded, packed)]
    (padded_sum, padded_count), (packed_sum, packed_count) = sums
    assert packed_count == padded_count == sum(len(s) - 1 for s in per_sample(packed.tokens[..., None], packed))
    torch.testing.assert_close(packed_sum, padded_sum, atol=1e-5, rtol=1e-6)
    full = per_sample(forward(omni_model, packed), packed)
    for modality in ("visual", "audio"):
        mask = ModalityMask(modality, ratio=0.9, seed=3)
        packed_masked = per_sample(forward(omni_model, packed, modality_mask=mask), packed)
        padded_masked = per_sample(forward(omni_model, padded, modality_mask=mask), padded)
        for mine, theirs, unmasked in zip(packed_masked, padded_masked, full):
            assert not torch.allclose(mine, unmasked, atol=1e-3)  # the mask reaches every sample
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
