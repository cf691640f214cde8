"""A tiny random full Qwen2.5-Omni (thinker + talker + token2wav) saved as a released folder:
``thinker.*`` / ``talker.*`` / ``token2wav.*`` safetensors over an index, config.json and
spk_dict.pt, the oracle of the full-model export."""
from __future__ import annotations

from pathlib import Path

import torch
from omni_helpers import VOCAB, tiny_thinker_config
from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

# The talker reads these thinker tokens' embeddings; they must lie in the tiny thinker's vocabulary.
TTS_TEXT_START, TTS_TEXT_END, TTS_TEXT_PAD = 108, 109, 110
TALKER_VOCAB = 64
CODEC_PAD, CODEC_START, CODEC_END, CODEC_MASK = 60, 61, 62, 63
SPEAKER = "Chelsie"
ENC_EMB_DIM, MEL_DIM = 16, 80


def tiny_full_config() -> Qwen2_5OmniConfig:
    thinker = tiny_thinker_config().to_dict()
    talker = dict(
        vocab_size=TALKER_VOCAB, embedding_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
        tts_text_start_token_id=TTS_TEXT_START, tts_text_end_token_id=TTS_TEXT_END, tts_text_pad_token_id=TTS_TEXT_PAD,
        tts_codec_start_token_id=CODEC_START, tts_codec_end_token_id=CODEC_END, tts_codec_pad_token_id=CODEC_PAD,
        tts_codec_mask_token_id=CODEC_MASK, audio_token_index=thinker["audio_token_index"],
        image_token_index=thinker["image_token_index"], video_token_index=thinker["video_token_index"],
        vision_start_token_id=thinker["vision_start_token_id"], vision_end_token_id=thinker["vision_end_token_id"],
        audio_start_token_id=thinker["audio_start_token_id"], audio_end_token_id=thinker["audio_end_token_id"],
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    )
    token2wav = dict(
        dit_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, head_dim=16, ff_mult=2, emb_dim=16,
                        num_embeds=TALKER_VOCAB, mel_dim=MEL_DIM, enc_emb_dim=ENC_EMB_DIM, enc_dim=16,
                        enc_channels=[16, 16, 16, 16, 48], enc_kernel_sizes=[5, 3, 3, 3, 1],
                        enc_dilations=[1, 2, 3, 4, 1],
                        enc_attention_channels=8, enc_se_channels=8, block_size=4, look_ahead_layers=[0],
                        look_backward_layers=[1]),
        bigvgan_config=dict(mel_dim=MEL_DIM, upsample_initial_channel=16, resblock_kernel_sizes=[3],
                            resblock_dilation_sizes=[[1, 3, 5]], upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4]),
    )
    return Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker, token2wav_config=token2wav,
                             enable_audio_output=True)


def save_full_folder(folder: Path, seed: int = 0, max_shard_size: str = "400KB") -> Path:
    """Save the tiny full model in several shards plus spk_dict.pt; returns ``folder``."""
    torch.manual_seed(seed)
    model = Qwen2_5OmniForConditionalGeneration(tiny_full_config()).eval()
    with torch.no_grad():  # non-default norms and biases, as in omni_helpers.make_hf_thinker
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    speakers = {SPEAKER: {"cond": torch.randn(1, ENC_EMB_DIM), "ref_mel": torch.randn(1, 12, MEL_DIM),
                          "bos_token": TTS_TEXT_START}}
    torch.save(speakers, folder / "spk_dict.pt")
    return folder


def text_prompt(length: int = 6) -> torch.Tensor:
    return torch.randint(0, VOCAB - 30, (1, length), generator=torch.Generator().manual_seed(3))
