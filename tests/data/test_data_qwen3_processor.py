"""The processor in Qwen3-Omni's layout (audio_n_window set) against transformers'
Qwen3OmniMoeProcessor and its thinker's get_rope_index: audio token counts of the chunked audio
tower, a video's own audio merged with its frames by time, 13 position ids per second.

The video side of the oracle is the Qwen2.5 stand-in of hf_reference.py (14-pixel patches): token
counts and positions depend on the grid and the seconds per grid only, not on the patch size.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data_processor import _reference

from megatron_omni.data.manifest import OmniSample
from megatron_omni.data.media import SampleMedia
from megatron_omni.data.mel import log_mel_spectrogram, num_audio_tokens
from megatron_omni.data.processor import OmniProcessor
from megatron_omni.data.template import render_prompt
from megatron_omni.data.toy import toy_data_config
from megatron_omni.data.video import DecodedVideo, video_features

N_WINDOW, IDS_PER_SECOND = 50, 13


@pytest.fixture
def qwen3_processor(toy_tokenizer):
    return lambda **overrides: OmniProcessor(toy_tokenizer, toy_data_config(**overrides), IDS_PER_SECOND,
                                             audio_n_window=N_WINDOW)


def _check(ours, reference, thinker, interleave):
    assert ours.input_ids.tolist() == reference["input_ids"][0].tolist()
    positions, delta = thinker.get_rope_index(
        reference["input_ids"], video_grid_thw=reference.get("video_grid_thw"),
        attention_mask=reference["attention_mask"], use_audio_in_video=interleave,
        audio_seqlens=reference["feature_attention_mask"].sum(-1), second_per_grids=reference.get("video_second_per_grid"))
    assert torch.equal(ours.position_ids, positions[:, 0].long()) and ours.rope_delta == delta.item()


def test_audio_token_counts_follow_the_chunked_tower():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    for frames in (1, 99, 100, 101, 199, 200, 1234, 3000):
        assert num_audio_tokens(frames, N_WINDOW) == int(_get_feat_extract_output_lengths(torch.tensor(frames), N_WINDOW))


def _synthetic(processor, frames: int, seconds: float, interleave: bool):
    rng = np.random.default_rng(frames)
    video = rng.integers(0, 256, (frames, 84, 112, 3), dtype=np.uint8)
    waveform = (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
    media = SampleMedia(video=video_features(DecodedVideo(torch.from_numpy(video), frames / seconds), processor.cfg.video),
                        audio_features=log_mel_spectrogram(waveform, processor.cfg.audio), audio_in_video=interleave)
    return video, waveform, media, OmniSample(id="synthetic", video=None, audio=None, subtitle="A clip.")


@pytest.mark.parametrize("frames, seconds, interleave", [
    (4, 2.0, False), (4, 2.0, True),
    (10, 5.0, True), (16, 8.0, True),  # several frames and 100-frame audio chunks: the streams alternate
])
def test_clips_match_transformers(qwen3_processor, hf_qwen3_processor, hf_qwen3_thinker, frames, seconds, interleave):
    """Video sampled at 2 fps (13 position ids a 2-frame grid) with its audio, separate or merged."""
    processor = qwen3_processor(use_audio_in_video=interleave)
    video, waveform, media, sample = _synthetic(processor, frames, seconds, interleave)
    ours = processor.process(sample, media, with_target=False)
    if frames > 4:
        body = ours.input_ids.tolist()
        video_id, audio_id = processor.token_ids.video_token_id, processor.token_ids.audio_token_id
        assert sum(1 for a, b in zip(body, body[1:]) if {a, b} == {video_id, audio_id}) > 2
    prompt = render_prompt(has_video=True, has_audio=not interleave, subtitle=sample.subtitle, cfg=processor.cfg.prompt)
    reference = _reference(hf_qwen3_processor, prompt, video, frames / seconds, waveform, interleave)
    _check(ours, reference, hf_qwen3_thinker, interleave)


def test_fractional_time_ids_are_refused(qwen3_processor):
    """Qwen3-Omni keeps fractional time ids (3.1 s of 10 frames: 8.06 ids a grid); integer positions cannot."""
    processor = qwen3_processor()
    _, _, media, sample = _synthetic(processor, 10, 3.1, True)
    with pytest.raises(ValueError, match="fractional Qwen3-Omni time ids"):
        processor.process(sample, media, with_target=False)


@pytest.fixture(scope="module")
def qwen3_tokenizer(tmp_path_factory):
    """A small tokenizer with Qwen3-Omni's modality strings (<|audio_pad|>, <|vision_start|>...)."""
    from megatron_omni.data.template import EMOTION_QUESTION, QWEN_OMNI_SYSTEM_PROMPT
    from megatron_omni.data.tokenizer import QWEN3_OMNI_TOKENS, build_tokenizer, load_tokenizer

    texts = [EMOTION_QUESTION, QWEN_OMNI_SYSTEM_PROMPT, 'Subtitle: "A clip."'] * 4
    return load_tokenizer(build_tokenizer(texts, tmp_path_factory.mktemp("qwen3_tokenizer"), vocab_size=320,
                                          tokens=QWEN3_OMNI_TOKENS))


def test_qwen3_token_strings_match_transformers(qwen3_tokenizer, hf_qwen3_thinker):
    """The placeholders are the tokenizer's own strings: the prompt holds Qwen3-Omni's, and the
    tokens equal Qwen3OmniMoeProcessor's around the same tokenizer."""
    from hf_reference import hf_omni_processor
    from transformers import Qwen3OmniMoeProcessor

    processor = OmniProcessor(qwen3_tokenizer, toy_data_config(), IDS_PER_SECOND, audio_n_window=N_WINDOW)
    video, waveform, media, sample = _synthetic(processor, 4, 2.0, True)
    text = processor.prompt_text(sample, media)
    assert "<|vision_start|><|audio_start|><|video_pad|>" in text and "<|audio_pad|><|audio_end|><|vision_end|>" in text
    assert "<|AUDIO|>" not in text
    assert processor.token_ids.audio_token_id == qwen3_tokenizer.convert_tokens_to_ids("<|audio_pad|>")
    prompt = render_prompt(has_video=True, has_audio=False, subtitle=sample.subtitle, cfg=processor.cfg.prompt,
                           tokens=processor.tokens)
    reference = _reference(hf_omni_processor(Qwen3OmniMoeProcessor, qwen3_tokenizer), prompt, video, 2.0, waveform,
                           interleave=True)
    _check(processor.process(sample, media, with_target=False), reference, hf_qwen3_thinker, interleave=True)
