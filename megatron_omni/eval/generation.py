"""Batched, resumable generation of benchmark predictions through a `generate` callable.

The model side supplies `generate(samples, mask_modality=None) -> list[str]` (one output text per
sample); this module decides what still needs generating and records the outputs.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from megatron_omni.eval.answers import tag_answer
from megatron_omni.eval.parsing import official_words
from megatron_omni.eval.predictions import PredictionsJsonl


class GenerateFn(Protocol):
    def __call__(self, samples: list[dict], mask_modality: str | None = None) -> list[str | None]:
        """One output text per sample (None: the sample was skipped, its media could not be
        used); `mask_modality` ('visual' or 'audio') hides that input."""


@dataclass(frozen=True)
class GenerationReport:
    generated: int
    skipped: int  # already present in the predictions file
    unusable: int = 0  # left out under data.skip_bad_samples (no prediction is written)


def generate_predictions(samples: Sequence[dict], generate: GenerateFn, writer: PredictionsJsonl,
                         batch_size: int = 8, extract: Callable[[str], list[str]] | None = None,
                         progress: bool = False, mask_modality: str | None = None,
                         desc: str = "generate") -> GenerationReport:
    """Generate outputs for the samples whose `id` is not yet in `writer`, appending per batch.

    Each appended record is {id, output, answer}: the raw text and its emotion words (by default
    the `<answer>` block read the official way; scoring reads `output` again). `mask_modality`
    is passed to `generate` (the MEP-Bench counterfactual runs).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    extract = extract or (lambda text: official_words(tag_answer(text)))
    for position, sample in enumerate(samples):
        if "id" not in sample:
            raise ValueError(f"sample {position} has no 'id' field")
    done = writer.done_ids()
    pending = [s for s in samples if str(s["id"]) not in done]
    batches = [pending[i:i + batch_size] for i in range(0, len(pending), batch_size)]
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=desc, unit="batch")
    unusable = 0
    for batch in batches:
        outputs = generate(list(batch), mask_modality=mask_modality)
        if len(outputs) != len(batch):
            raise ValueError(f"generate returned {len(outputs)} outputs for a batch of {len(batch)} samples")
        unusable += outputs.count(None)
        writer.append({"id": str(s["id"]), "output": text, "answer": extract(text)}
                      for s, text in zip(batch, outputs) if text is not None)
    return GenerationReport(generated=len(pending) - unusable, skipped=len(samples) - len(pending), unusable=unusable)
