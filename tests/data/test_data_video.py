"""Frame sampling, resizing and patches against transformers' Qwen2-VL functions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_reference import FrameWiseVideoProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference_smart_resize

from megatron_omni.data.manifest import load_manifest
from megatron_omni.data.video import (
    DecodedVideo,
    VideoConfig,
    num_sampled_frames,
    read_video,
    resize_frames,
    sample_frame_indices,
    smart_resize,
    video_features,
)


@pytest.mark.parametrize("height", [20, 57, 112, 240, 481, 1080])
@pytest.mark.parametrize("width", [28, 90, 113, 640, 1920])
@pytest.mark.parametrize("bounds", [(56 * 56, 28 * 28 * 1280), (128 * 28 * 28, 768 * 28 * 28), (28 * 28, 112 * 112)])
def test_smart_resize_matches_transformers(height, width, bounds):
    assert smart_resize(height, width, 28, *bounds) == reference_smart_resize(height, width, 28, *bounds)


def test_smart_resize_rejects_extreme_aspect_ratios():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000, 28, 784, 10**6)


@pytest.mark.parametrize("total, video_fps, expected", [
    (20, 10.0, 4),  # 2 s at 2 fps
    (10, 10.0, 4),  # 1 s: min_frames lifts 2 to 4
    (3, 10.0, 2),  # fewer frames than min_frames: floored to the temporal patch
    (1, 10.0, 1),  # a single frame is kept (patchify repeats it)
    (300, 30.0, 20),  # 10 s at 2 fps
    (2000, 25.0, 160),  # 80 s
])
def test_frame_counts(total, video_fps, expected):
    cfg = VideoConfig()
    assert num_sampled_frames(total, video_fps, cfg) == expected
    indices, sample_fps = sample_frame_indices(total, video_fps, cfg)
    assert len(indices) == expected
    assert indices[0] == 0 and indices[-1] == total - 1 and indices == sorted(indices)
    assert sample_fps == pytest.approx(expected / total * video_fps)


def test_max_frames_caps_long_videos():
    cfg = VideoConfig(max_frames=16)
    assert num_sampled_frames(10_000, 30.0, cfg) == 16


@pytest.mark.parametrize("count, height, width", [(4, 56, 84), (5, 112, 56), (2, 28, 28)])
def test_patches_match_transformers_frame_pipeline(count, height, width):
    """Sizes that need no resize: rescale, normalisation and patch order against transformers."""
    frames = torch.from_numpy(np.random.default_rng(count).integers(0, 256, (count, height, width, 3), dtype=np.uint8))
    cfg = VideoConfig(min_pixels=28 * 28, max_pixels=112 * 112)
    ours = video_features(DecodedVideo(frames, sample_fps=2.0), cfg)
    reference = FrameWiseVideoProcessor(cfg.min_pixels, cfg.max_pixels)([frames.numpy()])
    assert list(ours.grid_thw) == reference["video_grid_thw"][0].tolist()
    torch.testing.assert_close(ours.pixel_values, reference["pixel_values_videos"], atol=1e-5, rtol=0)
    assert ours.second_per_grid == 1.0


def test_resize_reaches_the_smart_resize_size():
    frames = torch.full((2, 100, 150, 3), 200, dtype=torch.uint8)
    cfg = VideoConfig(min_pixels=28 * 28, max_pixels=56 * 56)
    resized = resize_frames(frames, cfg)
    assert resized.dtype == torch.uint8
    assert tuple(resized.shape) == (2, 3, *smart_resize(100, 150, 28, 28 * 28, 56 * 56))
    # A flat image stays flat through the antialiased bicubic kernel.
    assert int(resized.min()) == int(resized.max()) == 200


def test_total_pixel_budget_shrinks_long_videos():
    cfg = VideoConfig(min_pixels=28 * 28, max_pixels=224 * 224, total_pixels=4 * 56 * 56)
    small = resize_frames(torch.zeros(8, 224, 224, 3, dtype=torch.uint8), cfg)
    assert small.shape[-2] * small.shape[-1] < 224 * 224


def test_decoding_a_toy_clip(toy_set):
    sample = load_manifest(toy_set.train_manifest)[0]
    video = read_video(sample.video, VideoConfig())
    assert video.frames.dtype == torch.uint8 and video.frames.shape[1:] == (112, 112, 3)
    assert video.frames.shape[0] == 4
    assert 2.0 <= video.sample_fps <= 4.0
