"""Whisper-style log-mel features, as Qwen2.5-Omni's audio encoder reads them.

Power spectrum of a 400-point periodic-Hann STFT with hop 160 (10 ms at 16 kHz), projected on
128 Slaney-normalised triangular mel filters between 0 and 8 kHz, log10 with a floor of 1e-10,
clamped to 8 decades below the loudest bin of the clip and mapped by (x + 4) / 4.

The reference feature extractor pads every clip with zeros to 300 s before the STFT and marks
the first ceil(samples / hop) frames valid. Frames near the end of the clip therefore see zeros
rather than the STFT's reflection padding; this module pads the same zeros (only as many as
reach the last valid frame), so the valid frames are identical without computing 300 s.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from megatron_omni.data.audio import AudioConfig


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    mels[log_region] = 15.0 + np.log(freq[log_region] / 1000.0) * 27.0 / np.log(6.4)
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    freq = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    freq[log_region] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels[log_region] - 15.0))
    return freq


@functools.lru_cache(maxsize=4)
def mel_filter_bank(num_mel_bins: int, n_fft: int, sampling_rate: int) -> np.ndarray:
    """[n_fft // 2 + 1, num_mel_bins] triangular filters with Slaney area normalisation."""
    fft_freqs = np.linspace(0.0, sampling_rate / 2, n_fft // 2 + 1)
    edges_mel = np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sampling_rate / 2]))[0],
                            num_mel_bins + 2)
    edges = _mel_to_hz(edges_mel)
    widths = np.diff(edges)
    offsets = edges[None, :] - fft_freqs[:, None]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def num_feature_frames(num_samples: int, cfg: AudioConfig) -> int:
    return math.ceil(min(num_samples, cfg.max_samples) / cfg.hop_length)


def num_audio_tokens(num_frames: int, n_window: int | None = None) -> int:
    """Tokens the audio encoder emits for ``num_frames`` mel frames: Qwen2.5-Omni's (a stride-2
    conv, then 2x pooling) or, given its ``n_window``, Qwen3-Omni's (chunks of 2 * n_window frames,
    13 tokens each through three stride-2 convolutions, and the remainder on its own)."""
    if n_window is None:
        return ((num_frames - 1) // 2 + 1 - 2) // 2 + 1
    chunk = 2 * n_window
    rest = (num_frames % chunk - 1) // 2 + 1
    return ((rest - 1) // 2 + 1 - 1) // 2 + 1 + num_frames // chunk * 13


def log_mel_spectrogram(waveform: np.ndarray, cfg: AudioConfig) -> torch.Tensor:
    """float32 mono waveform -> float32 [num_mel_bins, ceil(samples / hop)] log-mel features."""
    samples = torch.as_tensor(np.asarray(waveform, dtype=np.float32)[: cfg.max_samples])
    if samples.ndim != 1 or samples.numel() == 0:
        raise ValueError(f"expected a non-empty mono waveform, got shape {tuple(samples.shape)}")
    valid = num_feature_frames(samples.numel(), cfg)
    # Zeros past the end, as in the reference's 300 s padding; enough that every frame touching
    # the signal is computed before the STFT's own reflection padding at the far end matters.
    tail = cfg.n_fft + cfg.hop_length
    padded = torch.cat([samples, samples.new_zeros(tail)])
    window = torch.hann_window(cfg.n_fft)
    spectrum = torch.stft(padded, cfg.n_fft, cfg.hop_length, window=window, return_complex=True)
    power = spectrum.abs() ** 2
    filters = torch.from_numpy(mel_filter_bank(cfg.num_mel_bins, cfg.n_fft, cfg.sampling_rate)).to(torch.float32)
    log_spec = torch.clamp(filters.T @ power, min=1e-10).log10()
    # Frames beyond those touching the signal hold only zeros (log10 floor = -10) in the reference
    # too; they never raise the clip's maximum, so the maximum over the clean frames is the same.
    clean = (samples.numel() + tail - cfg.n_fft // 2) // cfg.hop_length + 1
    log_spec = log_spec[:, :clean]
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0)[:, :valid].contiguous()
