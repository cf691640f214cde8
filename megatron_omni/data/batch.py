"""Micro-batches: padded [b, s] blocks or packed THD sequences, with the media of their samples.

``pad`` and ``pack`` put the same per-sample content (tokens, labels, loss mask, position ids,
media) into the two layouts. Packing concatenates the samples into one row and records the
sample boundaries in ``cu_seqlens`` for megatron-core's ``PackedSeqParams`` (``qkv_format="thd"``);
each sample keeps its own position ids, starting at 0, so attention and RoPE see every sample
exactly as in the padded layout.

Media follow transformers' Qwen2.5-Omni inputs: ``pixel_values`` concatenated over images with
``image_grid_thw`` [I, 3]; ``pixel_values_videos`` concatenated over
videos with ``video_grid_thw`` [V, 3] and ``video_second_per_grid`` [V]; ``input_features``
[A, mel, T] padded to the longest audio with ``feature_attention_mask`` [A, T]. Their order is
the order of the placeholders in the token stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import torch

from megatron_omni.data.processor import ProcessedSample

# Position id of padding tokens, as transformers' get_rope_index fills them.
PAD_POSITION = 1


@dataclass
class SkippedSample:
    """A sample left out of training because its data was bad (with skip_bad_samples)."""

    index: int
    sample_id: str
    reason: str


@dataclass
class OmniBatch:
    tokens: torch.Tensor  # long [b, s] ([1, total] when packed)
    labels: torch.Tensor  # long [b, s]
    loss_mask: torch.Tensor  # float [b, s]
    position_ids: torch.Tensor  # long [3, b, s]
    attention_mask: torch.Tensor  # bool [b, s]: real tokens
    rope_deltas: torch.Tensor  # long [num_samples]
    sample_ids: list[str]
    prompt_lengths: list[int]
    cu_seqlens: torch.Tensor | None = None  # int32 [segments + 1] when packed
    max_seqlen: int | None = None
    # bool [b, s]: True at padding (a padded row's tail, a packed row's final segment); None when the
    # batch has none. Built with the batch, so no forward reads the device to know.
    padding_mask: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None  # image patches
    image_grid_thw: torch.Tensor | None = None  # long [I, 3]
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None  # long [V, 3]
    video_second_per_grid: torch.Tensor | None = None  # float [V]
    input_features: torch.Tensor | None = None  # float [A, mel, T]
    feature_attention_mask: torch.Tensor | None = None  # long [A, T]
    skipped: list[SkippedSample] = field(default_factory=list)

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def num_samples(self) -> int:
        return len(self.sample_ids)

    def model_kwargs(self) -> dict:
        """The OmniModel keyword arguments of this batch: media tensors, packing and the padding
        mask (MoE layers keep padding out of their load-balancing loss; dense layers ignore it)."""
        return {
            "pixel_values": self.pixel_values,
            "image_grid_thw": self.image_grid_thw,
            "pixel_values_videos": self.pixel_values_videos,
            "video_grid_thw": self.video_grid_thw,
            "input_features": self.input_features,
            "feature_attention_mask": self.feature_attention_mask,
            "packed_seq_params": self.packed_seq_params(),
            "padding_mask": self.padding_mask,
        }

    def packed_seq_params(self):
        """megatron-core ``PackedSeqParams`` for a packed batch, None for a padded one."""
        if not self.packed:
            return None
        from megatron.core.packed_seq_params import PackedSeqParams

        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=self.cu_seqlens, cu_seqlens_kv=self.cu_seqlens,
                               max_seqlen_q=self.max_seqlen, max_seqlen_kv=self.max_seqlen)

    def sample_spans(self) -> list[tuple[int, int, int]]:
        """(row, start, end) of each sample's tokens (a host read of a device batch's layout)."""
        if self.packed:
            cu = self.cu_seqlens.tolist()
            return [(0, cu[k], cu[k + 1]) for k in range(self.num_samples)]
        return [(k, 0, n) for k, n in enumerate(self.attention_mask.sum(1).tolist()[: self.num_samples])]

    def in_layout(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """[samples, s] per-sample values (sample k's tokens from position 0) in this batch's
        layout, [b, s]; values past a sample's tokens are dropped when packed."""
        if not self.packed:
            return torch.stack(list(values))
        row = values[0].new_zeros(self.tokens.shape[1:])
        for (_, start, end), value in zip(self.sample_spans(), values):
            row[start:end] = value[: end - start]
        return row[None]

    def per_sample(self, values: torch.Tensor) -> torch.Tensor:
        """[b, s] values in this batch's layout -> [samples, s], sample k's tokens from position 0
        and zeros after them, as a padded batch holds them (a padded batch's values as they are).
        Gathered on the device without a host read; the gradient flows back to the packed row."""
        if not self.packed:
            return values
        n, length = self.num_samples, values.shape[1]
        starts = self.cu_seqlens[:n].long()
        lengths = self.cu_seqlens[1 : n + 1].long() - starts
        offsets = torch.arange(length, device=values.device)
        index = (starts[:, None] + offsets).clamp(max=length - 1)
        return torch.where(offsets < lengths[:, None], values[0][index], torch.zeros((), dtype=values.dtype,
                                                                                   device=values.device))

    def to(self, device) -> "OmniBatch":
        """This batch on ``device``. To a GPU the tensors go through pinned host memory with
        non-blocking copies, so the transfer overlaps the work already queued on the GPU."""
        device = torch.device(device)
        to_gpu = device.type == "cuda"

        def move(value: torch.Tensor) -> torch.Tensor:
            if to_gpu and value.device.type == "cpu":
                return value.pin_memory().to(device, non_blocking=True)
            return value.to(device)

        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{name: move(value) for name, value in tensors.items() if isinstance(value, torch.Tensor)})


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def collate_media(samples: Sequence[ProcessedSample]) -> dict[str, torch.Tensor | None]:
    images = [s.media.image for s in samples if s.media.image is not None]
    videos = [s.media.video for s in samples if s.media.video is not None]
    audios = [s.media.audio_features for s in samples if s.media.audio_features is not None]
    media: dict[str, torch.Tensor | None] = {"pixel_values": None, "image_grid_thw": None,
                                             "pixel_values_videos": None, "video_grid_thw": None,
                                             "video_second_per_grid": None, "input_features": None,
                                             "feature_attention_mask": None}
    if images:
        media["pixel_values"] = torch.cat([i.pixel_values for i in images])
        media["image_grid_thw"] = torch.tensor([i.grid_thw for i in images], dtype=torch.long)
    if videos:
        media["pixel_values_videos"] = torch.cat([v.pixel_values for v in videos])
        media["video_grid_thw"] = torch.tensor([v.grid_thw for v in videos], dtype=torch.long)
        media["video_second_per_grid"] = torch.tensor([v.second_per_grid for v in videos], dtype=torch.float32)
    if audios:
        longest = max(a.shape[1] for a in audios)
        features = torch.zeros(len(audios), audios[0].shape[0], longest)
        mask = torch.zeros(len(audios), longest, dtype=torch.long)
        for row, audio in enumerate(audios):
            features[row, :, : audio.shape[1]] = audio
            mask[row, : audio.shape[1]] = 1
        media["input_features"], media["feature_attention_mask"] = features, mask
    return media


