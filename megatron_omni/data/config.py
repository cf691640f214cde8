"""Settings of the data pipeline, one typed dataclass tree (loadable from the run's YAML)."""
from __future__ import annotations

from dataclasses import dataclass, field

from megatron_omni.data.audio import AudioConfig
from megatron_omni.data.template import PromptConfig
from megatron_omni.data.video import VideoConfig


@dataclass
class DataConfig:
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    # A sample with video and audio interleaves them in time chunks on shared TMRoPE time ids
    # (the audio is taken to be the video's soundtrack); false puts a separate audio block after it.
    use_audio_in_video: bool = True
    # A sample without an audio file uses the video's own audio track, when it has one.
    audio_from_video: bool = True
    position_id_per_seconds: int = 25
    seconds_per_chunk: float = 2.0
    max_seq_length: int | None = None
    # Bad media and over-long samples are skipped with a warning and counted instead of raising.
    skip_bad_samples: bool = False
    # Micro-batches as one packed THD sequence (cu_seqlens) instead of a padded [b, s] block.
    packing: bool = False
    # Sequence length multiple (tensor/context parallelism need divisible lengths).
    pad_to_multiple_of: int = 1
    num_workers: int = 0

    def validate(self) -> "DataConfig":
        problems = []
        if self.video.fps <= 0:
            problems.append(f"data.video.fps must be positive, got {self.video.fps}")
        if self.video.min_pixels > self.video.max_pixels:
            problems.append(f"data.video.min_pixels ({self.video.min_pixels}) exceeds max_pixels ({self.video.max_pixels})")
        if self.video.min_frames > self.video.max_frames:
            problems.append(f"data.video.min_frames ({self.video.min_frames}) exceeds max_frames ({self.video.max_frames})")
        if self.pad_to_multiple_of < 1:
            problems.append(f"data.pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")
        if self.num_workers < 0:
            problems.append(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            problems.append(f"data.max_seq_length must be positive, got {self.max_seq_length}")
        if "{description}" not in self.prompt.privileged_template:
            problems.append(f"data.prompt.privileged_template must contain {{description}}, got {self.prompt.privileged_template!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self
