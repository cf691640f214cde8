"""Evidence tokens: completion sentences classified as visual/audio mapped to exact token spans.

The reward module classifies sentences by character offsets into the decoded completion. Here the
completion's tokens get character offsets by decoding growing prefixes (exact for any tokenizer,
byte-level BPE included, where per-token decoding would split multi-byte characters), and a token
is evidence of a modality when its characters overlap a sentence of that modality.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_omni.rewards.cue_recovery import EvidenceSentence
from megatron_omni.text.modalities import MODALITIES


def token_char_spans(tokenizer, token_ids: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) character offsets of each token inside ``tokenizer.decode(token_ids)``."""
    spans, previous = [], 0
    for i in range(len(token_ids)):
        end = len(tokenizer.decode(list(token_ids[: i + 1]), skip_special_tokens=False))
        spans.append((previous, max(end, previous)))
        previous = max(end, previous)
    return spans


def evidence_token_masks(spans: Sequence[tuple[int, int]], sentences: Sequence[EvidenceSentence]) -> dict[str, torch.Tensor]:
    """modality -> bool [num_tokens]: tokens overlapping a sentence classified as that modality."""
    masks = {m: torch.zeros(len(spans), dtype=torch.bool) for m in MODALITIES}
    for sentence in sentences:
        if sentence.modality not in masks:
            continue
        for i, (start, end) in enumerate(spans):
            if start < sentence.end and end > sentence.start and end > start:
                masks[sentence.modality][i] = True
    return masks
