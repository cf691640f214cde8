"""Cue recovery: how well the reasoning sentences cover the ground-truth cues, and which sentences
are visual or audio evidence.

All embeddings are L2-normalised, so a dot product is a cosine.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def cue_scores(sentences: torch.Tensor, cues: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """s_j = relu(max_i cos(e_i, g_j) - tau) / (1 - tau) for each cue row g_j; 0 when no sentence."""
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"tau must be in [0, 1), got {tau}")
    if cues.shape[0] == 0:
        return torch.zeros(0)
    if sentences.shape[0] == 0:
        return torch.zeros(cues.shape[0])
    best = (sentences @ cues.T).max(dim=0).values
    return torch.relu(best - tau) / (1.0 - tau)


def recovery_score(sentences: torch.Tensor, cue_groups: Sequence[torch.Tensor], tau: float = 0.5) -> float:
    """Mean over the groups that have cues of the mean cue score; 0 when no group has a cue."""
    means = [cue_scores(sentences, group, tau).mean().item() for group in cue_groups if group.shape[0] > 0]
    return sum(means) / len(means) if means else 0.0


@dataclass(frozen=True)
class EvidenceSentence:
    start: int  # character offsets in the completion
    end: int
    modality: str  # "visual", "audio" or "neutral"


def classify_sentences(sentences: torch.Tensor, visual_cues: torch.Tensor, audio_cues: torch.Tensor,
                       threshold: float = 0.5) -> list[str]:
    """Visual if the best cosine to a visual cue is > threshold and above the audio one; audio
    symmetrically; otherwise neutral. A modality without cues never wins."""
    count = sentences.shape[0]
    best = {}
    for name, cues in (("visual", visual_cues), ("audio", audio_cues)):
        best[name] = ((sentences @ cues.T).max(dim=1).values if cues.shape[0] and count
                      else torch.full((count,), float("-inf")))
    labels = []
    for v, a in zip(best["visual"].tolist(), best["audio"].tolist()):
        labels.append("visual" if v > threshold and v > a else "audio" if a > threshold and a > v else "neutral")
    return labels
