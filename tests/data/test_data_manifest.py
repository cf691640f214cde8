"""Manifest parsing and the documented errors (file, line and field in every message)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_omni.data.errors import ManifestError
from megatron_omni.data.manifest import ExtractedClues, OmniSample, load_manifest, parse_record, write_manifest

GOOD = {
    "id": "s1", "video": "video/s1.mp4", "audio_path": "audio/s1.wav", "subtitle": "Hello there.",
    "openset": ["happy", " joyful "], "description": "She smiles and her voice rises.",
    "extracted_clues": {"visual_clues": ["smile"], "audio_clues": ["rising pitch"], "reasoning_emotions": ["happy"]},
    "emo": "happy", "original_index": 7,
}


def _write(tmp_path: Path, *lines) -> Path:
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_fields_and_relative_paths(tmp_path):
    absolute = {"id": "s2", "audio": str(tmp_path / "x.wav"), "val": -1}
    samples = load_manifest(_write(tmp_path, GOOD, "", absolute))
    first, second = samples
    assert first.video == tmp_path / "video/s1.mp4" and first.audio == tmp_path / "audio/s1.wav"
    assert first.openset == ("happy", "joyful")
    assert first.extracted_clues == ExtractedClues(("smile",), ("rising pitch",), ("happy",))
    assert first.extra == {"original_index": 7}
    assert first.source == f"{tmp_path / 'manifest.jsonl'}, line 1"
    assert second.video is None and second.audio == tmp_path / "x.wav" and second.val == -1.0
    assert second.source.endswith(", line 3")  # blank lines keep the numbering


def test_round_trip(tmp_path):
    samples = load_manifest(_write(tmp_path, GOOD))
    out = write_manifest(tmp_path / "copy.jsonl", samples)
    again = load_manifest(out)
    assert [s.to_record(tmp_path) for s in again] == [s.to_record(tmp_path) for s in samples]


def test_the_oppo_reference_sample_parses(shared_data):
    samples = load_manifest(shared_data / "oppo_rl_sample.jsonl")
    assert len(samples) == 6
    for sample in samples:
        assert sample.video.name.endswith(".mp4") and sample.audio.name.endswith(".wav")
        assert sample.id == sample.video.stem  # no id field: the file stem
        assert sample.openset and sample.extracted_clues.reasoning_emotions
        assert "original_index" in sample.extra


@pytest.mark.parametrize("record, message", [
    ({**GOOD, "openset": "happy"}, r", line 1: field 'openset': expected a list of strings"),
    ({**GOOD, "openset": ["happy", 3]}, r", line 1: field 'openset': expected a list of strings"),
    ({**GOOD, "subtitle": 5}, r", line 1: field 'subtitle': expected a string, got int"),
    ({**GOOD, "val": "positive"}, r", line 1: field 'val': expected a number"),
    ({**GOOD, "val": True}, r", line 1: field 'val': expected a number"),
    ({k: v for k, v in GOOD.items() if k not in ("video", "audio_path")}, r", line 1: field 'video': a sample needs"),
    ({**GOOD, "video": ""}, r", line 1: field 'video': is an empty path"),
    ({**GOOD, "audio": "other.wav"}, r", line 1: field 'audio_path': conflicting values"),
    ({**GOOD, "extracted_clues": ["smile"]}, r", line 1: field 'extracted_clues': expected an object"),
    ({**GOOD, "extracted_clues": {"visual_clue": ["smile"]}}, r", line 1: field 'extracted_clues.visual_clue': unknown key"),
    ({**GOOD, "extracted_clues": {"audio_clues": "loud"}}, r", line 1: field 'extracted_clues.audio_clues': expected a list"),
])
def test_wrong_fields_name_file_line_and_field(tmp_path, record, message):
    with pytest.raises(ManifestError, match=message) as info:
        load_manifest(_write(tmp_path, record))
    assert str(tmp_path / "manifest.jsonl") in str(info.value)


def test_structural_errors(tmp_path):
    with pytest.raises(ManifestError, match=r"manifest.jsonl, line 2: not valid JSON"):
        load_manifest(_write(tmp_path, GOOD, '{"id": "s2", '))
    with pytest.raises(ManifestError, match=r"manifest.jsonl, line 1: expected a JSON object"):
        load_manifest(_write(tmp_path, "[1, 2]"))
    with pytest.raises(ManifestError, match=r"manifest.jsonl, line 2: field 'id': duplicate id 's1' "
                                            r"\(first at .*, line 1\)"):
        load_manifest(_write(tmp_path, GOOD, GOOD))
    with pytest.raises(ManifestError, match="holds no samples"):
        load_manifest(_write(tmp_path, ""))
    with pytest.raises(ManifestError, match="file not found: .*absent.jsonl"):
        load_manifest(tmp_path / "absent.jsonl")


def test_parse_record_is_usable_alone(tmp_path):
    sample = parse_record({"audio_path": "a.wav"}, "inline", tmp_path)
    assert sample == OmniSample(id="a", video=None, audio=tmp_path / "a.wav", source="inline")
