"""The processor in Qwen3-Omni's layout (audio_n_window set) against transformers'
Qwen3OmniMoeProcessor and its thinker's get_rope_index: audio token counts of the chunked audio
tower, a video's own audio merged with its frames by time, 13 position ids per second, and
Qwen3-Omni's vision settings (16-pixel patches, its frame bounds, mean and std 0.5): video and
image pixels equal transformers' image processor with those settings (the video through the
frame-wise stand-in of hf_reference.py).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from hf_reference import FrameWiseVideoProcessor, qwen3_omni_video_bounds, qwen3_omni_vision
from test_data_processor import _reference, _write_image

from megatron_omni.config import ConfigError, load_config
from megatron_omni.data.config import DataConfig
from megatron_omni.data.image import image_features, read_image
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
    """Tokens, vision inputs (grids, pixels within 1e-5) and positions equal transformers'. Audio
    features are not compared: Qwen3OmniMoeProcessor pads audio to the batch's longest clip only,
    so its last log-mel frame sees the STFT's reflected edge where the pipeline (and the
    Qwen2.5-Omni processor, padding to 300 s) sees zeros."""
    assert ours.input_ids.tolist() == reference["input_ids"][0].tolist()
    for features, grid_key, pixel_key in ((ours.media.image, "image_grid_thw", "pixel_values"),
                                          (ours.media.video, "video_grid_thw", "pixel_values_videos")):
        if features is not None:
            assert reference[grid_key][0].tolist() == list(features.grid_thw)
            torch.testing.assert_close(features.pixel_values, reference[pixel_key], atol=1e-5, rtol=0)
    positions, delta = thinker.get_rope_index(
        reference["input_ids"], image_grid_thw=reference.get("image_grid_thw"),
        video_grid_thw=reference.get("video_grid_thw"),
        attention_mask=reference["attention_mask"], use_audio_in_video=interleave,
        audio_seqlens=reference["feature_attention_mask"].sum(-1), second_per_grids=reference.get("video_second_per_grid"))
    assert torch.equal(ours.position_ids, positions[:, 0].long()) and ours.rope_delta == delta.item()


def test_audio_token_counts_follow_the_chunked_tower():
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    for frames in (1, 99, 100, 101, 199, 200, 1234, 3000):
        assert num_audio_tokens(frames, N_WINDOW) == int(_get_feat_extract_output_lengths(torch.tensor(frames), N_WINDOW))


def _synthetic(processor, frames: int, seconds: float, interleave: bool):
    rng = np.random.default_rng(frames)
    # 96 x 128: multiples of Qwen3-Omni's 32 pixels (patch 16 x merge 2), so no resize (PIL's
    # bicubic in the reference is not torch's) and the pixels compare exactly.
    video = rng.integers(0, 256, (frames, 96, 128, 3), dtype=np.uint8)
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



def test_vision_settings_follow_the_family_unless_given(toy_tokenizer, tmp_path):
    """Unset data.video fields take Qwen3-Omni's values as transformers states them (Qwen2.5-Omni's
    without the Qwen3 layout); a value the config gives is kept; the processor settles them into
    the config it is given, which then saves and reloads as it is (the run's saved config)."""
    vision, (min_pixels, max_pixels) = qwen3_omni_vision(), qwen3_omni_video_bounds()
    cfg = DataConfig()
    assert (cfg.video.patch_size, cfg.video.max_pixels) == (14, 768 * 28 * 28)  # Qwen2.5-Omni's until settled
    OmniProcessor(toy_tokenizer, cfg, IDS_PER_SECOND, audio_n_window=N_WINDOW)
    v = cfg.video
    assert {name: getattr(v, name) for name in vision} == vision
    assert (v.min_pixels, v.max_pixels) == (min_pixels, max_pixels)
    saved = tmp_path / "data.yaml"
    saved.write_text(yaml.safe_dump(dataclasses.asdict(cfg)))
    assert load_config(saved, cls=DataConfig).video == v
    given = load_config(None, ["video.patch_size=14", "video.max_pixels=200000"], cls=DataConfig)
    OmniProcessor(toy_tokenizer, given, IDS_PER_SECOND, audio_n_window=N_WINDOW)
    assert (given.video.patch_size, given.video.max_pixels, given.video.min_pixels) == (14, 200000, min_pixels)
    assert given.video.image_mean == vision["image_mean"]
    # Bounds are checked against the family's: a minimum above Qwen2.5-Omni's default maximum is
    # Qwen3-Omni's to take; a maximum below Qwen3-Omni's default minimum is refused for it.
    above = load_config(None, ["video.min_pixels=700000"], cls=DataConfig)
    above.validate("data")
    OmniProcessor(toy_tokenizer, above, IDS_PER_SECOND, audio_n_window=N_WINDOW)
    below = load_config(None, ["video.max_pixels=120000"], cls=DataConfig)
    below.validate("data")
    with pytest.raises(ConfigError, match=r"data.video.min_pixels \(131072\) exceeds max_pixels \(120000\) for "
                                          "model.family qwen3_omni_moe"):
        OmniProcessor(toy_tokenizer, below, IDS_PER_SECOND, audio_n_window=N_WINDOW)


@pytest.mark.parametrize("height, width", [(352, 384), (300, 500)])
def test_default_frames_match_transformers(height, width):
    """Frames at the default bounds (128..768 tokens of 32 x 32 pixels): 352 x 384 needs no resize,
    so pixels compare; 300 x 500 is resized (torch's bicubic here, PIL's there) to the same grid."""
    cfg = DataConfig()
    cfg.video.settle_family("qwen3_omni_moe")
    frames = torch.from_numpy(np.random.default_rng(height).integers(0, 256, (4, height, width, 3), dtype=np.uint8))
    ours = video_features(DecodedVideo(frames, sample_fps=2.0), cfg.video)
    reference = FrameWiseVideoProcessor(*qwen3_omni_video_bounds(), **qwen3_omni_vision())([frames.numpy()])
    assert list(ours.grid_thw) == reference["video_grid_thw"][0].tolist()
    if (height, width) == (352, 384):
        torch.testing.assert_close(ours.pixel_values, reference["pixel_values_videos"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, height, width, mode", [
    ("exact.png", 64, 96, "RGB"),  # no resize
    ("alpha.png", 50, 75, "RGBA"),  # composited onto white, upscaled by PIL on both sides
])
def test_image_sample_matches_transformers(qwen3_processor, hf_qwen3_processor, hf_qwen3_thinker, tmp_path,
                                           name, height, width, mode):
    """An image with audio: tokens, pixels (16-pixel patches, mean and std 0.5) and positions equal
    Qwen3OmniMoeProcessor's with transformers' PIL image processor at Qwen3-Omni's settings."""
    from PIL import Image

    processor = qwen3_processor(use_audio_in_video=False)
    path = _write_image(tmp_path / name, height, width, mode)
    waveform = (np.random.default_rng(height).standard_normal(32000) * 0.1).astype(np.float32)
    media = SampleMedia(video=None, audio_features=log_mel_spectrogram(waveform, processor.cfg.audio), audio_in_video=False,
                        image=image_features(read_image(path, processor.cfg.image, processor.cfg.video), processor.cfg.video))
    sample = OmniSample(id="image", video=None, audio=None, subtitle="A face.")
    ours = processor.process(sample, media, with_target=False)
    assert media.image.pixel_values.shape[1] == 3 * 2 * 16 * 16
    prompt = render_prompt(has_image=True, has_video=False, has_audio=True, subtitle=sample.subtitle,
                           cfg=processor.cfg.prompt)
    with Image.open(path) as image:
        reference = _reference(hf_qwen3_processor, prompt, waveform=waveform, image=image,
                               image_bounds=processor.cfg.image)
    _check(ours, reference, hf_qwen3_thinker, interleave=False)