def _common(samples: Sequence[ProcessedSample]) -> dict:
    if not samples:
        raise ValueError("cannot batch zero samples")
    return {"rope_deltas": torch.tensor([s.rope_delta for s in samples], dtype=torch.long),
            "sample_ids": [s.sample_id for s in samples],
            "prompt_lengths": [s.prompt_length for s in samples],
            **collate_media(samples)}


def pad(samples: Sequence[ProcessedSample], pad_to_multiple_of: int = 1) -> OmniBatch:
    """Right-padded [b, s] batch; padding has loss mask 0, attention mask False, position 1."""
    length = _round_up(max(s.length for s in samples), pad_to_multiple_of)
    batch = len(samples)
    tokens = torch.full((batch, length), samples[0].pad_token_id, dtype=torch.long)
    labels = torch.full((batch, length), samples[0].pad_token_id, dtype=torch.long)
    loss_mask = torch.zeros(batch, length)
    positions = torch.full((3, batch, length), PAD_POSITION, dtype=torch.long)
    attention = torch.zeros(batch, length, dtype=torch.bool)
    for row, sample in enumerate(samples):
        n = sample.length
        tokens[row, :n], labels[row, :n], loss_mask[row, :n] = sample.input_ids, sample.labels, sample.loss_mask
        positions[:, row, :n] = sample.position_ids
        attention[row, :n] = True
    return OmniBatch(tokens=tokens, labels=labels, loss_mask=loss_mask, position_ids=positions,
                     attention_mask=attention, padding_mask=None if attention.all() else ~attention,
                     **_common(samples))


def pack_rows(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """Sample indices of each packed row of ``row_length`` tokens, first fit in sample order: a
    sample goes into the first row with room for it, so every row lists its samples in order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        if length > row_length:
            raise ValueError(f"sample {index} is {length} tokens long, longer than a packed row of {row_length}")
        row = next((r for r, free in enumerate(room) if length <= free), None)
        if row is None:
            rows.append([])
            room.append(row_length)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= length
    return rows


def pack(samples: Sequence[ProcessedSample], pad_to_multiple_of: int = 1) -> OmniBatch:
    """One [1, total] row; ``cu_seqlens`` marks sample boundaries. Rounding the total up to
    ``pad_to_multiple_of`` adds a final padding segment of its own (never attended by samples)."""
    lengths = [s.length for s in samples]
    total = sum(lengths)
    padding = _round_up(total, pad_to_multiple_of) - total
    pad_id = samples[0].pad_token_id
    tokens = torch.cat([s.input_ids for s in samples] + [torch.full((padding,), pad_id, dtype=torch.long)])
    labels = torch.cat([s.labels for s in samples] + [torch.full((padding,), pad_id, dtype=torch.long)])
    loss_mask = torch.cat([s.loss_mask for s in samples] + [torch.zeros(padding)])
    positions = torch.cat([s.position_ids for s in samples]
                          + [torch.arange(padding).view(1, -1).expand(3, -1)], 1)
    attention = torch.cat([torch.ones(total, dtype=torch.bool), torch.zeros(padding, dtype=torch.bool)])
    segments = lengths + ([padding] if padding else [])
    cu_seqlens = torch.tensor([0] + segments, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return OmniBatch(tokens=tokens[None], labels=labels[None], loss_mask=loss_mask[None],
                     position_ids=positions[:, None], attention_mask=attention[None],
                     cu_seqlens=cu_seqlens, max_seqlen=max(segments),
                     padding_mask=~attention[None] if padding else None, **_common(samples))
