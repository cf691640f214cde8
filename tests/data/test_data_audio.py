"""Audio loading (lhotse, decord) and log-mel features against transformers' WhisperFeatureExtractor."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from transformers import WhisperFeatureExtractor
from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import _get_feat_extract_output_lengths

from megatron_omni.data.audio import AudioConfig, load_audio_file, load_video_audio
from megatron_omni.data.manifest import load_manifest
from megatron_omni.data.mel import log_mel_spectrogram, mel_filter_bank, num_audio_tokens
from megatron_omni.data.toy_media import write_mp4


@pytest.fixture(scope="module")
def whisper():
    """Configured as Qwen2.5-Omni's preprocessor_config.json: 128 bins, 300 s chunks."""
    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300,
                                   n_fft=400, padding_value=0.0, return_attention_mask=True)


def test_mel_filters_match(whisper):
    np.testing.assert_allclose(mel_filter_bank(128, 400, 16000), whisper.mel_filters, rtol=0, atol=1e-12)


def _signals():
    rng = np.random.default_rng(0)
    t = np.arange(40000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    loud_end = tone[:12345].copy()
    loud_end[-60:] *= 30  # the loudest frames touch the end of the clip
    return {"2.5 s tone": tone, "odd length, loud end": loud_end, "one frame": tone[:100],
            "silence": np.zeros(8000, np.float32), "exact hops": tone[:16000]}


@pytest.mark.parametrize("name", list(_signals()))
def test_log_mel_matches_whisper_feature_extractor(whisper, name):
    waveform = _signals()[name]
    reference = whisper(waveform, sampling_rate=16000, padding="max_length", return_attention_mask=True,
                        return_tensors="pt")
    valid = int(reference["attention_mask"][0].sum())
    ours = log_mel_spectrogram(waveform, AudioConfig())
    assert ours.shape == (128, valid)
    torch.testing.assert_close(ours, reference["input_features"][0, :, :valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 99, 100, 101, 200, 30000])
def test_audio_token_count(frames):
    assert num_audio_tokens(frames) == int(_get_feat_extract_output_lengths(torch.tensor(frames)))


def test_wav_is_resampled_to_16k_mono(tmp_path):
    sr, seconds = 44100, 1.5
    t = np.arange(int(sr * seconds)) / sr
    left, right = 0.4 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], 1), sr)
    audio = load_audio_file(path, AudioConfig())
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.shape[0] - int(seconds * 16000)) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * 16000 / audio.shape[0] == pytest.approx(440, abs=2)
    assert np.abs(audio).max() == pytest.approx(0.3, abs=0.02)  # the channel mean


def test_video_track_matches_the_wav(toy_set):
    sample = load_manifest(toy_set.train_manifest)[0]
    cfg = AudioConfig()
    track, wav = load_video_audio(sample.video, cfg), load_audio_file(sample.audio, cfg)
    assert abs(track.shape[0] - wav.shape[0]) <= 0.05 * cfg.sampling_rate
    # AAC is lossy and delays the signal a little: compare loudness envelopes (20 ms windows).
    n = min(track.shape[0], wav.shape[0]) // 320 * 320
    env_track = np.sqrt((track[:n].reshape(-1, 320) ** 2).mean(1))
    env_wav = np.sqrt((wav[:n].reshape(-1, 320) ** 2).mean(1))
    assert np.corrcoef(env_track, env_wav)[0, 1] > 0.9


def test_silent_video_has_no_track(tmp_path):
    path = tmp_path / "silent.mp4"
    write_mp4(path, np.zeros((6, 32, 32, 3), np.uint8), 10, None, 16000)
    assert load_video_audio(path, AudioConfig()) is None


def test_long_audio_is_cut_at_max_seconds():
    cfg = AudioConfig(max_seconds=1.0)
    features = log_mel_spectrogram(np.ones(40000, np.float32) * 0.1, cfg)
    assert features.shape[1] == 100
