"""The oracle side of the omni-model tests: a tiny random transformers Qwen2.5-Omni thinker,
inputs with video patches, audio features and text, TMRoPE positions from transformers' own
``get_rope_index``, and the logits of both implementations."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

VOCAB = 128
AUDIO, IMAGE, VIDEO, AUDIO_START, AUDIO_END, USER, VISION_START, VISION_END = range(100, 108)
PATCH_DIM = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch (Qwen2.5-Omni's tower)
GRID = (2, 4, 4)  # t, h, w patches -> 2 * 4 * 4 / (2 * 2) = 8 video tokens
SECONDS_PER_GRID = 2.0


def tiny_thinker_config(tie_word_embeddings: bool = False) -> Qwen2_5OmniThinkerConfig:
    return Qwen2_5OmniThinkerConfig(
        audio_token_index=AUDIO, image_token_index=IMAGE, video_token_index=VIDEO,
        audio_start_token_id=AUDIO_START, audio_end_token_id=AUDIO_END, user_token_id=USER,
        # Not declared by transformers' thinker config, yet read by its rope-index code.
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
        position_id_per_seconds=25, seconds_per_chunk=2, tie_word_embeddings=tie_word_embeddings,
        text_config=dict(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2, window_size=56, out_hidden_size=64, fullatt_block_indexes=[1],
        ),
        audio_config=dict(
            num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
            n_window=100, output_dim=64,
        ),
    )


def make_hf_thinker(seed: int = 0, tie_word_embeddings: bool = False) -> Qwen2_5OmniThinkerForConditionalGeneration:
    torch.manual_seed(seed)
    return perturb_norms_and_biases(Qwen2_5OmniThinkerForConditionalGeneration(tiny_thinker_config(tie_word_embeddings)).eval())


def perturb_norms_and_biases(model):
    """Random init leaves norm weights at 1 and biases at 0; perturb them so a mapping that mixes
    them up cannot pass."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model


def audio_tokens(frames: int) -> int:
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def model_audio_tokens(hf_model, frames: int) -> int:
    """Audio placeholders of a clip of ``frames`` mel frames for this thinker (Qwen3-Omni's tower
    takes chunks of 2 * n_window frames: transformers' own length rule)."""
    if hf_model.config.model_type == "qwen3_omni_moe_thinker":
        from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

        return int(_get_feat_extract_output_lengths(torch.tensor(frames), hf_model.config.audio_config.n_window))
    return audio_tokens(frames)


@dataclass
class OmniBatch:
    input_ids: torch.Tensor  # [b, s], right-padded with 0
    attention_mask: torch.Tensor  # [b, s]
    position_ids: torch.Tensor  # [3, b, s]
    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor
    input_features: torch.Tensor
    feature_attention_mask: torch.Tensor
    use_audio_in_video: bool

    def model_inputs(self) -> dict:
        """Keyword arguments of OmniModel.forward (and of the HF thinker, plus attention_mask)."""
        return dict(
            input_ids=self.input_ids, position_ids=self.position_ids, pixel_values_videos=self.pixel_values_videos,
            video_grid_thw=self.video_grid_thw, input_features=self.input_features,
            feature_attention_mask=self.feature_attention_mask,
        )

    def lengths(self) -> list[int]:
        return self.attention_mask.sum(1).tolist()


def _text(generator: torch.Generator, n: int) -> list[int]:
    return torch.randint(0, AUDIO, (n,), generator=generator).tolist()


def _sample_tokens(generator, n_audio: int, use_audio_in_video: bool, lead: int, tail: int) -> list[int]:
    frame_tokens = GRID[1] * GRID[2] // 4
    if use_audio_in_video:
        # 2-second chunks of 25 positions per second: frame 0 (t = 0), all audio (t < 50), frame 1 (t = 50)
        # (also Qwen3-Omni's order by position: every audio position lies below frame 1's).
        body = ([VISION_START, AUDIO_START] + [VIDEO] * frame_tokens + [AUDIO] * n_audio + [VIDEO] * frame_tokens
                + [AUDIO_END, VISION_END])
        return _text(generator, lead) + body + _text(generator, tail)
    video = [VISION_START] + [VIDEO] * (GRID[0] * frame_tokens) + [VISION_END]
    audio = [AUDIO_START] + [AUDIO] * n_audio + [AUDIO_END]
    return _text(generator, lead) + video + _text(generator, 2) + audio + _text(generator, tail)


