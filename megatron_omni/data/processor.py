"""Turn a sample and its decoded media into model inputs: token ids, targets, loss mask, TMRoPE ids.

The prompt is the Qwen2.5-Omni chat template with each medium's placeholder expanded to one token
per encoder output: ``grid_h * grid_w / merge^2`` image tokens (one temporal patch),
``grid_t * grid_h * grid_w / merge^2`` video tokens, ``num_audio_tokens``
audio tokens, or, for a video with its own audio, ``<|audio_bos|>`` + video and audio tokens
interleaved in ``seconds_per_chunk`` chunks + ``<|audio_eos|>`` inside the vision markers, as the
Qwen2.5-Omni processor does. The SFT target is ``<think>description</think><answer>words</answer>``
followed by ``<|im_end|>``; only target tokens carry loss.

Labels follow megatron's convention: ``labels[t]`` is the token at ``t + 1`` and ``loss_mask[t]``
says whether that prediction is trained. Sequences keep their full length, so token positions,
media placeholders and position ids stay aligned.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from megatron_omni.data.config import DataConfig
from megatron_omni.data.errors import DataError, MissingLabelError, SampleTooLongError
from megatron_omni.data.manifest import OmniSample
from megatron_omni.data.media import SampleMedia
from megatron_omni.data.mel import num_audio_tokens
from megatron_omni.data.rope_index import MediaCursor, RopeIndexSpec, extend_positions, sequence_positions
from megatron_omni.data.template import format_target, render_prompt
from megatron_omni.data.tokenizer import ModalityTokens, modality_tokens, special_token_ids


@dataclass
class ProcessedSample:
    sample_id: str
    input_ids: torch.Tensor  # long [s]
    labels: torch.Tensor  # long [s]: the next token
    loss_mask: torch.Tensor  # float [s]: 1 where labels[t] is a trained target token
    position_ids: torch.Tensor  # long [3, s]
    prompt_length: int
    pad_token_id: int
    media: SampleMedia

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def rope_delta(self) -> int:
        """Max position + 1 - length: generated token k sits at position length + k + delta."""
        return int(self.position_ids.max()) + 1 - self.length


def chunk_lengths(time_ids: Sequence[float], per_chunk: int) -> list[int]:
    """Tokens per time chunk: a chunk closes at the first id >= its end (one chunk per step)."""
    lengths, start, boundary = [], 0, per_chunk
    for index, value in enumerate(time_ids):
        if value >= boundary:
            lengths.append(index - start)
            start, boundary = index, boundary + per_chunk
    lengths.append(len(time_ids) - start)
    return lengths


def _merged_by_time(video_times: Sequence[float], n_audio: int, tokens: ModalityTokens) -> str:
    """Qwen3-Omni's video-with-audio body: video tokens at time t go before audio token t' when
    t <= t' (audio token k sits at time k), the rest of either stream after."""
    parts, v, a = [], 0, 0
    while v < len(video_times) and a < n_audio:
        if video_times[v] <= a:
            parts.append(tokens.video_token)
            v += 1
        else:
            parts.append(tokens.audio_token)
            a += 1
    return "".join(parts) + tokens.video_token * (len(video_times) - v) + tokens.audio_token * (n_audio - a)


