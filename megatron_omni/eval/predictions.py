"""Prediction files: reading released/third-party predictions, and the resumable JSONL that a
generation run appends to.

Readable formats, all giving {sample name: emotion words}:
- `.npz` with arrays `filenames` and `fileitems` (AffectGPT's releases);
- `.csv` with a `name` (or `id`) column and an `openset`/`prediction`/`answer` column of word
  lists, or an `output` column of raw model text;
- `.jsonl` with `id` (or `name`) and `answer` (a word list, as written by `PredictionsJsonl`),
  `openset`/`prediction`, or raw `output` text.
Raw text goes through the given extractor (by default the `<answer>` parser).
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from megatron_omni.eval.answers import AnswerWordExtractor
from megatron_omni.text.jsonl import read_jsonl
from megatron_omni.text.wordlists import parse_emotion_words

WordExtractor = Callable[[str], list[str]]
_NAME_FIELDS = ("id", "name")
_WORD_FIELDS = ("answer", "openset", "prediction")
_RAW_FIELD = "output"


class PredictionFileError(ValueError):
    """A predictions file is missing or malformed."""


def _words_of(record: dict, extract: WordExtractor, where: str) -> list[str]:
    for field in _WORD_FIELDS:
        if field in record and record[field] is not None:
            return parse_emotion_words(record[field])
    if _RAW_FIELD in record:
        return extract(str(record[_RAW_FIELD] or ""))
    raise PredictionFileError(f"{where}: no prediction field (one of {_WORD_FIELDS + (_RAW_FIELD,)})")


def _name_of(record: dict, where: str) -> str:
    for field in _NAME_FIELDS:
        if record.get(field) not in (None, ""):
            return str(record[field])
    raise PredictionFileError(f"{where}: no sample name field (one of {_NAME_FIELDS})")


def load_predictions(path: str | Path, extract: WordExtractor | None = None) -> dict[str, list[str]]:
    path = Path(path)
    extract = extract or AnswerWordExtractor()
    if not path.is_file():
        raise PredictionFileError(f"predictions file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=True) as archive:
            missing = [k for k in ("filenames", "fileitems") if k not in archive.files]
            if missing:
                raise PredictionFileError(f"{path}: missing array(s) {missing}; has {archive.files}")
            names, items = archive["filenames"].tolist(), archive["fileitems"].tolist()
        if len(names) != len(items):
            raise PredictionFileError(f"{path}: {len(names)} filenames but {len(items)} fileitems")
        return {str(name): parse_emotion_words(item) for name, item in zip(names, items)}
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            return {_name_of(row, f"{path}, line {reader.line_num}"): _words_of(row, extract, f"{path}, line {reader.line_num}")
                    for row in reader}
    if suffix in (".jsonl", ".json"):
        return {_name_of(record, where): _words_of(record, extract, where)
                for where, record in read_jsonl(path, PredictionFileError)}
    raise PredictionFileError(f"{path}: unsupported predictions format {suffix!r} (use .npz, .csv or .jsonl)")


class PredictionsJsonl:
    """Append-only predictions file that a generation run can resume.

    Each batch is appended and fsync'ed, so an interrupted run loses at most the batch in flight.
    A last line cut short by a crash is removed on open, so the file stays valid JSONL.
    """

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        # Under a multi-rank generation every rank reads which samples are done; one writes.
        self.read_only = read_only
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_partial_last_line()

    def _drop_partial_last_line(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [record for _, record in read_jsonl(self.path, PredictionFileError)]

    def done_ids(self) -> set[str]:
        return {str(record["id"]) for record in self.records() if "id" in record}

    def append(self, records: Iterable[dict]) -> None:
        if self.read_only:
            return
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
