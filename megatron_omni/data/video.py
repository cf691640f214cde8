"""Video frames for the Qwen-Omni vision encoders: decord decoding, fps sampling, resizing, patches.

The steps follow what Qwen2.5-Omni was trained with (qwen-omni-utils + the Qwen2-VL video
processor): frames sampled at ``fps`` with an even count between ``min_frames`` and
``max_frames``; each frame resized (bicubic, antialiased) so height and width are multiples of
``patch_size * merge_size`` and the pixel count lies within [min_pixels, max_pixels]
(``smart_resize``); pixels rescaled to [0, 1] and normalised with the CLIP mean and std; frames
cut into ``temporal_patch_size x patch_size x patch_size`` patches ordered so that each 2x2
group of patches the vision merger fuses is contiguous. Qwen3-Omni's inputs differ in
the patch size (16), the frame bounds and the normalisation (``FAMILY_VISION``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megatron_omni.config import ConfigError
from megatron_omni.data.errors import MediaError, first_line

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 200


# The vision settings that differ between the model families' released processors; a VideoConfig
# field of these left unset (None) takes its model family's value (`VideoConfig.settle_family`).
# Qwen2.5-Omni: 14-pixel patches, frames of 128..768 merged tokens (28-pixel units), CLIP
# normalisation. Qwen3-Omni: 16-pixel patches, the same token bounds in 32-pixel units
# (Qwen3OmniMoeProcessor's video size), mean and std 0.5 (transformers' Qwen3-VL vision processors).
FAMILY_VISION = {
    "qwen2_5_omni": {"patch_size": 14, "min_pixels": 128 * 28 * 28, "max_pixels": 768 * 28 * 28,
                     "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)},
    "qwen3_omni_moe": {"patch_size": 16, "min_pixels": 128 * 32 * 32, "max_pixels": 768 * 32 * 32,
                       "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
}
DEFAULT_FAMILY = "qwen2_5_omni"


@dataclass
class VideoConfig:
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    # patch_size, min/max_pixels, image_mean/std: unset (null) takes the model family's value
    # (FAMILY_VISION); a value the config gives is kept whatever the family.
    min_pixels: int | None = None
    max_pixels: int | None = None
    # Optional budget for frames x pixels (qwen-omni-utils' VIDEO_TOTAL_PIXELS): long videos get
    # smaller frames instead of unbounded token counts. None: no budget.
    total_pixels: int | None = None
    patch_size: int | None = None
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    def __post_init__(self):
        # Which family-dependent fields the config left unset; they hold Qwen2.5-Omni's values
        # until settle_family gives them another family's (a config without a family is Qwen2.5-Omni's).
        # A plain attribute, not a field: the saved run config holds values only.
        self._unset = frozenset(name for name in FAMILY_VISION[DEFAULT_FAMILY] if getattr(self, name) is None)
        self._fill(DEFAULT_FAMILY)

    def _fill(self, family: str) -> None:
        for name in self._unset:
            value = FAMILY_VISION[family][name]
            setattr(self, name, list(value) if isinstance(value, list) else value)

    def settle_family(self, family: str) -> None:
        """Give the unset family-dependent fields ``family``'s values (FAMILY_VISION), in place,
        and check the bounds they make."""
        self._fill(family)
        if self.min_pixels > self.max_pixels:
            raise ConfigError(f"data.video.min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels}) for "
                              f"model.family {family} (a bound left unset is the family's, docs/DATA.md)")

    def pixel_bounds(self) -> tuple[int, int]:
        """The widest frame pixel bounds of any family: what the config allows before the family is known."""
        low = min(f["min_pixels"] for f in FAMILY_VISION.values()) if "min_pixels" in self._unset else self.min_pixels
        high = max(f["max_pixels"] for f in FAMILY_VISION.values()) if "max_pixels" in self._unset else self.max_pixels
        return low, high

    @property
    def resize_factor(self) -> int:
        return self.patch_size * self.merge_size


@dataclass
class DecodedVideo:
    frames: torch.Tensor  # uint8 [T, H, W, 3]
    sample_fps: float  # frames per second of the sampled frames (time truth for TMRoPE)


@dataclass
class VisionFeatures:
    """Vision-tower input of one image or video; an image is one temporal patch (grid_t = 1)."""

    pixel_values: torch.Tensor  # float32 [grid_t * grid_h * grid_w, 3 * temporal_patch * patch * patch]
    grid_thw: tuple[int, int, int]

    def num_tokens(self, merge_size: int) -> int:
        t, h, w = self.grid_thw
        return t * h * w // merge_size**2


@dataclass
class VideoFeatures(VisionFeatures):
    second_per_grid: float  # seconds covered by one temporal patch


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The frame size Qwen2-VL resizes to: multiples of ``factor``, pixels within the bounds."""
    if min(height, width) <= 0:
        raise ValueError(f"frame size {height}x{width} is empty")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio of a {height}x{width} frame exceeds {MAX_ASPECT_RATIO}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def num_sampled_frames(total_frames: int, video_fps: float, cfg: VideoConfig) -> int:
    """How many frames to take: ``fps`` per second, clamped, floored to the temporal patch size.

    A clip with fewer frames than one temporal patch keeps all of them; patchify repeats the last.
    """
    factor = cfg.temporal_patch_size
    if total_frames < factor:
        return total_frames
    min_frames = math.ceil(cfg.min_frames / factor) * factor
    max_frames = math.floor(min(cfg.max_frames, total_frames) / factor) * factor
    wanted = total_frames / video_fps * cfg.fps
    count = min(max(wanted, min_frames), max_frames, total_frames)
    return max(factor, math.floor(count / factor) * factor)


