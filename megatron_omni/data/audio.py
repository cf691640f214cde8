"""Audio waveforms at 16 kHz mono: lhotse for audio files, decord for a video's own audio track.

lhotse's ``Recording.from_file`` would need a system ffmpeg for mp4, which these machines do not
have; decord carries its own FFmpeg build and resamples while decoding.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_omni.data.errors import MediaError, first_line

# Decoded AAC can run a little past the declared duration (encoder priming and frame padding) or
# end a little early; beyond this slack a shorter stream means a truncated file.
_TRUNCATION_SLACK_S = 0.1


@dataclass
class AudioConfig:
    sampling_rate: int = 16000
    # The Qwen2.5-Omni feature extractor reads at most 300 s (chunk_length); longer audio is cut.
    max_seconds: float = 300.0
    n_fft: int = 400
    hop_length: int = 160
    num_mel_bins: int = 128

    @property
    def max_samples(self) -> int:
        return int(self.max_seconds * self.sampling_rate)


def _check_wav_complete(path: Path) -> None:
    """A WAV whose data chunk is shorter than its header declares was cut off (soundfile reads it
    silently); catch that so a partial file is never trained on."""
    with open(path, "rb") as fh:
        header = fh.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return  # not a RIFF/WAVE file: the decoder judges it
        size = path.stat().st_size
        while chunk := fh.read(8):
            if len(chunk) < 8:
                break
            name, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"data":
                available = size - fh.tell()
                if available < length:
                    raise MediaError(path, f"truncated WAV: header declares {length} bytes of audio, "
                                           f"the file holds {available}")
                return
            fh.seek(length + (length & 1), 1)


def load_audio_file(path: Path, cfg: AudioConfig) -> np.ndarray:
    """float32 mono waveform at ``cfg.sampling_rate`` through a lhotse Recording."""
    from lhotse import Recording

    if not path.is_file():
        raise MediaError(path, "audio file not found")
    _check_wav_complete(path)
    try:
        recording = Recording.from_file(path)
        if recording.sampling_rate != cfg.sampling_rate:
            recording = recording.resample(cfg.sampling_rate)
        samples = recording.load_audio()
    except Exception as exc:  # lhotse wraps backend failures in several exception types
        raise MediaError(path, f"cannot decode audio ({first_line(exc)})") from exc
    return _finish(np.asarray(samples, dtype=np.float32).mean(axis=0), path, cfg)


def declared_audio_seconds(path: Path) -> float | None:
    """Duration of the first audio stream from the container header; None when there is none.

    Read with PyAV because decord's ``AudioReader.duration()`` truncates to whole seconds.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return container.duration / av.time_base if container.duration else 0.0
    except av.error.FFmpegError as exc:
        raise MediaError(path, f"cannot read the container ({first_line(exc)})") from exc


def load_video_audio(path: Path, cfg: AudioConfig) -> np.ndarray | None:
    """The audio track of a video at ``cfg.sampling_rate`` mono; None when the video is silent."""
    import decord

    if not path.is_file():
        raise MediaError(path, "video file not found")
    declared = declared_audio_seconds(path)
    if declared is None:
        return None
    try:
        samples = decord.AudioReader(str(path), sample_rate=cfg.sampling_rate, mono=True)[:].asnumpy()
    except decord.DECORDError as exc:
        raise MediaError(path, f"cannot decode the audio track ({first_line(exc)})") from exc
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if declared <= 0:
        raise MediaError(path, "the audio track declares no duration (truncated or corrupt file)")
    if samples.shape[0] < (declared - _TRUNCATION_SLACK_S) * cfg.sampling_rate:
        raise MediaError(path, f"truncated audio track: {samples.shape[0] / cfg.sampling_rate:.2f} s decoded, "
                               f"{declared:.2f} s declared")
    # Trailing codec padding past the declared duration is not part of the recording.
    return _finish(samples[: int(round(declared * cfg.sampling_rate))], path, cfg)


def _finish(samples: np.ndarray, path: Path, cfg: AudioConfig) -> np.ndarray:
    if samples.shape[0] == 0:
        raise MediaError(path, "audio holds no samples")
    if not np.isfinite(samples).all():
        raise MediaError(path, "audio holds NaN or infinite samples")
    return np.ascontiguousarray(samples[: cfg.max_samples])
