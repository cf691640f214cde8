"""Fixtures of the data-pipeline tests: a small toy set, its tokenizer and the transformers oracles."""
from __future__ import annotations

import pytest
from hf_reference import hf_omni_processor

from megatron_omni.data.processor import OmniProcessor
from megatron_omni.data.tokenizer import load_tokenizer, special_token_ids
from megatron_omni.data.toy import make_toy_dataset, toy_data_config


@pytest.fixture(scope="session")
def toy_set(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), num=12, seed=3)


@pytest.fixture(scope="session")
def toy_tokenizer(toy_set):
    return load_tokenizer(toy_set.tokenizer_dir)


@pytest.fixture
def make_processor(toy_tokenizer):
    return lambda **overrides: OmniProcessor(toy_tokenizer, toy_data_config(**overrides))


@pytest.fixture(scope="session")
def hf_processor(toy_tokenizer):
    """transformers' Qwen2_5OmniProcessor (see hf_omni_processor)."""
    from transformers import Qwen2_5OmniProcessor

    return hf_omni_processor(Qwen2_5OmniProcessor, toy_tokenizer)


@pytest.fixture(scope="session")
def hf_qwen3_processor(toy_tokenizer):
    """transformers' Qwen3OmniMoeProcessor (see hf_omni_processor): 13 position ids per second,
    n_window 50, video tokens and audio merged by time."""
    from transformers import Qwen3OmniMoeProcessor

    return hf_omni_processor(Qwen3OmniMoeProcessor, toy_tokenizer)


@pytest.fixture(scope="session")
def hf_qwen3_thinker(toy_tokenizer):
    """A tiny random Qwen3-Omni MoE thinker whose ``get_rope_index`` is the position oracle."""
    from transformers import Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration

    ids = special_token_ids(toy_tokenizer)
    config = Qwen3OmniMoeThinkerConfig(
        audio_token_id=ids.audio_token_id, image_token_id=ids.image_token_id, video_token_id=ids.video_token_id,
        audio_start_token_id=ids.audio_start_token_id, user_token_id=ids.im_start_token_id, position_id_per_seconds=13,
        text_config={"vocab_size": len(toy_tokenizer), "hidden_size": 32, "intermediate_size": 64,
                     "moe_intermediate_size": 16, "num_experts": 2, "num_experts_per_tok": 1, "head_dim": 16,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 2, 2],
                                         "mrope_interleaved": True}},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                       "num_position_embeddings": 16, "deepstack_visual_indexes": [0]},
        audio_config={"num_mel_bins": 128, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
                      "d_model": 16, "output_dim": 32, "n_window": 50, "downsample_hidden_size": 8},
    )
    # Not declared by the 5.23 thinker config, yet read by get_rope_index.
    config.vision_start_token_id = ids.vision_start_token_id
    return Qwen3OmniMoeThinkerForConditionalGeneration(config).eval()


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
