"""Errors of the data pipeline. Each message names the file (and line or field) at fault."""
from __future__ import annotations


class DataError(Exception):
    """Base class: something in the data, not in the code, is wrong."""


class ManifestError(DataError, ValueError):
    """A manifest line is not valid JSON or a field is missing or has the wrong type."""


class MediaError(DataError):
    """A media file is missing, truncated or cannot be decoded."""

    def __init__(self, path, reason: str, sample: str | None = None):
        self.path = str(path)
        self.reason = reason
        self.sample = sample
        where = f" (sample {sample})" if sample else ""
        super().__init__(f"{self.path}{where}: {reason}")

    def __reduce__(self):
        # Pickled with its own arguments: a worker process (data.num_workers) hands it to the trainer.
        return type(self), (self.path, self.reason, self.sample)


class SampleTooLongError(DataError):
    """A processed sample has more tokens than the configured maximum sequence length."""


class MissingLabelError(DataError):
    """A sample lacks a field that the algorithm reads (the SFT target, the reward's labels, the rationale)."""


class TooManySkippedError(DataError):
    """With data.skip_bad_samples, too many samples were skipped for the run to go on."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message: decoder errors carry long native stack dumps."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
