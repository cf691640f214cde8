"""Sentence splitting with character offsets, for cue matching and evidence-token spans."""
from __future__ import annotations

import re
from dataclasses import dataclass

# Clause boundaries: . ! ? , and newlines, plus the CJK full stop, exclamation, question mark and
# comma. Splitting at commas on purpose: one clause usually carries one cue ("furrowed brows,
# trembling voice"). Without the commas, the pieces are whole sentences.
_CLAUSE_BOUNDARY = re.compile(r"[.!?,\n\u3002\uff01\uff1f\uff0c]+")
_SENTENCE_BOUNDARY = re.compile(r"[.!?\n\u3002\uff01\uff1f]+")


@dataclass(frozen=True)
class Sentence:
    text: str
    start: int  # offset of the first character in the source text
    end: int  # offset one past the last character: source[start:end] == text


def split_sentences(text: str, at_commas: bool = True) -> list[Sentence]:
    """Non-empty, whitespace-trimmed pieces of `text` between boundaries, with their offsets."""
    boundary_pattern = _CLAUSE_BOUNDARY if at_commas else _SENTENCE_BOUNDARY
    sentences = []
    position = 0
    for piece in boundary_pattern.split(text) + [""]:
        stripped = piece.strip()
        if stripped:
            start = position + (len(piece) - len(piece.lstrip()))
            sentences.append(Sentence(stripped, start, start + len(stripped)))
        position += len(piece)
        boundary = boundary_pattern.match(text, position)
        if boundary:
            position = boundary.end()
    return sentences
