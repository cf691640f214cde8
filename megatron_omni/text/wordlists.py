"""Parsing of emotion-word lists as models and label files write them.

The official MER-UniBench code splits a string on quotes and commas after dropping one pair of
outer brackets. Model outputs are messier (semicolons, CJK punctuation, nested brackets, stray
periods, mixed case, repeated words), so this parser is a superset: on the official inputs it
yields the same words, and on messy ones it still yields the words a reader would see.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable

# Separators: the official ones (comma and both quote characters) plus semicolons, newlines,
# tabs, the CJK comma/semicolon/enumeration comma and typographic double quotes (a typographic
# apostrophe stays: lexicon entries such as "don’t care" contain it).
_SEPARATORS = re.compile(r"[,;\n\t'\"\uff0c\uff1b\u3001\u201c\u201d]")
_BRACKETS = re.compile(r"[\[\]{}\uff3b\uff3d]")
_EDGE_PUNCTUATION = " .:!?*`\u3002\uff1a\uff01\uff1f"
_WHITESPACE = re.compile(r"\s+")


def normalize_word(word: str) -> str:
    """Lower-case, single-spaced, without surrounding punctuation: the form the lexicon keys use."""
    return _WHITESPACE.sub(" ", word.lower()).strip(_EDGE_PUNCTUATION)


def parse_emotion_words(value: object) -> list[str]:
    """Words of a prediction or label: a string such as "[Happy; 'sad', sad]" or a sequence.

    Returns normalised words, first occurrence order, duplicates and empty items removed.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return _unique(word for item in value for word in parse_emotion_words(item))
    text = _BRACKETS.sub(" ", str(value))
    return _unique(normalize_word(item) for item in _SEPARATORS.split(text))


def _unique(words: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(word for word in words if word))
