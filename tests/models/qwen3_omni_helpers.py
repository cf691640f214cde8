"""The oracle side of the Qwen3-Omni MoE tests: a tiny random transformers
``Qwen3OmniMoeThinkerForConditionalGeneration`` (4 experts, top-2, q/k norms, interleaved MRoPE,
DeepStack mergers on both vision blocks) that builds offline in well under a second."""
from __future__ import annotations

import torch
from omni_helpers import AUDIO, AUDIO_END, AUDIO_START, IMAGE, USER, VIDEO, VISION_END, VISION_START, VOCAB
from transformers import Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration

NUM_EXPERTS = 4


def tiny_qwen3_thinker_config(tie_word_embeddings: bool = False) -> Qwen3OmniMoeThinkerConfig:
    return Qwen3OmniMoeThinkerConfig(
        audio_token_id=AUDIO, image_token_id=IMAGE, video_token_id=VIDEO, audio_start_token_id=AUDIO_START,
        user_token_id=USER, position_id_per_seconds=25, tie_word_embeddings=tie_word_embeddings,
        # Not declared by transformers' thinker config, yet read by its rope-index code.
        audio_end_token_id=AUDIO_END, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
        text_config=dict(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, num_experts=NUM_EXPERTS, num_experts_per_tok=2,
            moe_intermediate_size=32, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 2, 2],
                             "mrope_interleaved": True},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
            temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
        ),
        audio_config=dict(
            num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32, n_window=50,
            output_dim=64, downsample_hidden_size=16,
        ),
    )


def make_hf_qwen3_thinker(seed: int = 0, tie_word_embeddings: bool = False) -> Qwen3OmniMoeThinkerForConditionalGeneration:
    torch.manual_seed(seed)
    model = Qwen3OmniMoeThinkerForConditionalGeneration(tiny_qwen3_thinker_config(tie_word_embeddings)).eval()
    # Random init leaves norm weights at 1 and biases at 0; perturb them so a mapping that mixes
    # them up (q_norm with k_norm, one expert with another) cannot pass.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model
