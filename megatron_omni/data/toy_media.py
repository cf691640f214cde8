"""Synthetic emotional clips: a drawn talking face and a voice-like sound, written as real media.

The face carries emotion through mouth curvature and opening, brow height and tilt, and eye
opening; its mouth opens with the syllables of the voice, so the two streams are in sync. The
voice is a harmonic source whose pitch, pitch contour, syllable rate, loudness, tremolo and
breathiness carry the emotion. Files are H.264 + AAC mp4 (PyAV, no system ffmpeg) and 16-bit WAV.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class FaceStyle:
    mouth_curve: float  # > 0 smile (corners up), < 0 frown
    mouth_open: float  # resting opening, 0..1 of the mouth height
    brow_raise: float  # > 0 raised
    brow_tilt: float  # > 0 inner ends up (worry, sadness), < 0 inner ends down (anger)
    eye_open: float  # 1 = relaxed


@dataclass(frozen=True)
class VoiceStyle:
    pitch_hz: float
    contour_semitones: float  # pitch change across the utterance: > 0 rising
    syllables_per_s: float
    loudness: float  # peak amplitude, 0..1
    tremolo: float = 0.0  # relative pitch wobble at 6 Hz (a shaky voice)
    breathiness: float = 0.0  # share of noise in the source (a harsh or breathy voice)


@dataclass(frozen=True)
class Look:
    """Per-clip appearance, drawn at random so clips of one emotion differ."""

    skin: tuple[int, int, int]
    background: tuple[int, int, int]
    face_scale: float
    center_shift: tuple[float, float]


def syllable_envelope(times: np.ndarray, duration: float, voice: VoiceStyle) -> np.ndarray:
    """Loudness envelope in [0, 1]: raised-cosine syllables filling 70 % of each syllable slot."""
    count = max(1, round(duration * voice.syllables_per_s))
    slot = duration / count
    phase = (times % slot) / slot
    active = phase < 0.7
    return np.where(active, np.sin(np.pi * np.clip(phase / 0.7, 0.0, 1.0)) ** 2, 0.0)


def synthesize_voice(voice: VoiceStyle, duration: float, sampling_rate: int, rng: np.random.Generator) -> np.ndarray:
    times = np.arange(int(duration * sampling_rate)) / sampling_rate
    contour = 2.0 ** (voice.contour_semitones * times / duration / 12.0)
    wobble = 1.0 + voice.tremolo * np.sin(2 * np.pi * 6.0 * times)
    f0 = voice.pitch_hz * contour * wobble * rng.uniform(0.95, 1.05)
    phase = 2 * np.pi * np.cumsum(f0) / sampling_rate
    source = sum(np.sin(k * phase) / k for k in range(1, 11) if k * f0.max() < sampling_rate / 2)
    source = source / np.abs(source).max()
    noise = rng.standard_normal(times.shape[0])
    signal = (1 - voice.breathiness) * source + voice.breathiness * noise / 3.0
    signal = signal * syllable_envelope(times, duration, voice)
    peak = np.abs(signal).max()
    return (signal / peak * voice.loudness if peak > 0 else signal).astype(np.float32)


def _ellipse(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _segment(yy, xx, p0, p1, width) -> np.ndarray:
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx), 0.0, 1.0)
    return (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2 <= width**2


def draw_face(size: int, face: FaceStyle, look: Look, talking: float, blink: bool, bob: float) -> np.ndarray:
    """One RGB uint8 frame; ``talking`` in [0, 1] opens the mouth with the voice."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = look.background
    cy = size * (0.5 + look.center_shift[0]) + bob
    cx = size * (0.5 + look.center_shift[1])
    ry, rx = size * 0.40 * look.face_scale, size * 0.32 * look.face_scale
    image[_ellipse(yy, xx, cy, cx, ry, rx)] = look.skin

    eye_y = cy - 0.18 * ry
    eye_open = 0.08 if blink else face.eye_open
    for side in (-1, 1):
        ex = cx + side * 0.38 * rx
        image[_ellipse(yy, xx, eye_y, ex, 0.10 * ry * eye_open, 0.16 * rx)] = (250, 250, 250)
        if not blink:
            image[_ellipse(yy, xx, eye_y, ex, min(0.06, 0.10 * eye_open) * ry, 0.06 * rx)] = (40, 30, 30)
        brow_base = eye_y - 0.22 * ry - face.brow_raise * 0.12 * ry
        inner = (brow_base - face.brow_tilt * 0.08 * ry, cx + side * 0.14 * rx)
        outer = (brow_base + face.brow_tilt * 0.04 * ry, cx + side * 0.58 * rx)
        image[_segment(yy, xx, inner, outer, 0.035 * ry + 0.6)] = (60, 40, 30)

    mouth_y, mouth_w = cy + 0.45 * ry, 0.42 * rx
    u = np.clip((xx - cx) / mouth_w, -1.0, 1.0)
    inside = np.abs(xx - cx) <= mouth_w
    centre_line = mouth_y + face.mouth_curve * 0.16 * ry * (1 - u**2)
    opening = (face.mouth_open + 0.5 * talking) * 0.14 * ry * (1 - u**2)
    lips = inside & (yy >= centre_line - opening - 0.03 * ry) & (yy <= centre_line + opening + 0.03 * ry)
    image[lips] = (150, 40, 50)
    image[inside & (yy > centre_line - opening) & (yy < centre_line + opening)] = (60, 10, 20)
    return image


def render_frames(face: FaceStyle, look: Look, voice: VoiceStyle, duration: float, fps: int, size: int,
                  rng: np.random.Generator) -> np.ndarray:
    """[frames, size, size, 3] uint8: the face talking in time with ``voice``'s syllables."""
    count = int(round(duration * fps))
    times = np.arange(count) / fps
    talking = syllable_envelope(times, duration, voice)
    blink_at = rng.integers(0, count)
    bob = 0.02 * size * np.sin(2 * np.pi * times / max(duration, 1e-6) + rng.uniform(0, 2 * math.pi))
    return np.stack([draw_face(size, face, look, float(talking[i]), i == blink_at, float(bob[i]))
                     for i in range(count)])


def write_wav(path: Path, samples: np.ndarray, sampling_rate: int) -> None:
    import soundfile

    soundfile.write(str(path), samples, sampling_rate, subtype="PCM_16")


def write_mp4(path: Path, frames: np.ndarray, fps: int, audio: np.ndarray | None, sampling_rate: int) -> None:
    """H.264 (yuv420p) video, optional AAC mono audio, index at the front of the file."""
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.options = {"crf": "20", "preset": "ultrafast"}
        video.codec_context.thread_count = 1  # the same bytes on any number of cores
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sampling_rate)
            sound.layout = "mono"
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        if sound is not None:
            step = 1024
            for start in range(0, audio.shape[0], step):
                chunk = av.AudioFrame.from_ndarray(audio[None, start : start + step], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = sampling_rate, start
                container.mux(sound.encode(chunk))
            container.mux(sound.encode())
