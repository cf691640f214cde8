"""TMRoPE position ids of Qwen2.5-Omni: 3-D (time, height, width) positions for every token.

Text tokens advance all three components together. A vision block puts its patches on a
(time, row, column) grid whose time component counts ``position_id_per_seconds`` (25) ids per
second of video; an audio block counts one id per audio token (40 ms, i.e. also 25 per second).
A video whose own audio is interleaved with it (``use_audio_in_video``) opens with
``<|vision_bos|><|audio_bos|>`` on one shared position, starts both streams at the same id so
that equal times get equal ids, and closes with ``<|audio_eos|><|vision_eos|>`` on one position.
The next token continues after the largest id used so far.

Qwen3-Omni (``RopeIndexSpec.audio_n_window`` set) counts its audio tokens by its tower's chunked
rule, orders a video's tokens and its audio's by time instead of in chunks (positions follow each
token's stream either way) and gives the two openers and the two closers of a video with its
audio consecutive positions; the walk then gives its thinker's ``get_rope_index``.

Blocks are recognised from the tokens themselves, so one batch may mix video+audio, video-only,
audio-only and text-only samples. The result equals the Qwen2.5-Omni thinker's
``get_rope_index`` (with and without ``use_audio_in_video``) on the sequences its processor
produces; the tests check that against transformers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from megatron_omni.data.mel import num_audio_tokens


@dataclass(frozen=True)
class RopeIndexSpec:
    image_token_id: int
    video_token_id: int
    audio_token_id: int
    vision_start_token_id: int
    audio_start_token_id: int
    spatial_merge_size: int = 2
    position_id_per_seconds: int = 25
    # Qwen3-Omni's audio tower window (its audio token count rule); None: Qwen2.5-Omni's.
    audio_n_window: int | None = None

    @classmethod
    def from_token_ids(cls, ids, spatial_merge_size: int = 2, position_id_per_seconds: int = 25,
                       audio_n_window: int | None = None) -> "RopeIndexSpec":
        """From a ``SpecialTokenIds`` (or any object with the same attribute names)."""
        return cls(ids.image_token_id, ids.video_token_id, ids.audio_token_id, ids.vision_start_token_id,
                   ids.audio_start_token_id, spatial_merge_size, position_id_per_seconds, audio_n_window)


class MediaCursor:
    """Hands out the media of a batch in the order their blocks appear in the token sequences."""

    def __init__(self, image_grid_thw=None, video_grid_thw=None, second_per_grids=None, audio_seqlens=None):
        self.images = [tuple(int(v) for v in g) for g in (image_grid_thw if image_grid_thw is not None else [])]
        self.videos = [tuple(int(v) for v in g) for g in (video_grid_thw if video_grid_thw is not None else [])]
        self.video_seconds = [float(s) for s in (second_per_grids if second_per_grids is not None else [])]
        self.audio_frames = [int(n) for n in (audio_seqlens if audio_seqlens is not None else [])]
        if len(self.video_seconds) < len(self.videos):
            raise ValueError(f"{len(self.videos)} videos but {len(self.video_seconds)} second_per_grids values")
        self._next = {"image": 0, "video": 0, "audio": 0}

    def take(self, kind: str):
        pool = {"image": self.images, "video": self.videos, "audio": self.audio_frames}[kind]
        index = self._next[kind]
        if index >= len(pool):
            raise ValueError(f"the tokens hold more {kind} blocks than the {len(pool)} {kind} inputs given")
        self._next[kind] += 1
        if kind == "video":
            return pool[index], self.video_seconds[index]
        return pool[index]


def text_positions(start: int, length: int) -> torch.Tensor:
    return (torch.arange(length) + start).view(1, -1).expand(3, -1)


def vision_positions(start: int, grid_thw: tuple[int, int, int], second_per_grid: float,
                     spec: RopeIndexSpec) -> torch.Tensor:
    """[3, t*h*w/merge^2] positions of a vision grid, in the patch order of the vision encoder."""
    grid_t, grid_h, grid_w = grid_thw
    h, w = grid_h // spec.spatial_merge_size, grid_w // spec.spatial_merge_size
    # float32 arithmetic, exactly as the references compute time ids; Qwen2.5-Omni truncates them.
    seconds = torch.tensor(second_per_grid, dtype=torch.float32)
    times = torch.arange(grid_t) * seconds * spec.position_id_per_seconds
    if spec.audio_n_window is not None and not torch.equal(times, times.round()):
        # Qwen3-Omni keeps fractional time ids; the pipeline's positions are integers.
        raise ValueError(
            f"a video grid of {second_per_grid:g} s at {spec.position_id_per_seconds} position ids per second gives "
            f"fractional Qwen3-Omni time ids {times[:3].tolist()}...; sample video at a rate that makes "
            "temporal_patch_size / fps x position_id_per_seconds whole (fps 2 with 13 ids per second)")
    t_index = times.long()
    t_ids = t_index.view(-1, 1, 1).expand(-1, h, w).flatten()
    h_ids = torch.arange(h).view(1, -1, 1).expand(grid_t, -1, w).flatten()
    w_ids = torch.arange(w).view(1, 1, -1).expand(grid_t, h, -1).flatten()
    return torch.stack([t_ids, h_ids, w_ids]) + start


def _expect_run(ids: Sequence[int], start: int, length: int, token: int, what: str) -> None:
    found = 0
    while start + found < len(ids) and ids[start + found] == token:
        found += 1
    if found != length:
        raise ValueError(f"{what} expects {length} placeholder tokens at position {start}, found {found}")


def sequence_positions(ids: Sequence[int], spec: RopeIndexSpec, media: MediaCursor) -> torch.Tensor:
    """[3, len(ids)] positions of one unpadded sequence; consumes its media from ``media``."""
    pieces: list[torch.Tensor] = []
    next_pos, i, length = 0, 0, len(ids)
    vision_tokens = (spec.image_token_id, spec.video_token_id)
    while i < length:
        token = ids[i]
        follower = ids[i + 1] if i + 1 < length else None
        if token == spec.vision_start_token_id and follower == spec.audio_start_token_id:
            block, i = _interleaved_block(ids, i, next_pos, spec, media)
        elif token == spec.vision_start_token_id and follower in vision_tokens:
            kind = "image" if follower == spec.image_token_id else "video"
            grid, seconds = (media.take("image"), 1.0) if kind == "image" else media.take("video")
            grid_pos = vision_positions(next_pos + 1, grid, seconds, spec)
            _expect_run(ids, i + 1, grid_pos.shape[1], follower, f"{kind} grid {grid}")
            block = torch.cat([text_positions(next_pos, 1), grid_pos, text_positions(int(grid_pos.max()) + 1, 1)], 1)
            i += grid_pos.shape[1] + 2
        elif token == spec.audio_start_token_id and follower == spec.audio_token_id:
            count = num_audio_tokens(media.take("audio"), spec.audio_n_window)
            _expect_run(ids, i + 1, count, spec.audio_token_id, "audio")
            block = text_positions(next_pos, count + 2)
            i += count + 2
        else:
            end = i + 1
            while end < length and ids[end] not in (spec.vision_start_token_id, spec.audio_start_token_id):
                end += 1
            block = text_positions(next_pos, end - i)
            i = end
        pieces.append(block)
        next_pos = int(block.max()) + 1
    if i != length:
        raise ValueError(f"a media block runs past the end of the {length}-token sequence")
    return torch.cat(pieces, 1) if pieces else torch.zeros(3, 0, dtype=torch.long)


def _interleaved_block(ids: Sequence[int], i: int, start: int, spec: RopeIndexSpec,
                       media: MediaCursor) -> tuple[torch.Tensor, int]:
    """A video with its audio. Qwen2.5-Omni: both openers share one position, both streams start
    one id after it, both closers share one position. Qwen3-Omni: the openers and the closers take
    two consecutive positions each, the streams start after the second opener."""
    qwen3 = spec.audio_n_window is not None
    first = start + (2 if qwen3 else 1)
    grid, seconds = media.take("video")
    video = vision_positions(first, grid, seconds, spec)
    audio = text_positions(first, num_audio_tokens(media.take("audio"), spec.audio_n_window))
    body_start = i + 2
    body_end = body_start + video.shape[1] + audio.shape[1]
    body = torch.as_tensor(ids[body_start:body_end], dtype=torch.long)
    is_video, is_audio = body == spec.video_token_id, body == spec.audio_token_id
    if len(body) != body_end - body_start or int(is_video.sum()) != video.shape[1] or int(is_audio.sum()) != audio.shape[1]:
        raise ValueError(f"video-with-audio block at position {i} expects {video.shape[1]} video and "
                         f"{audio.shape[1]} audio tokens, found {int(is_video.sum())} and {int(is_audio.sum())}")
    positions = torch.empty(3, len(body), dtype=torch.long)
    positions[:, is_video] = video
    positions[:, is_audio] = audio
    # The closers sit one past the last run of one modality (the references' last chunk / piece).
    last_run_start = len(body) - 1
    while last_run_start > 0 and is_video[last_run_start - 1] == is_video[-1]:
        last_run_start -= 1
    close = int(positions[:, last_run_start:].max()) + 1
    if qwen3:
        openers, closers = text_positions(start, 2), text_positions(close, 2)
    else:
        openers, closers = torch.full((3, 2), start), torch.full((3, 2), close)
    return torch.cat([openers, positions, closers], 1), body_end + 2


def get_rope_index(
    input_ids: torch.Tensor,
    spec: RopeIndexSpec,
    *,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grids: torch.Tensor | None = None,
    audio_seqlens: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [3, b, s] and deltas [b, 1] (max position + 1 - length) for a batch.

    ``audio_seqlens`` are mel-frame counts per audio (the feature attention mask summed), as in
    transformers. Padding (attention_mask == 0) gets position 1, as in transformers.
    """
    batch, seq = input_ids.shape
    positions = torch.ones(3, batch, seq, dtype=torch.long)
    deltas = torch.zeros(batch, 1, dtype=torch.long)
    media = MediaCursor(image_grid_thw, video_grid_thw, second_per_grids, audio_seqlens)
    for row in range(batch):
        keep = attention_mask[row].bool() if attention_mask is not None else torch.ones(seq, dtype=torch.bool)
        ids = input_ids[row][keep].tolist()
        row_positions = sequence_positions(ids, spec, media)
        positions[:, row, keep] = row_positions
        deltas[row, 0] = (int(row_positions.max()) + 1 - len(ids)) if ids else 0
    return positions, deltas


def extend_positions(positions: torch.Tensor, count: int) -> torch.Tensor:
    """Append ``count`` text positions after [3, n] ``positions`` (completions, generated tokens)."""
    start = int(positions.max()) + 1 if positions.numel() else 0
    return torch.cat([positions, text_positions(start, count)], 1)
