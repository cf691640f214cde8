"""The JSONL manifest: one omni-modal emotion sample per line, validated into typed dataclasses.

A line follows the RL format of the OPPO reference code plus the fields this project adds::

    {"id": "clip_0001", "video": "video/clip_0001.mp4", "audio_path": "audio/clip_0001.wav",
     "subtitle": "...", "openset": ["happy", "joyful"], "description": "...",
     "extracted_clues": {"visual_clues": [...], "audio_clues": [...], "reasoning_emotions": [...]},
     "emo": "happy"}

``image`` is a still image file (PNG, JPEG, ... anything PIL reads), beside or instead of the
video. ``audio`` is accepted as another name for ``audio_path``. ``id`` falls back to the stem of
the media file name. Relative media paths resolve against the manifest's folder. Fields this schema
does not know (``path``, ``original_index``, ...) are kept in ``OmniSample.extra``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from megatron_omni.data.errors import ManifestError
from megatron_omni.text.jsonl import read_jsonl

CLUE_FIELDS = ("visual_clues", "audio_clues", "reasoning_emotions")
_KNOWN_FIELDS = {"id", "video", "image", "audio_path", "audio", "subtitle", "openset", "description",
                 "extracted_clues", "emo", "val"}


@dataclass(frozen=True)
class ExtractedClues:
    """Cues decomposed from the description: what was seen, what was heard, which emotions follow."""

    visual_clues: tuple[str, ...] = ()
    audio_clues: tuple[str, ...] = ()
    reasoning_emotions: tuple[str, ...] = ()

    def to_record(self) -> dict[str, list[str]]:
        return {name: list(getattr(self, name)) for name in CLUE_FIELDS}


@dataclass(frozen=True)
class OmniSample:
    id: str
    video: Path | None
    audio: Path | None
    subtitle: str = ""
    openset: tuple[str, ...] = ()
    description: str | None = None
    extracted_clues: ExtractedClues = field(default_factory=ExtractedClues)
    emo: str | None = None  # MER-UniBench basic-emotion label
    val: float | None = None  # MER-UniBench sentiment value
    source: str = ""  # "manifest.jsonl, line 12", for error messages
    extra: dict[str, Any] = field(default_factory=dict)
    image: Path | None = None

    @property
    def location(self) -> str:
        """Where the sample comes from, for messages: its manifest line, or its id if built in code."""
        return self.source or f"sample {self.id}"

    def to_record(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The JSON object of this sample; media paths inside ``relative_to`` are written relative to it."""

        def rel(path: Path | None) -> str | None:
            if path is None:
                return None
            inside = relative_to is not None and path.is_relative_to(relative_to)
            return str(path.relative_to(relative_to)) if inside else str(path)

        record: dict[str, Any] = {"id": self.id, "video": rel(self.video), "image": rel(self.image),
                                  "audio_path": rel(self.audio),
                                  "subtitle": self.subtitle, "openset": list(self.openset),
                                  "description": self.description,
                                  "extracted_clues": self.extracted_clues.to_record(),
                                  "emo": self.emo, "val": self.val, **self.extra}
        return {key: value for key, value in record.items() if value is not None}


class _LineReader:
    """Type checks for one manifest line; every error names file, line and field."""

    def __init__(self, record: dict, where: str):
        self.record = record
        self.where = where

    def fail(self, name: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.where}: field '{name}': {problem}")

    def string(self, name: str, required: bool = False) -> str | None:
        value = self.record.get(name)
        if value is None:
            if required:
                raise self.fail(name, "is required")
            return None
        if not isinstance(value, str):
            raise self.fail(name, f"expected a string, got {type(value).__name__} {value!r}")
        return value

    def words(self, name: str, value: Any = None) -> tuple[str, ...]:
        value = self.record.get(name) if value is None else value
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail(name, f"expected a list of strings, got {value!r}")
        return tuple(item.strip() for item in value if item.strip())

    def number(self, name: str) -> float | None:
        value = self.record.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)

    def clues(self) -> ExtractedClues:
        value = self.record.get("extracted_clues")
        if value is None:
            return ExtractedClues()
        if not isinstance(value, dict):
            raise self.fail("extracted_clues", f"expected an object, got {type(value).__name__}")
        unknown = sorted(set(value) - set(CLUE_FIELDS))
        if unknown:
            raise self.fail(f"extracted_clues.{unknown[0]}", f"unknown key (known: {list(CLUE_FIELDS)})")
        return ExtractedClues(**{name: self.words(f"extracted_clues.{name}", value.get(name) or [])
                                 for name in CLUE_FIELDS})

    def media_path(self, names: tuple[str, ...], folder: Path) -> Path | None:
        given = {name: self.string(name) for name in names if self.record.get(name) is not None}
        if len(set(given.values())) > 1:
            raise self.fail(names[0], f"conflicting values {given}")
        if not given:
            return None
        text = next(iter(given.values()))
        if not text.strip():
            raise self.fail(next(iter(given)), "is an empty path")
        path = Path(text).expanduser()
        return path if path.is_absolute() else folder / path


def parse_record(record: Any, where: str, folder: Path) -> OmniSample:
    """Validate one decoded JSON value; ``where`` ("file, line N") prefixes every error."""
    if not isinstance(record, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(record).__name__}")
    line = _LineReader(record, where)
    video = line.media_path(("video",), folder)
    image = line.media_path(("image",), folder)
    audio = line.media_path(("audio_path", "audio"), folder)
    if video is None and image is None and audio is None:
        raise line.fail("video", "a sample needs 'video', 'image' or 'audio_path' (none is given)")
    sample_id = line.string("id") or (video or image or audio).stem
    return OmniSample(
        id=sample_id, video=video, audio=audio, image=image,
        subtitle=line.string("subtitle") or "",
        openset=line.words("openset"),
        description=line.string("description"),
        extracted_clues=line.clues(),
        emo=line.string("emo"),
        val=line.number("val"),
        source=where,
        extra={key: value for key, value in record.items() if key not in _KNOWN_FIELDS},
    )


def load_manifest(path: str | Path) -> list[OmniSample]:
    """Read and validate a JSONL manifest (blank lines are allowed); ids must be unique."""
    path = Path(path)
    samples: list[OmniSample] = []
    first_seen: dict[str, str] = {}
    for where, record in read_jsonl(path, ManifestError):
        sample = parse_record(record, where, path.parent)
        if sample.id in first_seen:
            raise ManifestError(f"{where}: field 'id': duplicate id {sample.id!r} (first at {first_seen[sample.id]})")
        first_seen[sample.id] = where
        samples.append(sample)
    if not samples:
        raise ManifestError(f"{path}: the manifest holds no samples")
    return samples


def write_manifest(path: str | Path, samples: Iterable[OmniSample]) -> Path:
    """Write samples as JSONL; media inside the manifest's folder get paths relative to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for sample in samples:
            fh.write(json.dumps(sample.to_record(relative_to=path.parent), ensure_ascii=False) + "\n")
    return path
