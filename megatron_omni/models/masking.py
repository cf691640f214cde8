"""Modality masking: zero a random fraction of one modality's input features before its encoder.

The Omni-Perception loss compares the policy's forward on the full input with forwards in which
the video or the audio is degraded. Only feature values change: token positions, grids and
placeholder counts stay the same, so the full and masked forwards align token by token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_omni.text.modalities import MODALITIES, Modality


@dataclass(frozen=True)
class ModalityMask:
    """Zero ``ratio`` of the elements of ``modality``'s input features (pixel values or mel bins).

    The draw comes from a private generator seeded with ``seed``: the same seed gives the same
    mask, and the global RNG (dropout, sampling) is left untouched.
    """

    modality: Modality
    ratio: float = 0.9
    seed: int = 0

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"ModalityMask.modality must be one of {MODALITIES}, got {self.modality!r}")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ModalityMask.ratio must lie in [0, 1], got {self.ratio}")


def mask_features(features: torch.Tensor, mask: ModalityMask | None, modality: Modality) -> torch.Tensor:
    """``features`` with ``mask.ratio`` of its elements zeroed when ``mask`` targets ``modality``."""
    if mask is None or mask.modality != modality or mask.ratio == 0.0:
        return features
    generator = torch.Generator(device=features.device)
    generator.manual_seed(mask.seed)
    drop = torch.rand(features.shape, generator=generator, device=features.device) < mask.ratio
    return features.masked_fill(drop, 0)
