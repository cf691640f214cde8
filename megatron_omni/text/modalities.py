"""The evidence modalities: the masked-modality forwards, cue categories and perception metrics
all name them the same way."""
from __future__ import annotations

from typing import Literal

Modality = Literal["visual", "audio"]
MODALITIES: tuple[Modality, ...] = ("visual", "audio")
