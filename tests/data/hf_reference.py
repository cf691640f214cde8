"""Reference pieces built from transformers for the data-pipeline tests."""
from __future__ import annotations

import numpy as np
import torch


class FrameWiseVideoProcessor:
    """Stand-in for ``Qwen2VLVideoProcessor``, which imports torchvision (unusable beside this CPU
    torch). Each frame goes through transformers' own ``Qwen2VLImageProcessorPil`` (smart_resize,
    rescale, CLIP normalisation, spatial patch order) with a temporal patch of 1; consecutive frame
    pairs are then stacked into the temporal-patch-2 layout ``(C, T, P, P)`` of the video processor.
    PIL's bicubic differs from torch's, so parity clips are sized to need no resize."""

    temporal_patch_size = 2
    merge_size = 2
    patch_size = 14
    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, min_pixels: int, max_pixels: int):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.frames = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, temporal_patch_size=1)

    def __call__(self, videos, **kwargs):
        from transformers.feature_extraction_utils import BatchFeature

        pixels, grids = [], []
        for video in videos:
            video = np.asarray(video)
            if len(video) % 2:
                video = np.concatenate([video, video[-1:]])
            out = self.frames([f for f in video], return_tensors="pt")
            per_frame = out["pixel_values"].view(len(video), -1, 3, 14, 14)  # [T, patches, C, P, P]
            _, grid_h, grid_w = out["image_grid_thw"][0].tolist()
            pairs = per_frame.view(len(video) // 2, 2, -1, 3, 14, 14).permute(0, 2, 3, 1, 4, 5)
            pixels.append(pairs.reshape(-1, 3 * 2 * 14 * 14))
            grids.append([len(video) // 2, grid_h, grid_w])
        return BatchFeature({"pixel_values_videos": torch.cat(pixels), "video_grid_thw": torch.tensor(grids)})


def hf_omni_processor(processor_cls, tokenizer):
    """transformers' omni processor class around the toy tokenizer and a Whisper feature extractor
    configured like the released ones; only its class check is relaxed to admit the video
    stand-in (FrameWiseVideoProcessor)."""
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class Processor(processor_cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            return type(argument)

    features = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300,
                                       n_fft=400, padding_value=0.0, return_attention_mask=True)
    return Processor(image_processor=Qwen2VLImageProcessorPil(),
                     video_processor=FrameWiseVideoProcessor(28 * 28, 112 * 112),
                     feature_extractor=features, tokenizer=tokenizer)
