"""Settings of the data pipeline (``data``) and of a run's sample source (``dataset``). The
time alignment of audio and video (TMRoPE ids per second, chunk length) is the model's
(``omni.position_id_per_seconds`` / ``omni.seconds_per_chunk``) and reaches the processor from there."""
from __future__ import annotations

from dataclasses import dataclass, field

from megatron_omni.config import ConfigError
from megatron_omni.data.audio import AudioConfig
from megatron_omni.data.image import ImageConfig
from megatron_omni.data.template import PromptConfig
from megatron_omni.data.video import VideoConfig


@dataclass
class DataConfig:
    video: VideoConfig = field(default_factory=VideoConfig)
    # Still images go through the video's vision tower; only their size bounds differ.
    image: ImageConfig = field(default_factory=ImageConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    # A sample with video and audio interleaves them in time chunks on shared TMRoPE time ids
    # (the audio is taken to be the video's soundtrack); false puts a separate audio block after it.
    use_audio_in_video: bool = True
    # A sample without an audio file uses the video's own audio track, when it has one.
    audio_from_video: bool = True
    max_seq_length: int | None = None
    # A sample with bad media, without a label the algorithm needs, or over the run's length
    # budget is reported, counted and replaced (training) or left out (evaluation) instead of
    # stopping the run; docs/DATA.md "Bad samples".
    skip_bad_samples: bool = False
    # With skips, the run stops once more than this share of the samples seen so far was skipped.
    max_skipped_fraction: float = 0.1
    # Micro-batches as one packed THD sequence (cu_seqlens) instead of a padded [b, s] block.
    packing: bool = False
    # Sequence length multiple (tensor/context parallelism need divisible lengths).
    pad_to_multiple_of: int = 1
    num_workers: int = 0

    def validate(self, key: str) -> None:
        problems = []
        if self.video.fps <= 0:
            problems.append(f"{key}.video.fps must be positive, got {self.video.fps}")
        # Against the bounds of any family (an unset bound is the family's): the processor checks the run's.
        low, high = self.video.pixel_bounds()
        if low > high:
            problems.append(f"{key}.video.min_pixels ({low}) exceeds max_pixels ({high})")
        if self.image.min_pixels > self.image.max_pixels:
            problems.append(f"{key}.image.min_pixels ({self.image.min_pixels}) exceeds max_pixels ({self.image.max_pixels})")
        if self.video.min_frames > self.video.max_frames:
            problems.append(f"{key}.video.min_frames ({self.video.min_frames}) exceeds max_frames ({self.video.max_frames})")
        if not 0.0 <= self.max_skipped_fraction <= 1.0:
            problems.append(f"{key}.max_skipped_fraction must lie in [0, 1], got {self.max_skipped_fraction}")
        if self.pad_to_multiple_of < 1:
            problems.append(f"{key}.pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")
        if self.num_workers < 0:
            problems.append(f"{key}.num_workers must be >= 0, got {self.num_workers}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            problems.append(f"{key}.max_seq_length must be positive, got {self.max_seq_length}")
        if "{description}" not in self.prompt.privileged_template:
            problems.append(f"{key}.prompt.privileged_template must contain {{description}}, "
                            f"got {self.prompt.privileged_template!r}")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class DatasetConfig:
    """Where a run's samples come from: manifests and the tokenizer, or the generated toy set."""

    train_manifest: str | None = None
    test_manifest: str | None = None
    tokenizer_dir: str | None = None
    # With no manifests given, generate the toy emotion set here and train on it.
    toy_dir: str = "data_toy"
    toy_num_clips: int = 64
    toy_seed: int = 0

    def validate(self, key: str) -> None:
        if self.toy_num_clips < 2:
            raise ConfigError(f"{key}.toy_num_clips must be >= 2 (a train and a test split), got {self.toy_num_clips}")
        if self.train_manifest is not None and self.tokenizer_dir is None:
            raise ConfigError(f"{key}.tokenizer_dir must name the tokenizer folder (the model directory) for a custom manifest")
