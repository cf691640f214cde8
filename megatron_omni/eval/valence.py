"""Predicted emotion words -> one sentiment valence (+1 positive, 0 neutral, -1 negative).

The official sentiment protocol asks an LLM to choose positive/negative/neutral for the predicted
words. Two interchangeable mappers implement the step:
- `LexiconValence` (default, offline): every word votes with the valence of its level-1 classes
  on the emotion wheels; explicit polarity words ("positive", "negative emotion") vote directly.
- `LLMValence`: the official-style question to an OpenAI-compatible endpoint.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Protocol

from megatron_omni.eval.llm_endpoint import ChatEndpoint
from megatron_omni.text.lexicon import EmotionWheelLexicon
from megatron_omni.text.wordlists import normalize_word

# Valence of every level-1 class of the five MER wheels. "surprised" is neither.
LEVEL1_VALENCE: dict[str, int] = {
    "happy": 1, "joy": 1, "joyful": 1, "peaceful": 1, "powerful": 1, "genius": 1,
    "mad": -1, "angry": -1, "anger": -1, "disgusted": -1, "disgust": -1, "sad": -1,
    "scared": -1, "fearful": -1, "fear": -1, "bad": -1,
    "surprised": 0,
}
_POLARITY = (("positive", 1), ("negative", -1), ("neutral", 0))


class ValenceMapper(Protocol):
    def __call__(self, samples: Sequence[Sequence[str]]) -> list[int]:
        """One valence per sample, from that sample's predicted words."""


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


class LexiconValence:
    """Sign of the summed word votes; a word's vote is the sign of its wheel classes' valences."""

    def __init__(self, lexicon: EmotionWheelLexicon, class_valence: Mapping[str, int] = LEVEL1_VALENCE):
        self.lexicon = lexicon
        self.class_valence = dict(class_valence)

    def word_valence(self, word: str) -> int:
        word = normalize_word(word)
        for marker, valence in _POLARITY:
            if re.search(rf"\b{marker}\b", word):
                return valence
        classes = [self.lexicon.map_word(word, wheel, "level1") for wheel in self.lexicon.wheel_names]
        return _sign(sum(self.class_valence.get(c, 0) for c in classes if c is not None))

    def __call__(self, samples: Sequence[Sequence[str]]) -> list[int]:
        return [_sign(sum(self.word_valence(word) for word in words)) for words in samples]


VALENCE_PROMPT = (
    "You are an expert in emotion analysis. Given the emotion words describing a person, choose the "
    "overall sentiment from [positive, negative, neutral]. Reply with one of those three words only.\n"
    "Example. Input: [joyful, relaxed]; Output: positive\n"
    "Input: [{words}]; Output:"
)


def parse_valence_reply(reply: str) -> int:
    """The first of positive/negative/neutral in the reply; anything else counts as neutral."""
    found = re.search(r"\b(positive|negative|neutral)\b", reply.lower())
    return {"positive": 1, "negative": -1}.get(found.group(1), 0) if found else 0


class LLMValence:
    def __init__(self, endpoint: ChatEndpoint):
        self.endpoint = endpoint

    def __call__(self, samples: Sequence[Sequence[str]]) -> list[int]:
        # An empty prediction has no sentiment to ask about: neutral, without a call.
        return [parse_valence_reply(self.endpoint.complete(VALENCE_PROMPT.format(words=", ".join(words))))
                if words else 0 for words in samples]
