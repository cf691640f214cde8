"""Sentence splitting with character offsets, for cue matching and evidence-token spans."""
from __future__ import annotations

import re
from dataclasses import dataclass

# Clause boundaries: . ! ? , and newlines, plus the CJK full stop, exclamation, question mark and
# comma. Splitting at commas on purpose: one clause usually carries one cue ("furrowed brows,
# trembling voice").
_BOUNDARY = re.compile(r"[.!?,\n\u3002\uff01\uff1f\uff0c]+")


@dataclass(frozen=True)
class Sentence:
    text: str
    start: int  # offset of the first character in the source text
    end: int  # offset one past the last character: source[start:end] == text


def split_sentences(text: str) -> list[Sentence]:
    """Non-empty, whitespace-trimmed pieces of `text` between boundaries, with their offsets."""
    sentences = []
    position = 0
    for piece in _BOUNDARY.split(text) + [""]:
        stripped = piece.strip()
        if stripped:
            start = position + (len(piece) - len(piece.lstrip()))
            sentences.append(Sentence(stripped, start, start + len(stripped)))
        position += len(piece)
        boundary = _BOUNDARY.match(text, position)
        if boundary:
            position = boundary.end()
    return sentences
