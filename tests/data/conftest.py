"""Fixtures of the data-pipeline tests: a small toy set, its tokenizer and the transformers oracles."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_omni.data.config import DataConfig
from megatron_omni.data.processor import OmniProcessor
from megatron_omni.data.tokenizer import load_tokenizer, special_token_ids
from megatron_omni.data.toy import make_toy_dataset
from megatron_omni.data.video import VideoConfig


@pytest.fixture(scope="session")
def toy_set(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), num=12, seed=3)


@pytest.fixture(scope="session")
def toy_tokenizer(toy_set):
    return load_tokenizer(toy_set.tokenizer_dir)


def small_config(**overrides) -> DataConfig:
    """112x112 clips keep their size; 2 frames per second as the released model samples."""
    return DataConfig(video=VideoConfig(min_pixels=28 * 28, max_pixels=112 * 112), **overrides)


@pytest.fixture
def make_processor(toy_tokenizer):
    return lambda **overrides: OmniProcessor(toy_tokenizer, small_config(**overrides))


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


@pytest.fixture(scope="session")
def hf_processor(toy_tokenizer):
    """transformers' Qwen2_5OmniProcessor around the toy tokenizer and a Whisper feature extractor
    configured like Qwen2.5-Omni's; only its class check is relaxed to admit the stand-in above."""
    from transformers import Qwen2_5OmniProcessor, WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class Processor(Qwen2_5OmniProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            return type(argument)

    features = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300,
                                       n_fft=400, padding_value=0.0, return_attention_mask=True)
    return Processor(image_processor=Qwen2VLImageProcessorPil(),
                     video_processor=FrameWiseVideoProcessor(28 * 28, 112 * 112),
                     feature_extractor=features, tokenizer=toy_tokenizer)


@pytest.fixture(scope="session")
def hf_thinker(toy_tokenizer):
    """A tiny random Qwen2.5-Omni thinker whose ``get_rope_index`` is the position oracle."""
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    ids = special_token_ids(toy_tokenizer)
    config = Qwen2_5OmniThinkerConfig(
        audio_token_index=ids.audio_token_id, image_token_index=ids.image_token_id,
        video_token_index=ids.video_token_id, audio_start_token_id=ids.audio_start_token_id,
        audio_end_token_id=ids.audio_end_token_id, vision_start_token_id=ids.vision_start_token_id,
        vision_end_token_id=ids.vision_end_token_id, user_token_id=ids.im_start_token_id,
        position_id_per_seconds=25, seconds_per_chunk=2,
        text_config={"vocab_size": len(toy_tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": 32, "fullatt_block_indexes": [0]},
        audio_config={"num_mel_bins": 128, "encoder_layers": 1, "encoder_attention_heads": 2,
                      "encoder_ffn_dim": 32, "d_model": 16, "output_dim": 32},
    )
    # The 5.23 thinker config does not declare it, yet get_rope_index reads it.
    config.vision_start_token_id = ids.vision_start_token_id
    return Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