def make_batch(hf_model, use_audio_in_video: bool = False, seed: int = 0, frames: tuple[int, ...] = (200, 160)) -> OmniBatch:
    """Samples of different lengths (by default two, with audio of 200 and 160 mel frames; at most
    two), right-padded; for the Qwen2.5-Omni or the Qwen3-Omni MoE thinker (patch size and audio
    token counts from its config)."""
    g = torch.Generator().manual_seed(seed)
    vision = hf_model.config.vision_config
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    rows = [_sample_tokens(g, model_audio_tokens(hf_model, f), use_audio_in_video, lead, tail)
            for f, lead, tail in zip(frames, (3, 2), (3, 5))]
    seq = max(map(len, rows))
    input_ids = torch.zeros(len(rows), seq, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), seq, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    feature_attention_mask = torch.zeros(len(rows), max(frames), dtype=torch.long)
    for i, f in enumerate(frames):
        feature_attention_mask[i, :f] = 1
    grid = torch.tensor([GRID] * len(rows))
    position_ids, _ = hf_model.model.get_rope_index(
        input_ids, None, grid, attention_mask, use_audio_in_video,
        feature_attention_mask.sum(1), torch.tensor([SECONDS_PER_GRID] * len(rows)),
    )
    return OmniBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        pixel_values_videos=torch.randn(len(rows) * GRID[0] * GRID[1] * GRID[2], patch_dim, generator=g),
        video_grid_thw=grid,
        input_features=torch.randn(len(rows), 128, max(frames), generator=g),
        feature_attention_mask=feature_attention_mask,
        use_audio_in_video=use_audio_in_video,
    )


@torch.no_grad()
def hf_logits(hf_model, batch: OmniBatch) -> torch.Tensor:
    return hf_model(**batch.model_inputs(), attention_mask=batch.attention_mask).logits


def assert_close_on_valid(actual: torch.Tensor, expected: torch.Tensor, batch: OmniBatch, atol: float = 1e-4) -> None:
    """Compare [b, s, V] logits on each sample's real (unpadded) tokens and true vocabulary."""
    for i, n in enumerate(batch.lengths()):
        torch.testing.assert_close(actual[i, :n, :VOCAB], expected[i, :n, :VOCAB], atol=atol, rtol=0)


def save_hf_folder(hf_model, folder: Path) -> Path:
    hf_model.save_pretrained(folder)
    return folder


def read_folder(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})
    return tensors


def assert_bit_identical(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype, key
        assert torch.equal(actual[key], tensor), key


def processed_samples(batch: OmniBatch) -> list:
    """The helper batch's samples as the data pipeline's ``ProcessedSample`` (next-token labels,
    every token a target but the last), for the project's own ``pad`` and ``pack``."""
    from megatron_omni.data.media import SampleMedia
    from megatron_omni.data.processor import ProcessedSample
    from megatron_omni.data.video import VideoFeatures

    patches = [int(g.prod()) for g in batch.video_grid_thw]
    pixels = batch.pixel_values_videos.split(patches)
    samples = []
    for i, n in enumerate(batch.lengths()):
        ids = batch.input_ids[i, :n]
        frames = int(batch.feature_attention_mask[i].sum())
        media = SampleMedia(video=VideoFeatures(pixels[i], tuple(batch.video_grid_thw[i].tolist()), SECONDS_PER_GRID),
                            audio_features=batch.input_features[i, :, :frames], audio_in_video=batch.use_audio_in_video)
        samples.append(ProcessedSample(
            sample_id=f"s{i}", input_ids=ids, labels=torch.cat([ids[1:], ids.new_zeros(1)]),
            loss_mask=torch.cat([torch.ones(n - 1), torch.zeros(1)]), position_ids=batch.position_ids[:, i, :n],
            prompt_length=1, pad_token_id=0, media=media))
    return samples
