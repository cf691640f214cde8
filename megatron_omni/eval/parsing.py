"""The two readings of a prediction (or label) value as a list of emotion words.

- `official_words` (the default of every benchmark path): the official MER-UniBench reading,
  `string_to_list` (MERTools, `MER2025/MER2025_Track23/toolkit/utils/functions.py`) followed by the
  caller's `item.lower().strip()` (`my_affectgpt/evaluation/wheel.py`): one leading `[` and one
  trailing `]` are dropped when they are the first and the last character, the rest is split on
  quote and comma characters, items are stripped and lower-cased, empty items dropped. Nothing
  else is separated or trimmed: `happy; sad` is one word, `happy.` keeps its period, and so the
  lexicon finds them only where the official lookup would (see `exact_words`).
- `lenient_words` (`--lenient-parsing`): `megatron_omni.text.wordlists.parse_emotion_words`, which
  also splits on semicolons, newlines and CJK punctuation, drops nested brackets and trims edge
  punctuation. It reads what a person would see and scores higher on malformed outputs.

Both return each word once, in first-occurrence order (the official scoring compares sets).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

from megatron_omni.text.wordlists import normalize_word, parse_emotion_words

WordReading = Callable[[object], list[str]]

_OFFICIAL_SEPARATORS = re.compile("['\",]")


def _unique(words: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(word for word in words if word))


def official_words(value: object) -> list[str]:
    """The official `string_to_list` + `lower().strip()` reading of a string or a list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, (list, tuple)):  # the official code takes a list as it is
        return _unique(str(item).lower().strip() for item in value)
    text = str(value)
    if text.startswith("["):
        text = text[1:]
    if text.endswith("]"):  # the official code raises IndexError on "[" alone; here it reads as []
        text = text[:-1]
    return _unique(item.strip().lower().strip() for item in _OFFICIAL_SEPARATORS.split(text))


lenient_words: WordReading = parse_emotion_words

READINGS: dict[str, WordReading] = {"official": official_words, "lenient": lenient_words}


def exact_words(words: Iterable[str]) -> list[str]:
    """The words that the official lexicon lookup can find: those already in the normalised form
    the lexicon keys have. The lexicon itself normalises what it is asked (`happy.` -> `happy`);
    the official code looks words up verbatim, so `happy.` maps to nothing there."""
    return [word for word in words if word == normalize_word(word)]


def readings_differ(value: object) -> bool:
    """Whether the official and the lenient reading give different word sets for this value."""
    return set(exact_words(official_words(value))) != set(lenient_words(value))