def sample_frame_indices(total_frames: int, video_fps: float, cfg: VideoConfig) -> tuple[list[int], float]:
    """Evenly spread frame indices (first and last included) and the fps they amount to."""
    if total_frames <= 0 or video_fps <= 0:
        raise ValueError(f"video has {total_frames} frames at {video_fps} fps")
    count = num_sampled_frames(total_frames, video_fps, cfg)
    indices = torch.linspace(0, total_frames - 1, count).round().long().tolist()
    return indices, count / total_frames * video_fps


def read_video(path: Path, cfg: VideoConfig) -> DecodedVideo:
    """Decode the sampled frames of ``path`` with decord; any failure is a MediaError naming it."""
    import decord

    if not path.is_file():
        raise MediaError(path, "video file not found")
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        total, video_fps = len(reader), float(reader.get_avg_fps())
        indices, sample_fps = sample_frame_indices(total, video_fps, cfg)
        frames = reader.get_batch(indices).asnumpy()
    except (RuntimeError, ValueError, decord.DECORDError) as exc:
        raise MediaError(path, f"cannot decode video ({first_line(exc)})") from exc
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
        raise MediaError(path, f"decoded frames have shape {frames.shape}, expected [{len(indices)}, H, W, 3]")
    return DecodedVideo(frames=torch.from_numpy(np.ascontiguousarray(frames)), sample_fps=sample_fps)


def resize_frames(frames: torch.Tensor, cfg: VideoConfig) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [T, 3, H', W'] at the smart_resize size.

    The uint8 frames go straight into torch's antialiased bicubic kernel, as torchvision passes
    them on CPU in the Qwen video processor (rounding inside the kernel, not after a float copy).
    """
    frames = frames.permute(0, 3, 1, 2).contiguous()
    height, width = frames.shape[-2:]
    max_pixels = cfg.max_pixels
    if cfg.total_pixels is not None:
        share = cfg.total_pixels / frames.shape[0] * cfg.temporal_patch_size
        max_pixels = max(min(max_pixels, int(share)), int(cfg.min_pixels * 1.05))
    new_h, new_w = smart_resize(height, width, cfg.resize_factor, cfg.min_pixels, max_pixels)
    if (new_h, new_w) == (height, width):
        return frames
    return F.interpolate(frames, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)


def normalize_frames(frames: torch.Tensor, cfg: VideoConfig) -> torch.Tensor:
    """uint8 [T, 3, H, W] -> float32, rescaled by 1/255 and CLIP-normalised in one affine step."""
    mean = torch.tensor(cfg.image_mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(cfg.image_std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return (frames.to(torch.float32) - mean) / std


def patchify(frames: torch.Tensor, cfg: VideoConfig) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """float [T, C, H, W] -> ([grid_t*grid_h*grid_w, C*tp*p*p], (grid_t, grid_h, grid_w))."""
    tp, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    if pad := -frames.shape[0] % tp:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    t, c, h, w = frames.shape
    grid_t, grid_h, grid_w = t // tp, h // p, w // p
    patches = frames.view(grid_t, tp, c, grid_h // m, m, p, grid_w // m, m, p)
    # -> (grid_t, h-groups, w-groups, m, m, C, tp, p, p): merge groups contiguous, channel-major patch
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(grid_t * grid_h * grid_w, c * tp * p * p), (grid_t, grid_h, grid_w)


def video_features(video: DecodedVideo, cfg: VideoConfig) -> VideoFeatures:
    frames = normalize_frames(resize_frames(video.frames, cfg), cfg)
    pixel_values, grid = patchify(frames, cfg)
    return VideoFeatures(pixel_values=pixel_values, grid_thw=grid,
                         second_per_grid=cfg.temporal_patch_size / video.sample_fps)
