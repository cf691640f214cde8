"""Decode one sample's media into encoder inputs: image and video patches, log-mel audio features."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_omni.data.audio import load_audio_file, load_video_audio
from megatron_omni.data.config import DataConfig
from megatron_omni.data.errors import MediaError
from megatron_omni.data.image import image_features, read_image
from megatron_omni.data.manifest import OmniSample
from megatron_omni.data.mel import log_mel_spectrogram
from megatron_omni.data.video import VideoFeatures, VisionFeatures, read_video, video_features


@dataclass
class SampleMedia:
    video: VideoFeatures | None
    audio_features: torch.Tensor | None  # float32 [num_mel_bins, frames]
    # The audio is the video's soundtrack and is interleaved with it on shared time ids.
    audio_in_video: bool
    image: VisionFeatures | None = None

    @property
    def audio_frames(self) -> int:
        return 0 if self.audio_features is None else int(self.audio_features.shape[1])


def load_media(sample: OmniSample, cfg: DataConfig) -> SampleMedia:
    """Image, video and audio features of ``sample``; a MediaError names the file and sample."""
    try:
        image = image_features(read_image(sample.image, cfg.image, cfg.video), cfg.video) if sample.image else None
        video = video_features(read_video(sample.video, cfg.video), cfg.video) if sample.video else None
        if sample.audio is not None:
            waveform = load_audio_file(sample.audio, cfg.audio)
        elif sample.video is not None and cfg.audio_from_video:
            waveform = load_video_audio(sample.video, cfg.audio)
        else:
            waveform = None
    except MediaError as exc:
        raise MediaError(exc.path, exc.reason, sample=f"{sample.id} at {sample.location}") from exc
    features = log_mel_spectrogram(waveform, cfg.audio) if waveform is not None else None
    return SampleMedia(video=video, audio_features=features, image=image,
                       audio_in_video=cfg.use_audio_in_video and video is not None and features is not None)
