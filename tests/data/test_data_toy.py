"""The toy emotion data set: deterministic, cached, decodable, and its emotions are in the media."""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_omni.data.audio import AudioConfig, load_audio_file, load_video_audio
from megatron_omni.data.manifest import load_manifest
from megatron_omni.data.tokenizer import load_tokenizer
from megatron_omni.data.toy import EMOTIONS, _look, make_toy_dataset
from megatron_omni.data.toy_media import render_frames, synthesize_voice
from megatron_omni.data.video import VideoConfig, read_video

REPO = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_cached(tmp_path):
    first = make_toy_dataset(tmp_path / "a", num=4, seed=11)
    second = make_toy_dataset(tmp_path / "b", num=4, seed=11)
    assert _files(first.root) == _files(second.root)
    stamps = {p: p.stat().st_mtime_ns for p in first.root.rglob("*") if p.is_file()}
    again = make_toy_dataset(tmp_path / "a", num=4, seed=11)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in first.root.rglob("*") if p.is_file()} == stamps


def test_another_size_or_seed_regenerates(tmp_path):
    paths = make_toy_dataset(tmp_path, num=4, seed=1)
    before = paths.train_manifest.read_text()
    make_toy_dataset(tmp_path, num=3, seed=2)
    assert paths.train_manifest.read_text() != before
    assert len(list((tmp_path / "clips").glob("*.mp4"))) == 3  # the old set's clips are gone
    small = make_toy_dataset(tmp_path, num=3, seed=2, vocab_size=400)
    assert len(load_tokenizer(small.tokenizer_dir)) == 400


def test_the_session_set(toy_set):
    train, test = load_manifest(toy_set.train_manifest), load_manifest(toy_set.test_manifest)
    assert (len(train), len(test)) == (10, 2)
    samples = train + test
    assert len({s.id for s in samples}) == 12
    assert {s.extra["modalities_agree"] for s in samples} == {True, False}
    for sample in samples:
        face, voice = EMOTIONS[sample.extra["face_emotion"]], EMOTIONS[sample.extra["voice_emotion"]]
        assert sample.emo == voice.words[0]
        assert set(sample.openset) <= set(face.words) | set(voice.words)
        assert sample.extracted_clues.reasoning_emotions == sample.openset
        for clue in sample.extracted_clues.visual_clues + sample.extracted_clues.audio_clues:
            assert clue in sample.description
        if not sample.extra["modalities_agree"]:
            assert face.words[0] in sample.openset and voice.words[0] in sample.openset


def test_clips_decode_with_both_streams(toy_set):
    cfg = AudioConfig()
    for sample in load_manifest(toy_set.train_manifest)[:4]:
        video = read_video(sample.video, VideoConfig())
        assert video.frames.shape[1:] == (112, 112, 3)
        wav, track = load_audio_file(sample.audio, cfg), load_video_audio(sample.video, cfg)
        assert 1.0 <= wav.shape[0] / cfg.sampling_rate <= 2.0
        assert abs(track.shape[0] - wav.shape[0]) < 0.05 * cfg.sampling_rate


def _pitch(audio: np.ndarray, sr: int = 16000) -> float:
    """Fundamental frequency from the autocorrelation peak between 60 and 500 Hz."""
    voiced = audio[np.abs(audio) > 0.3 * np.abs(audio).max()]
    corr = np.correlate(voiced[:4000], voiced[:4000], "full")[3999:]
    lags = np.arange(sr // 500, sr // 60)
    return sr / lags[np.argmax(corr[lags])]


def test_voices_carry_the_emotion():
    voices = {name: synthesize_voice(p.voice, 2.0, 16000, np.random.default_rng(0)) for name, p in EMOTIONS.items()}
    pitch = {name: _pitch(v) for name, v in voices.items()}
    loud = {name: float(np.sqrt((v**2).mean())) for name, v in voices.items()}
    assert pitch["happy"] > 1.5 * pitch["sad"] and pitch["surprised"] > pitch["calm"]
    assert loud["angry"] > 2 * loud["sad"] and loud["happy"] > loud["worried"]


def test_faces_carry_the_emotion():
    def frame(name):
        profile = EMOTIONS[name]
        return render_frames(profile.face, _look(random.Random(0)), profile.voice, 1.0, 10, 112,
                             np.random.default_rng(0))[0].astype(int)

    def dark_mouth(image):  # the open-mouth colour
        return int(((image[..., 0] < 80) & (image[..., 1] < 20)).sum())

    def brow_top(image):  # highest row of brow colour
        rows = np.where(((image[..., 0] == 60) & (image[..., 1] == 40)).any(1))[0]
        return int(rows.min())

    assert dark_mouth(frame("surprised")) > 3 * max(dark_mouth(frame("calm")), 1)
    assert brow_top(frame("surprised")) < brow_top(frame("angry"))
    assert not np.array_equal(frame("happy"), frame("sad"))


def test_labels_are_emotion_wheel_words(shared_data):
    from megatron_omni.text.lexicon import EmotionWheelLexicon

    lexicon = EmotionWheelLexicon.from_dir(shared_data / "emotion_wheel")
    level1 = {}
    for name, profile in EMOTIONS.items():
        for word in profile.words:
            classes = [lexicon.map_word(word, wheel) for wheel in lexicon.wheel_names]
            assert sum(c is not None for c in classes) >= 3, (word, classes)
        level1[name] = lexicon.map_word(profile.words[0], lexicon.wheel_names[0])
    assert level1["happy"] != level1["sad"] != level1["angry"] != level1["worried"]


def test_command_line_tool(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "make_toy_dataset.py"), "--out", str(tmp_path),
                             "--num", "3", "--seed", "5"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train manifest" in result.stdout
    assert len(load_manifest(tmp_path / "train.jsonl")) + len(load_manifest(tmp_path / "test.jsonl")) == 3


def test_too_small_a_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 2 clips"):
        make_toy_dataset(tmp_path, num=1)
