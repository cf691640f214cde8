"""Still images for the Qwen-Omni vision encoders: PIL decoding, resizing, patches.

The steps follow Qwen2-VL's image processor, which Qwen2.5-Omni uses: the image is made RGB
(transparency composited onto white), resized with PIL's bicubic filter to the ``smart_resize``
size (multiples of ``patch_size * merge_size``, pixel count within [min_pixels, max_pixels]),
rescaled and normalised (the CLIP mean and std for Qwen2.5-Omni), and cut into patches like a
one-frame video whose frame is repeated to fill the temporal patch, so ``grid_t`` is 1. The
vision tower is the video's: patch size, merge size, mean and std come from ``data.video``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megatron_omni.data.errors import MediaError, first_line
from megatron_omni.data.video import VideoConfig, VisionFeatures, normalize_frames, patchify, smart_resize


@dataclass
class ImageConfig:
    # The bounds of Qwen2.5-Omni's released image processor (qwen-omni-utils' MIN/MAX_PIXELS).
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16384 * 28 * 28


def read_image(path: Path, cfg: ImageConfig, vision: VideoConfig) -> torch.Tensor:
    """uint8 [H, W, 3] of ``path`` at its smart_resize size; any failure is a MediaError naming it."""
    from PIL import Image, ImageOps

    if not path.is_file():
        raise MediaError(path, "image file not found")
    try:
        with Image.open(path) as opened:
            # Shown as a viewer shows it: transformers' load_image applies the EXIF orientation too.
            image = ImageOps.exif_transpose(opened)
            if "A" in image.getbands() or image.info.get("transparency") is not None:
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image.convert("RGBA"))
            image = image.convert("RGB")
            height, width = smart_resize(image.height, image.width, vision.resize_factor, cfg.min_pixels, cfg.max_pixels)
            if (height, width) != (image.height, image.width):
                image = image.resize((width, height), Image.Resampling.BICUBIC)
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # OSError: unreadable, truncated
        raise MediaError(path, f"cannot decode image ({first_line(exc)})") from exc
    return torch.from_numpy(pixels.copy())


def image_features(pixels: torch.Tensor, vision: VideoConfig) -> VisionFeatures:
    """uint8 [H, W, 3] (already at a patchable size) -> one temporal patch of vision-tower input."""
    frames = normalize_frames(pixels.permute(2, 0, 1)[None], vision)
    pixel_values, grid = patchify(frames, vision)
    return VisionFeatures(pixel_values=pixel_values, grid_thw=grid)
