"""A generated plain-text corpus for decoder-only runs: byte tokens, fixed-length windows.

Deterministic by seed; used by the language-decoder training job and its tests. Sentences
describe emotional scenes in a small grammar, so a tiny model can visibly learn it.
"""
from __future__ import annotations

import random

import torch

EOS = 256
VOCAB_SIZE = 257  # bytes + end of text

_SUBJECTS = ["the woman", "the man", "the speaker", "the girl", "the old man", "the actor"]
_FACES = {
    "happy": ["smiles widely", "laughs", "raises her cheeks"],
    "sad": ["frowns", "looks down", "lowers his eyes"],
    "angry": ["scowls", "clenches the jaw", "narrows the eyes"],
    "surprised": ["raises the brows", "opens the mouth", "stares"],
}
_VOICES = {
    "happy": ["a bright rising voice", "a quick cheerful tone"],
    "sad": ["a slow quiet voice", "a falling trembling tone"],
    "angry": ["a loud harsh voice", "a sharp fast tone"],
    "surprised": ["a high sudden voice", "a rising gasp"],
}


def generate_sentences(num: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    sentences = []
    for _ in range(num):
        emotion = rng.choice(sorted(_FACES))
        sentences.append(
            f"{rng.choice(_SUBJECTS)} {rng.choice(_FACES[emotion])} and speaks with "
            f"{rng.choice(_VOICES[emotion])}, so the emotion is {emotion}."
        )
    return sentences


class TextWindows:
    """Consecutive windows of ``seq_length + 1`` byte tokens over the concatenated corpus."""

    def __init__(self, sentences: list[str], seq_length: int):
        stream: list[int] = []
        for sentence in sentences:
            stream.extend(sentence.encode("utf-8"))
            stream.append(EOS)
        self.tokens = torch.tensor(stream, dtype=torch.long)
        self.seq_length = seq_length
        self.count = (len(stream) - 1) // seq_length
        if self.count == 0:
            raise ValueError(f"corpus of {len(stream)} tokens is shorter than seq_length {seq_length}")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = index * self.seq_length
        window = self.tokens[start : start + self.seq_length + 1]
        return {"tokens": window[:-1], "labels": window[1:], "loss_mask": torch.ones(self.seq_length)}
