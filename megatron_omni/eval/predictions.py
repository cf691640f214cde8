"""Prediction files: reading released/third-party predictions, and the resumable JSONL that a
generation run appends to.

Readable formats, all giving {sample name: prediction value}:
- `.npz` with arrays `filenames` and `fileitems` (AffectGPT's releases);
- `.csv` with a `name` (or `id`) column and an `output` column of raw model text, or an
  `openset`/`prediction`/`answer` column of word lists;
- `.jsonl` with `id` (or `name`) and raw `output` text, or `answer` (a word list),
  `openset`/`prediction`.
Raw `output` text wins when a record has it (a file written by a generation run holds both): it
goes through the given answer-text extractor (by default the `<answer>` block), so the file is
scored under the reading and the parser chosen now. A value is a string or a list; a word reading
(`megatron_omni.eval.parsing`) turns it into words.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from megatron_omni.eval.answers import tag_answer
from megatron_omni.eval.parsing import WordReading, official_words
from megatron_omni.text.jsonl import drop_partial_last_line, read_jsonl, utf8_text

AnswerTextExtractor = Callable[[str], str]
_NAME_FIELDS = ("id", "name")
_WORD_FIELDS = ("answer", "openset", "prediction")
_RAW_FIELD = "output"


class PredictionFileError(ValueError):
    """A predictions file is missing or malformed."""


def _value_of(record: dict, extract: AnswerTextExtractor, where: str) -> object:
    if record.get(_RAW_FIELD) is not None:
        return extract(str(record[_RAW_FIELD]))
    for field in _WORD_FIELDS:
        if field in record and record[field] is not None:
            return record[field]
    if _RAW_FIELD in record:  # an explicit null output: nothing was answered
        return ""
    raise PredictionFileError(f"{where}: no prediction field (one of {(_RAW_FIELD,) + _WORD_FIELDS})")


def _name_of(record: dict, where: str) -> str:
    for field in _NAME_FIELDS:
        if record.get(field) not in (None, ""):
            return str(record[field])
    raise PredictionFileError(f"{where}: no sample name field (one of {_NAME_FIELDS})")


def _unique(pairs: Iterable[tuple[str, str, object]], last_wins: bool) -> dict[str, object]:
    """{name: value} of (where, name, value); a name given twice is an error unless ``last_wins``."""
    out: dict[str, object] = {}
    first: dict[str, str] = {}
    for where, name, value in pairs:
        if name in first and not last_wins:
            raise PredictionFileError(f"{where}: sample {name!r} again (first at {first[name]}); "
                                      f"--last-wins keeps the last prediction of each name")
        first.setdefault(name, where)
        out[name] = value
    return out


def load_prediction_values(path: str | Path, extract: AnswerTextExtractor | None = None,
                           last_wins: bool = False) -> dict[str, object]:
    """{sample name: prediction value (a string or a list), not yet read as words}."""
    path = Path(path)
    extract = extract or tag_answer
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
        return _unique(((f"{path}, entry {i}", str(name), item) for i, (name, item) in enumerate(zip(names, items))),
                       last_wins)
    return _unique(((where, _name_of(record, where), _value_of(record, extract, where))
                    for where, record in _records(path)), last_wins)


def _records(path: Path):
    """(where, record) of a .csv or .jsonl predictions file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(utf8_text(path, PredictionFileError), newline=""))
        return ((f"{path}, line {reader.line_num}", row) for row in reader)
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path, PredictionFileError)
    raise PredictionFileError(f"{path}: unsupported predictions format {suffix!r} (use .npz, .csv or .jsonl)")


def load_outputs(path: str | Path) -> dict[str, str]:
    """{sample name: raw output text} of a .csv / .jsonl file whose records carry `output` (the
    model's full text, which the perception and step-judged benchmarks read); the last of a name wins."""
    path = Path(path)
    if not path.is_file():
        raise PredictionFileError(f"outputs file not found: {path}")
    outputs = {}
    for where, record in _records(path):
        if record.get(_RAW_FIELD) is None:
            raise PredictionFileError(f"{where}: no raw '{_RAW_FIELD}' text (the model's full output is needed)")
        outputs[_name_of(record, where)] = str(record[_RAW_FIELD])
    return outputs


def load_predictions(path: str | Path, extract: AnswerTextExtractor | None = None, last_wins: bool = False,
                     read: WordReading = official_words) -> dict[str, list[str]]:
    """{sample name: emotion words}; a name that appears twice is an error unless ``last_wins``."""
    return {name: read(value) for name, value in load_prediction_values(path, extract, last_wins).items()}


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
            drop_partial_last_line(self.path)

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
