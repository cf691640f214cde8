"""Reference pieces built from transformers for the data-pipeline tests."""
from __future__ import annotations

import numpy as np
import torch


def qwen3_omni_vision() -> dict:
    """Qwen3-Omni's image-processor settings as transformers states them: patch, temporal patch and
    merge size of its vision tower (``Qwen3OmniMoeVisionEncoderConfig``'s defaults, the released
    tower's), mean and std of transformers' Qwen3-VL video processor (the same vision family;
    ``Qwen3OmniMoeProcessor`` asks for exactly its frame sizes)."""
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeVisionEncoderConfig
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tower = Qwen3OmniMoeVisionEncoderConfig()
    return {"patch_size": tower.patch_size, "temporal_patch_size": tower.temporal_patch_size,
            "merge_size": tower.spatial_merge_size, "image_mean": list(Qwen3VLVideoProcessor.image_mean),
            "image_std": list(Qwen3VLVideoProcessor.image_std)}


def qwen3_omni_video_bounds() -> tuple[int, int]:
    """The frame pixel bounds ``Qwen3OmniMoeProcessor`` hands its video processor."""
    from transformers import Qwen3OmniMoeProcessor

    size = Qwen3OmniMoeProcessor.videos_kwargs["size"]
    return size["shortest_edge"], size["longest_edge"]


class FrameWiseVideoProcessor:
    """Stand-in for ``Qwen2VLVideoProcessor``, which imports torchvision (unusable beside this CPU
    torch). Each frame goes through transformers' own ``Qwen2VLImageProcessorPil`` (smart_resize,
    rescale, normalisation, spatial patch order) with a temporal patch of 1; consecutive frame
    pairs are then stacked into the temporal-patch-2 layout ``(C, T, P, P)`` of the video processor.
    ``vision`` holds the image processor's settings beyond the bounds (default: Qwen2.5-Omni's
    14-pixel patches and CLIP normalisation; ``qwen3_omni_vision()`` for Qwen3-Omni).
    PIL's bicubic differs from torch's, so parity clips are sized to need no resize."""

    temporal_patch_size = 2
    merge_size = 2
    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, min_pixels: int, max_pixels: int, **vision):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        vision = {**vision, "temporal_patch_size": 1}
        self.frames = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, **vision)
        self.patch_size = self.frames.patch_size

    def __call__(self, videos, **kwargs):
        from transformers.feature_extraction_utils import BatchFeature

        pixels, grids, p = [], [], self.patch_size
        for video in videos:
            video = np.asarray(video)
            if len(video) % 2:
                video = np.concatenate([video, video[-1:]])
            out = self.frames([f for f in video], return_tensors="pt")
            per_frame = out["pixel_values"].view(len(video), -1, 3, p, p)  # [T, patches, C, P, P]
            _, grid_h, grid_w = out["image_grid_thw"][0].tolist()
            pairs = per_frame.view(len(video) // 2, 2, -1, 3, p, p).permute(0, 2, 3, 1, 4, 5)
            pixels.append(pairs.reshape(-1, 3 * 2 * p * p))
            grids.append([len(video) // 2, grid_h, grid_w])
        return BatchFeature({"pixel_values_videos": torch.cat(pixels), "video_grid_thw": torch.tensor(grids)})


def hf_omni_processor(processor_cls, tokenizer):
    """transformers' omni processor class around the toy tokenizer and a Whisper feature extractor
    configured like the released ones; only its class check is relaxed to admit the video
    stand-in (FrameWiseVideoProcessor). Qwen3OmniMoeProcessor's image processor and stand-in take
    Qwen3-Omni's vision settings (``qwen3_omni_vision``)."""
    from transformers import Qwen3OmniMoeProcessor, WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class Processor(processor_cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            return type(argument)

    features = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300,
                                       n_fft=400, padding_value=0.0, return_attention_mask=True)
    vision = qwen3_omni_vision() if issubclass(processor_cls, Qwen3OmniMoeProcessor) else {}
    return Processor(image_processor=Qwen2VLImageProcessorPil(**vision),
                     video_processor=FrameWiseVideoProcessor(28 * 28, 112 * 112, **vision),
                     feature_extractor=features, tokenizer=tokenizer)
