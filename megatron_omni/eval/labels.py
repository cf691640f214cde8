"""Ground-truth label loaders for the released MER-UniBench label files and for JSONL manifests.

Every loader returns {sample name: label}: an emotion word (basic-emotion sets), a float valence
(sentiment sets) or a list of emotion words (open-set, read the official way, as the official
code reads its ground truth). Errors name the file, key and field.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from megatron_omni.eval.parsing import official_words
from megatron_omni.text.jsonl import read_jsonl, utf8_text

# Index -> class name of the integer-coded releases (MELD label.npz, IEMOCAP label_4way.npz).
MELD_CLASSES = ("anger", "joy", "sadness", "neutral", "disgust", "fear", "surprise")
IEMOCAP_FOUR_CLASSES = ("happy", "sad", "neutral", "anger")
IEMOCAP_TEST_SESSION = 5


class LabelFileError(ValueError):
    """A label file is missing or does not have the expected structure."""


def load_npz_corpus(path: str | Path, corpus: str) -> dict[str, dict]:
    """The {name: {field: value}} dictionary stored under key `corpus` of a label .npz."""
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"label file not found: {path}")
    with np.load(path, allow_pickle=True) as archive:
        if corpus not in archive.files:
            raise LabelFileError(f"{path}: no '{corpus}' entry; entries: {archive.files}")
        table = archive[corpus].tolist()
    if not isinstance(table, dict):
        raise LabelFileError(f"{path}: '{corpus}' holds {type(table).__name__}, expected a dict of samples")
    return table


def _field(table: dict[str, dict], name: str, field: str, path: Path, corpus: str) -> object:
    record = table[name]
    if not isinstance(record, dict) or field not in record:
        raise LabelFileError(f"{path}: sample {name!r} of '{corpus}' has no '{field}' field")
    return record[field]


def _emotion_name(value: object, classes: tuple[str, ...] | None, where: str) -> str:
    if isinstance(value, str):
        return value
    if classes is None:
        raise LabelFileError(f"{where}: integer label {value!r} but no class list for this data set")
    index = int(value)
    if not 0 <= index < len(classes):
        raise LabelFileError(f"{where}: label index {index} outside the {len(classes)} classes {classes}")
    return classes[index]


def load_emotion_labels(path: str | Path, corpus: str = "test1_corpus",
                        classes: tuple[str, ...] | None = None) -> dict[str, str]:
    """Basic-emotion labels (`emo` field: a word, or an index into `classes`)."""
    path = Path(path)
    table = load_npz_corpus(path, corpus)
    return {name: _emotion_name(_field(table, name, "emo", path, corpus), classes, f"{path}: sample {name!r}")
            for name in table}


def load_iemocap_four(path: str | Path) -> dict[str, str]:
    """IEMOCAP four-class test set: session 5 of `whole_corpus` (names 'Ses05...')."""
    path = Path(path)
    table = load_npz_corpus(path, "whole_corpus")
    labels = {}
    for name in table:
        if not (len(name) > 4 and name[4].isdigit()):
            raise LabelFileError(f"{path}: sample name {name!r} does not carry a session digit ('SesNN...')")
        if int(name[4]) == IEMOCAP_TEST_SESSION:
            emo = _field(table, name, "emo", path, "whole_corpus")
            labels[name] = _emotion_name(emo, IEMOCAP_FOUR_CLASSES, f"{path}: sample {name!r}")
    return labels


def load_valence_labels(path: str | Path, corpus: str = "test_corpus") -> dict[str, float]:
    """Sentiment labels (`val` field, a real valence)."""
    path = Path(path)
    table = load_npz_corpus(path, corpus)
    labels = {}
    for name in table:
        value = _field(table, name, "val", path, corpus)
        try:
            labels[name] = float(value)
        except (TypeError, ValueError):
            raise LabelFileError(f"{path}: sample {name!r} has non-numeric 'val' {value!r}") from None
    return labels


def load_openset_csv(path: str | Path) -> dict[str, list[str]]:
    """Open-set labels from a CSV with columns `name` and `openset` (e.g. ovlabel.csv)."""
    path = Path(path)
    reader = csv.DictReader(io.StringIO(utf8_text(path, LabelFileError), newline=""))
    missing = [c for c in ("name", "openset") if c not in (reader.fieldnames or [])]
    if missing:
        raise LabelFileError(f"{path}: header lacks column(s) {missing}; found {reader.fieldnames}")
    return {row["name"]: official_words(row["openset"]) for row in reader}


MANIFEST_FIELDS = {"openset": "openset", "discrete": "emo", "sentiment": "val"}


def load_manifest_records(path: str | Path) -> list[dict]:
    """The JSON objects of a JSONL manifest, each required to carry an `id`."""
    return [record for _, record in read_jsonl(path, LabelFileError, required=("id",))]


def load_manifest_labels(path: str | Path, kind: str) -> dict[str, object]:
    """Labels from a JSONL manifest: `id` plus `openset` (list), `emo` (word) or `val` (number)."""
    if kind not in MANIFEST_FIELDS:
        raise ValueError(f"kind must be one of {sorted(MANIFEST_FIELDS)}, got {kind!r}")
    field = MANIFEST_FIELDS[kind]
    labels: dict[str, object] = {}
    for where, record in read_jsonl(path, LabelFileError, required=("id", field)):
        value = record[field]
        if kind == "openset" and not (isinstance(value, list) and all(isinstance(w, str) for w in value)):
            raise LabelFileError(f"{where}: 'openset' must be a list of strings")
        if kind == "sentiment" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise LabelFileError(f"{where}: 'val' must be a number, got {value!r}")
        if kind == "discrete" and not isinstance(value, str):
            raise LabelFileError(f"{where}: 'emo' must be a string, got {value!r}")
        labels[str(record["id"])] = official_words(value) if kind == "openset" else value
    return labels
