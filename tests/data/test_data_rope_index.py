"""TMRoPE positions against transformers' Qwen2.5-Omni thinker ``get_rope_index``.

Token sequences come from transformers' own Qwen2_5OmniProcessor, so the layouts (placeholder
counts, chunk interleaving) are the reference ones; both implementations read the same grids.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_omni.data.rope_index import MediaCursor, RopeIndexSpec, get_rope_index, sequence_positions
from megatron_omni.data.template import PromptConfig, render_prompt
from megatron_omni.data.tokenizer import QWEN2_5_OMNI_TOKENS, special_token_ids

IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, AUDIO_PLACEHOLDER = (
    QWEN2_5_OMNI_TOKENS.placeholder(medium) for medium in ("image", "video", "audio"))


def _frames(rng, count, height, width):
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def _audio(rng, seconds):
    return (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


def _compare(hf_thinker, spec, inputs, use_audio_in_video):
    audio_seqlens = inputs["feature_attention_mask"].sum(-1) if "feature_attention_mask" in inputs else None
    expected, expected_delta = hf_thinker.get_rope_index(
        inputs["input_ids"], image_grid_thw=inputs.get("image_grid_thw"), video_grid_thw=inputs.get("video_grid_thw"),
        attention_mask=inputs["attention_mask"], use_audio_in_video=use_audio_in_video,
        audio_seqlens=audio_seqlens, second_per_grids=inputs.get("video_second_per_grid"))
    got, delta = get_rope_index(
        inputs["input_ids"], spec, image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"), second_per_grids=inputs.get("video_second_per_grid"),
        audio_seqlens=audio_seqlens, attention_mask=inputs["attention_mask"])
    assert torch.equal(got, expected)
    assert torch.equal(delta.view(-1), expected_delta.view(-1))


@pytest.fixture(scope="module")
def spec(toy_tokenizer):
    return RopeIndexSpec.from_token_ids(special_token_ids(toy_tokenizer))


def _prompt(media: str, text: str = "How does the person feel?") -> str:
    return f"<|im_start|>user\n{media}{text}<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("frames, size, seconds, fps", [
    (4, (112, 112), 2.0, 2.0),  # 2 chunks of video time, one audio chunk
    (10, (84, 112), 5.0, 2.0),  # several chunks on both streams
    (6, (56, 56), 1.2, 1.5),  # non-integer seconds per grid
    (12, (112, 56), 2.5, 4.0),  # video outlasts... no: audio outlasts a fast video
    (4, (56, 84), 9.0, 0.5),  # grids 4 s apart jump over chunk boundaries
])
def test_video_with_interleaved_audio(hf_processor, hf_thinker, spec, frames, size, seconds, fps):
    rng = np.random.default_rng(frames)
    inputs = hf_processor(text=[_prompt(VIDEO_PLACEHOLDER)], videos=[_frames(rng, frames, *size)],
                          audio=[_audio(rng, seconds)], audio_from_video_indices=[0], load_audio_from_video=True,
                          videos_kwargs={"fps": fps}, return_tensors="pt")
    _compare(hf_thinker, spec, inputs, use_audio_in_video=True)


@pytest.mark.parametrize("with_audio", [False, True])
def test_video_and_separate_audio(hf_processor, hf_thinker, spec, with_audio):
    rng = np.random.default_rng(7)
    media = VIDEO_PLACEHOLDER + (AUDIO_PLACEHOLDER if with_audio else "")
    kwargs = {"audio": [_audio(rng, 3.3)]} if with_audio else {}
    inputs = hf_processor(text=[_prompt(media)], videos=[_frames(rng, 6, 84, 56)], videos_kwargs={"fps": 1.5},
                          return_tensors="pt", **kwargs)
    _compare(hf_thinker, spec, inputs, use_audio_in_video=False)


def test_padded_batch_of_mixed_lengths(hf_processor, hf_thinker, spec):
    """Left padding (the processor's default) and a batch whose rows consume media in order."""
    rng = np.random.default_rng(11)
    texts = [_prompt(VIDEO_PLACEHOLDER, "short"), _prompt(VIDEO_PLACEHOLDER, "a much longer question " * 4)]
    videos = [_frames(rng, 4, 56, 56), _frames(rng, 8, 112, 84)]
    audio = [_audio(rng, 1.0), _audio(rng, 4.4)]
    inputs = hf_processor(text=texts, videos=videos, audio=audio, audio_from_video_indices=[0, 1],
                          load_audio_from_video=True, padding=True, return_tensors="pt")
    assert (inputs["attention_mask"] == 0).any()
    _compare(hf_thinker, spec, inputs, use_audio_in_video=True)


def test_image_audio_and_text_only(hf_processor, hf_thinker, spec):
    rng = np.random.default_rng(3)
    image = _frames(rng, 1, 84, 112)[0]
    inputs = hf_processor(text=[_prompt(IMAGE_PLACEHOLDER + AUDIO_PLACEHOLDER)], images=[image],
                          audio=[_audio(rng, 2.2)], return_tensors="pt")
    _compare(hf_thinker, spec, inputs, use_audio_in_video=False)
    text_only = hf_processor(text=[_prompt(""), _prompt("", "longer text " * 3)], padding=True, return_tensors="pt")
    _compare(hf_thinker, spec, text_only, use_audio_in_video=False)


def test_audio_only_is_sequential(hf_processor, spec):
    """Audio ids advance one per token, so an audio-only prompt has plain 1-D positions."""
    rng = np.random.default_rng(5)
    inputs = hf_processor(text=[render_prompt(has_video=False, has_audio=True, subtitle="ok", cfg=PromptConfig())],
                          audio=[_audio(rng, 1.7)], return_tensors="pt")
    positions, delta = get_rope_index(inputs["input_ids"], spec, audio_seqlens=inputs["feature_attention_mask"].sum(-1))
    length = inputs["input_ids"].shape[1]
    assert torch.equal(positions, torch.arange(length).expand(3, 1, -1))
    assert delta.item() == 0


def test_wrong_placeholder_count_is_an_error(spec):
    ids = [spec.vision_start_token_id] + [spec.video_token_id] * 3 + [spec.vision_start_token_id + 1]
    cursor = MediaCursor(video_grid_thw=[(2, 4, 4)], second_per_grids=[1.0])
    with pytest.raises(ValueError, match="expects 8 placeholder tokens"):
        sequence_positions(ids, spec, cursor)
    with pytest.raises(ValueError, match="more video blocks"):
        sequence_positions(ids, spec, MediaCursor())


def test_images_beside_videos_in_a_padded_batch(hf_processor, hf_thinker, spec):
    """Images (t = 1, no time scaling) before a video and its separate audio, and alone, in one
    left-padded batch: each row takes its own images in order."""
    rng = np.random.default_rng(13)
    texts = [_prompt(IMAGE_PLACEHOLDER + VIDEO_PLACEHOLDER + AUDIO_PLACEHOLDER), _prompt(IMAGE_PLACEHOLDER, "and?")]
    images = [_frames(rng, 1, 56, 112)[0], _frames(rng, 1, 84, 56)[0]]
    inputs = hf_processor(text=texts, images=images, videos=[_frames(rng, 4, 56, 84)], audio=[_audio(rng, 1.3)],
                          videos_kwargs={"fps": 2.0}, padding=True, return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 8], [1, 6, 4]]
    _compare(hf_thinker, spec, inputs, use_audio_in_video=False)