def _shifted(ids: list[int], first_target: int, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token labels and the mask of predictions whose label is at index >= ``first_target``."""
    labels = torch.tensor(ids[1:] + [pad_token_id], dtype=torch.long)
    loss_mask = torch.zeros(len(ids), dtype=torch.float32)
    loss_mask[max(first_target - 1, 0) : len(ids) - 1] = 1.0
    return labels, loss_mask


class OmniProcessor:
    """Samples -> token ids, TMRoPE positions, media features. The time alignment of audio and
    video is the model's (``omni.position_id_per_seconds`` / ``omni.seconds_per_chunk`` of a run
    config; Qwen2.5-Omni uses 25 ids per second and 2-second chunks). ``audio_n_window`` (the
    audio tower's ``n_window``) selects Qwen3-Omni's layout, as its processor builds it: audio
    token counts by the tower's chunked rule, and a video's own audio merged with its frames by
    time (a frame's tokens before the audio tokens at or after its start) instead of in chunks,
    and its vision settings: the ``data.video`` fields the config leaves unset take Qwen3-Omni's
    values (16-pixel patches, its frame bounds and normalisation; ``FAMILY_VISION``), settled into
    ``cfg`` itself so that the run's saved config holds them."""

    def __init__(self, tokenizer, cfg: DataConfig, position_id_per_seconds: int = 25, seconds_per_chunk: float = 2,
                 audio_n_window: int | None = None):
        self.tokenizer = tokenizer
        cfg.video.settle_family("qwen3_omni_moe" if audio_n_window is not None else "qwen2_5_omni")
        self.cfg = cfg
        self.position_id_per_seconds, self.seconds_per_chunk = position_id_per_seconds, seconds_per_chunk
        self.audio_n_window = audio_n_window
        self.tokens = modality_tokens(tokenizer)
        self.token_ids = special_token_ids(tokenizer)
        self.rope_spec = RopeIndexSpec.from_token_ids(self.token_ids, cfg.video.merge_size, position_id_per_seconds,
                                                      audio_n_window)

    def audio_tokens(self, media: SampleMedia) -> int:
        return num_audio_tokens(media.audio_frames, self.audio_n_window)

    # ------------------------------------------------------------------ placeholders
    def video_placeholder(self, media: SampleMedia) -> str:
        """What replaces ``<|VIDEO|>``: video tokens, or audio_bos + interleaved chunks + audio_eos."""
        video, t = media.video, self.tokens
        count = video.num_tokens(self.cfg.video.merge_size)
        if not media.audio_in_video:
            return t.video_token * count
        grid_t = video.grid_thw[0]
        per_time = count // grid_t
        # float64 time ids per token, as the reference processors compute them.
        video_times = [t * video.second_per_grid * self.position_id_per_seconds
                       for t in range(grid_t) for _ in range(per_time)]
        n_audio = self.audio_tokens(media)
        if self.audio_n_window is not None:
            return t.audio_bos_token + _merged_by_time(video_times, n_audio, t) + t.audio_eos_token
        per_chunk = int(self.position_id_per_seconds * self.seconds_per_chunk)
        video_chunks = chunk_lengths(video_times, per_chunk)
        audio_chunks = chunk_lengths(range(n_audio), per_chunk)
        parts = [t.audio_bos_token]
        for j in range(max(len(video_chunks), len(audio_chunks))):
            parts.append(t.video_token * (video_chunks[j] if j < len(video_chunks) else 0))
            parts.append(t.audio_token * (audio_chunks[j] if j < len(audio_chunks) else 0))
        parts.append(t.audio_eos_token)
        return "".join(parts)

    def prompt_text(self, sample: OmniSample, media: SampleMedia, privileged: bool = False) -> str:
        """The chat-template prompt with every placeholder expanded."""
        if privileged and not sample.description:
            raise MissingLabelError(f"{sample.location}: sample {sample.id} has no 'description' for the privileged prompt")
        for name, value in (("subtitle", sample.subtitle), ("description", sample.description or "")):
            if any(token in value for token in self.tokens.control_tokens()):
                raise DataError(f"{sample.location}: field '{name}' of sample {sample.id} contains a control token")
        text = render_prompt(
            has_image=media.image is not None, has_video=media.video is not None,
            has_audio=media.audio_features is not None and not media.audio_in_video,
            subtitle=sample.subtitle, cfg=self.cfg.prompt,
            privileged_context=sample.description if privileged else None, tokens=self.tokens,
        )
        t = self.tokens
        if media.image is not None:
            text = text.replace(t.image_token, t.image_token * media.image.num_tokens(self.cfg.video.merge_size), 1)
        if media.video is not None:
            text = text.replace(t.video_token, self.video_placeholder(media), 1)
        if media.audio_features is not None and not media.audio_in_video:
            text = text.replace(t.audio_token, t.audio_token * self.audio_tokens(media), 1)
        return text

    # ------------------------------------------------------------------ samples
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def target_ids(self, sample: OmniSample) -> list[int]:
        if not sample.description or not sample.openset:
            missing = "description" if not sample.description else "openset"
            raise MissingLabelError(f"{sample.location}: sample {sample.id} has no '{missing}' for the SFT target")
        return self._encode(format_target(sample.description, sample.openset)) + [self.token_ids.im_end_token_id]

    def positions(self, ids: list[int], media: SampleMedia) -> torch.Tensor:
        video = media.video
        cursor = MediaCursor(
            image_grid_thw=[media.image.grid_thw] if media.image is not None else None,
            video_grid_thw=[video.grid_thw] if video is not None else None,
            second_per_grids=[video.second_per_grid] if video is not None else None,
            audio_seqlens=[media.audio_frames] if media.audio_features is not None else None,
        )
        return sequence_positions(ids, self.rope_spec, cursor)

    def process(self, sample: OmniSample, media: SampleMedia, *, with_target: bool = True,
                privileged: bool = False) -> ProcessedSample:
        """Prompt (+ SFT target) of one sample. ``privileged`` adds the rationale to the prompt."""
        prompt = self._encode(self.prompt_text(sample, media, privileged))
        ids = prompt + (self.target_ids(sample) if with_target else [])
        limit = self.cfg.max_seq_length
        if limit is not None and len(ids) > limit:
            raise SampleTooLongError(f"{sample.location}: sample {sample.id} has {len(ids)} tokens, "
                                     f"more than data.max_seq_length={limit}")
        pad = self.token_ids.pad_token_id
        labels, loss_mask = _shifted(ids, len(prompt) if with_target else len(ids), pad)
        return ProcessedSample(
            sample_id=sample.id, input_ids=torch.tensor(ids, dtype=torch.long), labels=labels,
            loss_mask=loss_mask, position_ids=self.positions(ids, media), prompt_length=len(prompt),
            pad_token_id=pad, media=media,
        )


def attach_completion(prompt: ProcessedSample, completion_ids: Sequence[int]) -> ProcessedSample:
    """The prompt followed by a (generated) completion; the loss mask covers the completion.

    The same completion attached to a student prompt and to a privileged teacher prompt gives two
    sequences whose completion tokens align one to one.
    """
    prompt_ids = prompt.input_ids[: prompt.prompt_length].tolist()
    ids = prompt_ids + [int(t) for t in completion_ids]
    labels, loss_mask = _shifted(ids, len(prompt_ids), prompt.pad_token_id)
    positions = extend_positions(prompt.position_ids[:, : prompt.prompt_length], len(completion_ids))
    return replace(prompt, input_ids=torch.tensor(ids, dtype=torch.long), labels=labels,
                   loss_mask=loss_mask, position_ids=positions)
