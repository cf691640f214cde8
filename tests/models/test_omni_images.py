"""Still images (``pixel_values`` / ``image_grid_thw``) through OmniModel and the rollout sampler,
against transformers' Qwen2.5-Omni thinker (the oracle): logits, masking, greedy completions."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from omni_helpers import (
    AUDIO,
    AUDIO_END,
    AUDIO_START,
    GRID,
    IMAGE,
    PATCH_DIM,
    SECONDS_PER_GRID,
    VIDEO,
    VISION_END,
    VISION_START,
    assert_close_on_valid,
    audio_tokens,
)

from megatron_omni.data.media import SampleMedia
from megatron_omni.data.processor import ProcessedSample
from megatron_omni.data.video import VisionFeatures
from megatron_omni.generation.generator import SamplingConfig
from megatron_omni.generation.omni import sample_prompts
from megatron_omni.models.masking import ModalityMask
from megatron_omni.models.placeholders import PlaceholderMismatch

IMAGE_GRIDS = [(1, 4, 6), (1, 2, 4)]  # 6 and 2 image tokens
AUDIO_FRAMES = [200, 160]


@dataclasses.dataclass
class ImageBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    media: dict  # OmniModel / transformers media keyword arguments

    def model_inputs(self) -> dict:
        return dict(input_ids=self.input_ids, position_ids=self.position_ids, **self.media)

    def lengths(self) -> list[int]:
        return self.attention_mask.sum(1).tolist()


def _block(start: int, token: int, count: int, end: int) -> list[int]:
    return [start] + [token] * count + [end]


def make_image_batch(hf_model, seed: int = 0) -> ImageBatch:
    """Row 0: image, video, audio and text; row 1: image, audio and text; right-padded; positions
    from transformers' own get_rope_index."""
    g = torch.Generator().manual_seed(seed)

    def text(n):
        return torch.randint(0, AUDIO, (n,), generator=g).tolist()

    images = [_block(VISION_START, IMAGE, t * h * w // 4, VISION_END) for t, h, w in IMAGE_GRIDS]
    audios = [_block(AUDIO_START, AUDIO, audio_tokens(f), AUDIO_END) for f in AUDIO_FRAMES]
    video = _block(VISION_START, VIDEO, GRID[0] * GRID[1] * GRID[2] // 4, VISION_END)
    rows = [text(3) + images[0] + text(2) + video + text(1) + audios[0] + text(3),
            text(2) + images[1] + text(2) + audios[1] + text(4)]
    seq = max(map(len, rows))
    input_ids = torch.zeros(len(rows), seq, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), seq, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)], attention_mask[i, : len(row)] = torch.tensor(row), 1
    feature_attention_mask = torch.zeros(len(rows), max(AUDIO_FRAMES), dtype=torch.long)
    for i, frames in enumerate(AUDIO_FRAMES):
        feature_attention_mask[i, :frames] = 1
    image_grid_thw, video_grid_thw = torch.tensor(IMAGE_GRIDS), torch.tensor([GRID])
    position_ids, _ = hf_model.model.get_rope_index(
        input_ids, image_grid_thw, video_grid_thw, attention_mask, False,
        feature_attention_mask.sum(1), torch.tensor([SECONDS_PER_GRID]),
    )
    media = dict(
        pixel_values=torch.randn(int(image_grid_thw.prod(-1).sum()), PATCH_DIM, generator=g),
        image_grid_thw=image_grid_thw,
        pixel_values_videos=torch.randn(int(video_grid_thw.prod(-1).sum()), PATCH_DIM, generator=g),
        video_grid_thw=video_grid_thw,
        input_features=torch.randn(len(rows), 128, max(AUDIO_FRAMES), generator=g),
        feature_attention_mask=feature_attention_mask,
    )
    return ImageBatch(input_ids, attention_mask, position_ids, media)


@pytest.fixture
def batch(converted_thinker):
    return make_image_batch(converted_thinker.hf_model)


@torch.no_grad()
def hf_logits(hf_model, batch: ImageBatch) -> torch.Tensor:
    return hf_model(**batch.model_inputs(), attention_mask=batch.attention_mask).logits


def forward(model, batch, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**{**batch.model_inputs(), **kwargs})


def test_image_logits_match_transformers(converted_thinker, omni_model, batch):
    expected = hf_logits(converted_thinker.hf_model, batch)
    assert_close_on_valid(forward(omni_model, batch), expected, batch, atol=1e-4)
    # The images matter: without their features the reference's logits move well beyond the tolerance.
    other = dataclasses.replace(batch, media={**batch.media, "pixel_values": batch.media["pixel_values"] + 1})
    assert (hf_logits(converted_thinker.hf_model, other) - expected).abs().max() > 1e-2


def test_visual_mask_degrades_images(omni_model, batch):
    """Only the image's features change (row 1 has no video): logits before the first image token
    stay, every later one moves; the audio mask leaves the image block's own logits alone."""
    full = forward(omni_model, batch)
    masked = forward(omni_model, batch, modality_mask=ModalityMask("visual", ratio=0.9, seed=3))
    first, length = int((batch.input_ids[1] == IMAGE).nonzero()[0]), batch.lengths()[1]
    assert torch.equal(masked[1, :first], full[1, :first])
    assert bool(((masked[1, first:length] - full[1, first:length]).abs().amax(-1) > 1e-6).all())
    audio_masked = forward(omni_model, batch, modality_mask=ModalityMask("audio", ratio=0.9, seed=3))
    first_audio = int((batch.input_ids[1] == AUDIO).nonzero()[0])
    assert torch.equal(audio_masked[1, :first_audio], full[1, :first_audio])


def test_image_placeholders_without_pixels_are_refused(omni_model, batch):
    with pytest.raises(PlaceholderMismatch, match=r"hold 8 image placeholder tokens \(id 101\) but no image inputs"):
        forward(omni_model, batch, pixel_values=None, image_grid_thw=None)
    grids = torch.tensor([IMAGE_GRIDS[0], IMAGE_GRIDS[0]])
    with pytest.raises(PlaceholderMismatch, match="hold 8 image placeholder tokens .* encoder produced 12"):
        forward(omni_model, batch, pixel_values=batch.media["pixel_values"][:24].repeat(2, 1), image_grid_thw=grids)


def test_rollout_of_an_image_prompt_is_the_reference_greedy_continuation(converted_thinker, omni_model, batch):
    """generation/omni.py samples from a processed prompt with an image and audio (row 1); greedy
    tokens equal transformers' argmax over the same prompt + completion, placeholders excluded."""
    n = batch.lengths()[1]
    ids, positions = batch.input_ids[1, :n], batch.position_ids[:, 1, :n]
    image = VisionFeatures(batch.media["pixel_values"][24:], IMAGE_GRIDS[1])
    audio = batch.media["input_features"][1, :, : AUDIO_FRAMES[1]]
    prompt = ProcessedSample(sample_id="img", input_ids=ids, labels=ids, loss_mask=torch.zeros(n), position_ids=positions,
                             prompt_length=n, pad_token_id=0,
                             media=SampleMedia(video=None, audio_features=audio, audio_in_video=False, image=image))
    sampling = SamplingConfig(max_new_tokens=3, greedy=True)
    ((completion,),) = sample_prompts(omni_model, [prompt], sampling, 1, [0], vocab_size=128, pad_token_id=0).completions
    assert len(completion) == 3
    full = torch.cat([ids, torch.tensor(completion)])[None]
    start = int(positions.max()) + 1
    full_positions = torch.cat([positions, torch.arange(start, start + 3).expand(3, -1)], 1)[:, None]
    media = dict(pixel_values=image.pixel_values, image_grid_thw=torch.tensor([IMAGE_GRIDS[1]]),
                 input_features=audio[None], feature_attention_mask=torch.ones(1, AUDIO_FRAMES[1], dtype=torch.long))
    with torch.no_grad():
        logits = converted_thinker.hf_model(input_ids=full, position_ids=full_positions, **media).logits[0]
    logits[:, [AUDIO, IMAGE, VIDEO]] = float("-inf")  # the sampler never emits placeholders
    assert logits[n - 1 : n + 2].argmax(-1).tolist() == completion
