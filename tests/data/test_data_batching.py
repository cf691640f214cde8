"""Padded and packed micro-batches hold the same per-sample content; packing boundaries are right."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_omni.data.batch import PAD_POSITION, SkippedSample, pack, pack_rows, pad
from megatron_omni.data.dataset import Collator
from megatron_omni.data.manifest import load_manifest
from megatron_omni.data.media import load_media
from megatron_omni.data.processor import OmniProcessor
from megatron_omni.data.toy import toy_data_config


@pytest.fixture(scope="module")
def samples(toy_set, toy_tokenizer):
    """Four samples of different lengths: video+audio (two), video-only, audio-only."""
    processor = OmniProcessor(toy_tokenizer, toy_data_config(audio_from_video=False))
    clips = load_manifest(toy_set.train_manifest)
    chosen = [clips[0], clips[1], dataclasses.replace(clips[2], audio=None), dataclasses.replace(clips[3], video=None)]
    return [processor.process(s, load_media(s, processor.cfg)) for s in chosen]


def _row_slices(batch):
    if batch.packed:
        bounds = batch.cu_seqlens.tolist()
        return [slice(bounds[i], bounds[i + 1]) for i in range(batch.num_samples)], [0] * batch.num_samples
    return [slice(0, int(n)) for n in batch.attention_mask.sum(1)], list(range(batch.num_samples))


@pytest.mark.parametrize("multiple", [1, 8])
def test_pack_and_pad_hold_the_same_samples(samples, multiple):
    padded, packed = pad(samples, multiple), pack(samples, multiple)
    for batch in (padded, packed):
        assert batch.tokens.shape[1] % multiple == 0
        assert batch.sample_ids == [s.sample_id for s in samples]
        spans, rows = _row_slices(batch)
        for sample, span, row in zip(samples, spans, rows):
            assert torch.equal(batch.tokens[row, span], sample.input_ids)
            assert torch.equal(batch.labels[row, span], sample.labels)
            assert torch.equal(batch.loss_mask[row, span], sample.loss_mask)
            assert torch.equal(batch.position_ids[:, row, span], sample.position_ids)
        assert batch.loss_mask.sum() == sum(s.loss_mask.sum() for s in samples)
        assert batch.loss_mask[~batch.attention_mask].sum() == 0
    for name in ("pixel_values_videos", "video_grid_thw", "video_second_per_grid", "input_features",
                 "feature_attention_mask", "rope_deltas"):
        assert torch.equal(getattr(padded, name), getattr(packed, name)), name


def test_packed_boundaries_and_positions(samples):
    batch = pack(samples, pad_to_multiple_of=16)
    lengths = [s.length for s in samples]
    total = sum(lengths)
    padding = batch.tokens.shape[1] - total
    assert padding > 0
    expected = torch.tensor([0, *lengths, padding]).cumsum(0).to(torch.int32)
    assert torch.equal(batch.cu_seqlens, expected) and batch.cu_seqlens.dtype == torch.int32
    assert batch.max_seqlen == max(lengths + [padding])
    for start in batch.cu_seqlens[:-1].tolist():  # every segment restarts its positions at 0
        assert batch.position_ids[:, 0, start].tolist() == [0, 0, 0]
    assert not batch.attention_mask[0, total:].any() and batch.attention_mask[0, :total].all()
    params = batch.packed_seq_params()
    assert params.qkv_format == "thd" and params.cu_seqlens_q is batch.cu_seqlens
    assert params.max_seqlen_kv == batch.max_seqlen


def test_padding_and_media_layout(samples):
    batch = pad(samples)
    assert batch.position_ids[~batch.attention_mask.expand(3, -1, -1)].eq(PAD_POSITION).all()
    videos = [s.media.video for s in samples if s.media.video is not None]
    audios = [s.media.audio_features for s in samples if s.media.audio_features is not None]
    assert batch.video_grid_thw.tolist() == [list(v.grid_thw) for v in videos]
    assert batch.pixel_values_videos.shape[0] == sum(v.pixel_values.shape[0] for v in videos)
    assert batch.feature_attention_mask.sum(1).tolist() == [a.shape[1] for a in audios]
    for row, audio in enumerate(audios):
        assert torch.equal(batch.input_features[row, :, : audio.shape[1]], audio)
        assert batch.input_features[row, :, audio.shape[1]:].eq(0).all()
    assert batch.packed_seq_params() is None
    moved = batch.to("cpu")
    assert torch.equal(moved.position_ids, batch.position_ids) and moved.sample_ids == batch.sample_ids


@pytest.mark.parametrize("packing", [False, True])
def test_collator_drops_and_reports_skipped_samples(samples, packing):
    collate = Collator(pad_token_id=samples[0].pad_token_id, packing=packing)
    skipped = SkippedSample(index=5, sample_id="bad", reason="truncated")
    batch = collate([samples[0], skipped, samples[1]])
    assert batch.sample_ids == [samples[0].sample_id, samples[1].sample_id] and batch.skipped == [skipped]
    empty = collate([skipped])
    assert empty.num_samples == 0 and empty.skipped == [skipped]
    assert empty.loss_mask.sum() == 0 and empty.pixel_values_videos is None and empty.input_features is None
    assert empty.packed == packing


def test_pack_rows_fills_the_first_row_with_room():
    assert pack_rows([5, 4, 3, 2, 6, 1], 8) == [[0, 2], [1, 3, 5], [4]]
    with pytest.raises(ValueError, match="sample 1 is 9 tokens long, longer than a packed row of 8"):
        pack_rows([3, 9], 8)


def test_per_sample_and_in_layout_map_packed_rows_to_padded_ones(samples):
    padded, packed = pad(samples, 1), pack(samples, 8)
    values = torch.arange(packed.tokens.shape[1], dtype=torch.float32)[None].requires_grad_()
    rows = packed.per_sample(values)
    assert rows.shape == (len(samples), packed.tokens.shape[1])
    for k, (_, start, end) in enumerate(packed.sample_spans()):
        assert torch.equal(rows[k, : end - start], values[0, start:end].detach())
        assert not rows[k, end - start :].any()
    rows.sum().backward()  # the padding segment's tokens get no gradient
    assert torch.equal(values.grad[0], packed.attention_mask[0].float())
    assert torch.equal(packed.per_sample(packed.loss_mask)[:, : padded.tokens.shape[1]], padded.loss_mask)
    assert torch.equal(packed.in_layout(list(padded.labels)), packed.labels * packed.attention_mask)
    assert padded.per_sample(padded.loss_mask) is padded.loss_mask
    assert torch.equal(padded.in_layout(list(padded.labels)), padded.labels)
