"""Map-style data set of processed samples and the collator that turns them into micro-batches."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from megatron_omni.data.batch import OmniBatch, SkippedSample, pack, pad
from megatron_omni.data.errors import DataError
from megatron_omni.data.manifest import OmniSample, load_manifest
from megatron_omni.data.media import SampleMedia, load_media
from megatron_omni.data.processor import OmniProcessor, ProcessedSample


class OmniDataset(torch.utils.data.Dataset):
    """``dataset[i]`` decodes and processes sample ``i``.

    With ``skip_bad_samples`` a sample whose media or content is bad comes back as a
    ``SkippedSample`` (the collator drops and reports it); otherwise the error propagates.
    Training runs and evaluation load through ``data.skips.SampleSource`` instead, which also
    checks the run's labels and length budget and replaces or leaves out bad samples.
    ``with_target`` adds the SFT answer; ``privileged`` adds the rationale to the prompt (the
    OmniOPSD teacher's view) of that share of the samples: True / 1.0 all of them, a fraction in
    between a fixed subset (by sample id, the same in every epoch and on every rank).
    """

    def __init__(self, samples: Sequence[OmniSample], processor: OmniProcessor, *, with_target: bool = True,
                 privileged: float = 0.0):
        self.samples = list(samples)
        self.processor = processor
        self.with_target = with_target
        self.privileged = float(privileged)

    def is_privileged(self, sample: OmniSample) -> bool:
        return zlib.crc32(sample.id.encode()) / 2**32 < self.privileged

    @classmethod
    def from_manifest(cls, path: str | Path, processor: OmniProcessor, **kwargs) -> "OmniDataset":
        return cls(load_manifest(path), processor, **kwargs)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> ProcessedSample:
        """Sample ``index`` decoded and processed; a `DataError` names the sample."""
        sample = self.samples[index]
        media = load_media(sample, self.processor.cfg)
        return self.processor.process(sample, media, with_target=self.with_target, privileged=self.is_privileged(sample))

    def __getitem__(self, index: int) -> ProcessedSample | SkippedSample:
        try:
            return self.load(index)
        except DataError as exc:
            if not self.processor.cfg.skip_bad_samples:
                raise
            return SkippedSample(index=index, sample_id=self.samples[index].id, reason=str(exc))


@dataclass
class Collator:
    """Items of one micro-batch -> ``OmniBatch`` (packed or padded), dropping skipped samples.

    When every sample of a micro-batch was skipped, the batch holds one padding token with no loss,
    so every rank still runs the same number of micro-batches in the step.
    """

    pad_token_id: int
    packing: bool = False
    pad_to_multiple_of: int = 1

    def __call__(self, items: Sequence[ProcessedSample | SkippedSample]) -> OmniBatch:
        samples = [item for item in items if isinstance(item, ProcessedSample)]
        skipped = [item for item in items if isinstance(item, SkippedSample)]
        layout = pack if self.packing else pad
        if samples:
            return replace(layout(samples, self.pad_to_multiple_of), skipped=skipped)
        filler = ProcessedSample(
            sample_id="", input_ids=torch.tensor([self.pad_token_id]), labels=torch.tensor([self.pad_token_id]),
            loss_mask=torch.zeros(1), position_ids=torch.zeros(3, 1, dtype=torch.long), prompt_length=1,
            pad_token_id=self.pad_token_id, media=SampleMedia(video=None, audio_features=None, audio_in_video=False),
        )
        batch = layout([filler], self.pad_to_multiple_of)
        return replace(batch, sample_ids=[], prompt_lengths=[], rope_deltas=batch.rope_deltas[:0], skipped=skipped)
