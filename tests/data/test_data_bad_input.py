"""Missing, truncated and undecodable media: an error naming the file, or skipped and counted."""
from __future__ import annotations

import dataclasses
import logging
import os

import pytest

from megatron_omni.data.audio import AudioConfig, load_video_audio
from megatron_omni.data.batch import SkippedSample
from megatron_omni.data.dataset import Collator, OmniDataset
from megatron_omni.data.errors import MediaError
from megatron_omni.data.loader import OmniLoader
from megatron_omni.data.manifest import load_manifest, write_manifest
from megatron_omni.data.media import load_media
from megatron_omni.data.processor import OmniProcessor
from megatron_omni.data.sampler import ResumableBatchSampler
from megatron_omni.data.toy import toy_data_config


@pytest.fixture
def broken(tmp_path, toy_set):
    """Copies of toy clips damaged in the ways real data sets are."""
    clips = load_manifest(toy_set.train_manifest)
    good = clips[0]
    data = good.video.read_bytes()
    files = {
        "truncated.mp4": data[: len(data) // 2],
        "junk.mp4": os.urandom(4000),
        "empty.mp4": b"",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    wav = good.audio.read_bytes()
    (tmp_path / "truncated.wav").write_bytes(wav[: len(wav) // 2])
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + os.urandom(100))
    return tmp_path, clips


@pytest.mark.parametrize("field, name, reason", [
    ("video", "missing.mp4", "video file not found"),
    ("video", "truncated.mp4", "cannot decode video|truncated"),
    ("video", "junk.mp4", "cannot decode video"),
    ("video", "empty.mp4", "cannot decode video"),
    ("audio", "missing.wav", "audio file not found"),
    ("audio", "truncated.wav", "truncated WAV: header declares"),
    ("audio", "junk.wav", "cannot decode audio"),
])
def test_bad_media_names_file_and_sample(broken, field, name, reason):
    folder, clips = broken
    sample = dataclasses.replace(clips[0], **{field: folder / name})
    with pytest.raises(MediaError, match=reason) as info:
        load_media(sample, toy_data_config())
    message = str(info.value)
    assert str(folder / name) in message and clips[0].id in message and clips[0].source in message


def test_truncated_video_audio_track_is_detected(broken):
    """The audio track of a cut-off mp4 is an error, never a short or silent waveform."""
    folder, _ = broken
    with pytest.raises(MediaError, match=r"truncated.mp4: truncated audio track: [0-9.]+ s decoded, [0-9.]+ s declared"):
        load_video_audio(folder / "truncated.mp4", AudioConfig())


def test_skipped_samples_are_counted_and_logged(tmp_path, broken, toy_tokenizer, caplog):
    folder, clips = broken
    bad = [dataclasses.replace(clips[1], video=folder / "junk.mp4"),
           dataclasses.replace(clips[2], audio=folder / "truncated.wav")]
    manifest = write_manifest(tmp_path / "mixed.jsonl", [*bad, clips[0], clips[3]])
    strict = OmniDataset.from_manifest(manifest, OmniProcessor(toy_tokenizer, toy_data_config()))
    with pytest.raises(MediaError, match="junk.mp4"):
        strict[0]
    lenient = OmniDataset.from_manifest(manifest, OmniProcessor(toy_tokenizer, toy_data_config(skip_bad_samples=True)))
    assert isinstance(lenient[0], SkippedSample) and "junk.mp4" in lenient[0].reason
    sampler = ResumableBatchSampler(len(lenient), global_batch_size=4, shuffle=False)
    loader = OmniLoader(lenient, sampler, micro_batch_size=2,
                        collator=Collator(pad_token_id=lenient.processor.token_ids.pad_token_id))
    with caplog.at_level(logging.WARNING, logger="megatron_omni.data.loader"):
        first, second = loader.next_step()
    assert loader.num_skipped == 2 and loader.state_dict()["skipped_samples"] == 2
    assert first.num_samples == 0 and first.loss_mask.sum() == 0  # both samples of this micro-batch were bad
    assert second.sample_ids == [clips[0].id, clips[3].id]
    assert "junk.mp4" in caplog.text and "truncated WAV" in caplog.text
