"""The processor against transformers' Qwen2_5OmniProcessor on real toy clips, and its targets.

transformers' video processor imports torchvision, which does not load beside this CPU torch; the
video side of the oracle is the stand-in in conftest.py (transformers' per-frame image processor,
stacked into temporal patches). Everything else -- placeholder expansion, chunk interleaving,
tokenisation, Whisper features -- is transformers' own code.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_omni.data.audio import load_audio_file, load_video_audio
from megatron_omni.data.batch import SkippedSample, pad
from megatron_omni.data.dataset import OmniDataset
from megatron_omni.data.errors import DataError, MediaError, SampleTooLongError
from megatron_omni.data.image import ImageConfig
from megatron_omni.data.manifest import OmniSample, load_manifest, write_manifest
from megatron_omni.data.media import SampleMedia, load_media
from megatron_omni.data.mel import log_mel_spectrogram
from megatron_omni.data.processor import attach_completion, chunk_lengths
from megatron_omni.data.template import PromptConfig, format_target, render_prompt
from megatron_omni.data.video import DecodedVideo, read_video, video_features

# The chat template published with Qwen2.5-Omni-7B (its chat_template.json): the format oracle.
QWEN25_OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def clips(toy_set):
    return load_manifest(toy_set.train_manifest)


@pytest.mark.parametrize("has_image, has_video, has_audio", [
    (False, True, True), (False, True, False), (False, False, True), (True, True, True), (True, False, True),
])
def test_prompt_matches_the_published_chat_template(toy_tokenizer, has_image, has_video, has_audio):
    cfg = PromptConfig()
    content = ([{"type": "image"}] if has_image else []) + ([{"type": "video"}] if has_video else [])
    content += [{"type": "audio"}] if has_audio else []
    content.append({"type": "text", "text": 'Subtitle: "We did it!"\n' + cfg.question})
    messages = [{"role": "system", "content": [{"type": "text", "text": cfg.system_prompt}]},
                {"role": "user", "content": content}]
    expected = toy_tokenizer.apply_chat_template(messages, chat_template=QWEN25_OMNI_CHAT_TEMPLATE,
                                                 add_generation_prompt=True, tokenize=False)
    assert render_prompt(has_image=has_image, has_video=has_video, has_audio=has_audio, subtitle="We did it!",
                         cfg=cfg) == expected


def _reference(hf_processor, prompt, frames=None, sample_fps=None, waveform=None, interleave=False, image=None,
               image_bounds: ImageConfig | None = None):
    kwargs = {}
    if image is not None:
        bounds = {"shortest_edge": image_bounds.min_pixels, "longest_edge": image_bounds.max_pixels}
        kwargs.update(images=[image], images_kwargs={"size": bounds})
    if frames is not None:
        kwargs.update(videos=[frames], videos_kwargs={"fps": sample_fps})
    if waveform is not None:
        kwargs["audio"] = [waveform]
        if interleave:
            kwargs.update(audio_from_video_indices=[0], load_audio_from_video=True)
    return hf_processor(text=[prompt], return_tensors="pt", **kwargs)


def _check_media(ours, reference):
    media = ours.media
    if media.image is not None:
        assert torch.equal(reference["image_grid_thw"][0], torch.tensor(media.image.grid_thw))
        torch.testing.assert_close(media.image.pixel_values, reference["pixel_values"], atol=1e-5, rtol=0)
    if media.video is not None:
        assert torch.equal(reference["video_grid_thw"][0], torch.tensor(media.video.grid_thw))
        torch.testing.assert_close(media.video.pixel_values, reference["pixel_values_videos"], atol=1e-5, rtol=0)
        assert media.video.second_per_grid == pytest.approx(reference["video_second_per_grid"][0].item())
    if media.audio_features is not None:
        frames = int(reference["feature_attention_mask"][0].sum())
        assert frames == media.audio_frames
        torch.testing.assert_close(media.audio_features, reference["input_features"][0, :, :frames], atol=1e-5, rtol=0)


def _check_positions(hf_thinker, ours, reference, interleave):
    positions, delta = hf_thinker.get_rope_index(
        reference["input_ids"], image_grid_thw=reference.get("image_grid_thw"),
        video_grid_thw=reference.get("video_grid_thw"),
        attention_mask=reference["attention_mask"], use_audio_in_video=interleave,
        audio_seqlens=reference["feature_attention_mask"].sum(-1) if "feature_attention_mask" in reference else None,
        second_per_grids=reference.get("video_second_per_grid"))
    assert torch.equal(ours.position_ids, positions[:, 0])
    assert ours.rope_delta == delta.item()


@pytest.mark.parametrize("interleave", [True, False])
def test_video_with_audio_matches_transformers(make_processor, hf_processor, hf_thinker, clips, interleave):
    processor = make_processor(use_audio_in_video=interleave)
    for sample in clips[:3]:  # clips of different durations
        ours = processor.process(sample, load_media(sample, processor.cfg), with_target=False)
        decoded = read_video(sample.video, processor.cfg.video)
        waveform = load_audio_file(sample.audio, processor.cfg.audio)
        prompt = render_prompt(has_video=True, has_audio=not interleave, subtitle=sample.subtitle,
                               cfg=processor.cfg.prompt)
        reference = _reference(hf_processor, prompt, decoded.frames.numpy(), decoded.sample_fps, waveform, interleave)
        assert ours.input_ids.tolist() == reference["input_ids"][0].tolist()
        _check_media(ours, reference)
        _check_positions(hf_thinker, ours, reference, interleave)


@pytest.mark.parametrize("frames, seconds", [(10, 5.0), (16, 3.1), (6, 7.5)])
def test_long_interleaving_matches_transformers(make_processor, hf_processor, hf_thinker, frames, seconds):
    """Clips longer than one 2-second chunk: several interleaved video/audio chunks."""
    processor = make_processor()
    rng = np.random.default_rng(frames)
    video = rng.integers(0, 256, (frames, 84, 112, 3), dtype=np.uint8)
    waveform = (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
    sample_fps = frames / seconds
    media = SampleMedia(video=video_features(DecodedVideo(torch.from_numpy(video), sample_fps), processor.cfg.video),
                        audio_features=log_mel_spectrogram(waveform, processor.cfg.audio), audio_in_video=True)
    sample = OmniSample(id="synthetic", video=Path("unused.mp4"), audio=None, subtitle="Long clip.")
    ours = processor.process(sample, media, with_target=False)
    prompt = render_prompt(has_video=True, has_audio=False, subtitle=sample.subtitle, cfg=processor.cfg.prompt)
    reference = _reference(hf_processor, prompt, video, sample_fps, waveform, interleave=True)
    assert ours.input_ids.tolist() == reference["input_ids"][0].tolist()
    _check_media(ours, reference)
    _check_positions(hf_thinker, ours, reference, interleave=True)


def test_video_only_and_audio_only_match_transformers(make_processor, hf_processor, hf_thinker, clips):
    processor = make_processor(audio_from_video=False)
    sample = clips[0]
    video_only = dataclasses.replace(sample, audio=None)
    ours = processor.process(video_only, load_media(video_only, processor.cfg), with_target=False)
    assert ours.media.audio_features is None
    decoded = read_video(sample.video, processor.cfg.video)
    prompt = render_prompt(has_video=True, has_audio=False, subtitle=sample.subtitle, cfg=processor.cfg.prompt)
    reference = _reference(hf_processor, prompt, decoded.frames.numpy(), decoded.sample_fps)
    assert ours.input_ids.tolist() == reference["input_ids"][0].tolist()
    _check_media(ours, reference)
    _check_positions(hf_thinker, ours, reference, interleave=False)

    audio_only = dataclasses.replace(sample, video=None)
    ours = processor.process(audio_only, load_media(audio_only, processor.cfg), with_target=False)
    prompt = render_prompt(has_video=False, has_audio=True, subtitle=sample.subtitle, cfg=processor.cfg.prompt)
    reference = _reference(hf_processor, prompt, waveform=load_audio_file(sample.audio, processor.cfg.audio))
    assert ours.input_ids.tolist() == reference["input_ids"][0].tolist()
    _check_media(ours, reference)


def _write_image(path: Path, height: int, width: int, mode: str) -> Path:
    from PIL import Image

    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(height * width).integers(0, 256, (height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)
    return path


@pytest.mark.parametrize("name, height, width, mode, with_video", [
    ("alpha.png", 50, 75, "RGBA", False),  # composited onto white, upscaled to 56 x 84
    ("gray.jpg", 130, 100, "L", False),  # grey to RGB, downscaled to the 84 x 56 of max_pixels
    ("exact.png", 56, 56, "RGB", True),  # no resize; beside a video with its interleaved audio
])
def test_image_sample_matches_transformers(make_processor, hf_processor, hf_thinker, clips, tmp_path,
                                           name, height, width, mode, with_video):
    """A manifest-style sample with an image file and audio (and a video): tokens, pixels and
    positions equal Qwen2_5OmniProcessor's (with transformers' PIL image processor) on the same file."""
    from PIL import Image

    bounds = ImageConfig(min_pixels=56 * 56, max_pixels=2 * 56 * 56)
    processor = make_processor(image=bounds)
    sample = dataclasses.replace(clips[0], image=_write_image(tmp_path / name, height, width, mode),
                                 video=clips[0].video if with_video else None)
    ours = processor.process(sample, load_media(sample, processor.cfg), with_target=False)
    prompt = render_prompt(has_image=True, has_video=with_video, has_audio=not with_video, subtitle=sample.subtitle,
                           cfg=processor.cfg.prompt)
    video = read_video(sample.video, processor.cfg.video) if with_video else None
    with Image.open(sample.image) as image:
        reference = _reference(hf_processor, prompt, video.frames.numpy() if video else None,
                               video.sample_fps if video else None, load_audio_file(sample.audio, processor.cfg.audio),
                               interleave=with_video, image=image, image_bounds=bounds)
    assert ours.input_ids.tolist() == reference["input_ids"][0].tolist()
    assert ours.media.image.grid_thw[0] == 1 and (ours.input_ids == processor.token_ids.image_token_id).sum() > 0
    _check_media(ours, reference)
    _check_positions(hf_thinker, ours, reference, interleave=with_video)
    batch = pad([ours])
    assert torch.equal(batch.model_kwargs()["pixel_values"], ours.media.image.pixel_values)
    assert batch.image_grid_thw.tolist() == [list(ours.media.image.grid_thw)]


def test_bad_image_names_the_file_and_is_skipped_when_asked(make_processor, toy_set, tmp_path):
    """An ``image`` manifest field: resolved beside the manifest, written back as given; a file PIL
    cannot read is a MediaError naming it and the sample, or a skipped sample with skip_bad_samples."""
    good = _write_image(tmp_path / "face.png", 56, 56, "RGB")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:120])
    manifest = tmp_path / "images.jsonl"
    lines = [{"image": name, "subtitle": "hi"} for name in ("face.png", "junk.png", "cut.png", "missing.png")]
    manifest.write_text("".join(f"{json.dumps(line)}\n" for line in lines))
    samples = load_manifest(manifest)
    assert [s.id for s in samples] == ["face", "junk", "cut", "missing"] and samples[0].image == good
    assert load_manifest(write_manifest(tmp_path / "again.jsonl", samples)) == [
        dataclasses.replace(s, source=s.source.replace("images.jsonl", "again.jsonl")) for s in samples]
    processor = make_processor()
    for sample, reason in zip(samples[1:], ("cannot decode image", "cannot decode image", "image file not found")):
        with pytest.raises(MediaError, match=reason) as info:
            load_media(sample, processor.cfg)
        assert str(sample.image) in str(info.value) and sample.source in str(info.value)
    items = OmniDataset(samples, make_processor(skip_bad_samples=True), with_target=False)
    assert items[0].media.image.grid_thw == (1, 4, 4) and not isinstance(items[0], SkippedSample)
    for sample, item in zip(samples[1:], list(items)[1:]):
        assert isinstance(item, SkippedSample) and str(sample.image) in item.reason


def test_audio_from_the_video_track(make_processor, clips):
    """Without an audio file the video's own track is decoded and interleaved."""
    processor = make_processor()
    sample = dataclasses.replace(clips[1], audio=None)
    media = load_media(sample, processor.cfg)
    assert media.audio_in_video
    track = load_video_audio(sample.video, processor.cfg.audio)
    assert media.audio_frames == -(-track.shape[0] // processor.cfg.audio.hop_length)


def test_target_and_loss_mask(make_processor, toy_tokenizer, clips):
    processor = make_processor()
    sample = clips[0]
    out = processor.process(sample, load_media(sample, processor.cfg))
    target = toy_tokenizer(format_target(sample.description, sample.openset), add_special_tokens=False)["input_ids"]
    ids = out.input_ids.tolist()
    assert ids[out.prompt_length:] == target + [processor.token_ids.im_end_token_id]
    assert torch.equal(out.labels[:-1], out.input_ids[1:])
    trained = out.loss_mask.nonzero().view(-1)
    # Exactly the predictions of the target tokens and of the closing <|im_end|> carry loss.
    assert trained.tolist() == list(range(out.prompt_length - 1, out.length - 1))
    decoded = toy_tokenizer.decode(out.labels[out.loss_mask.bool()], skip_special_tokens=True)
    assert decoded.startswith("<think>") and decoded.endswith("</answer>")


def test_completion_and_privileged_teacher_align(make_processor, hf_thinker, clips, toy_tokenizer):
    processor = make_processor()
    sample = clips[2]
    media = load_media(sample, processor.cfg)
    student = processor.process(sample, media, with_target=False)
    teacher = processor.process(sample, media, with_target=False, privileged=True)
    completion = processor.target_ids(sample)
    student_full = attach_completion(student, completion)
    teacher_full = attach_completion(teacher, completion)
    assert teacher.prompt_length > student.prompt_length
    assert sample.description in toy_tokenizer.decode(teacher.input_ids)
    for full in (student_full, teacher_full):
        assert full.input_ids[full.prompt_length:].tolist() == completion
        assert int(full.loss_mask.sum()) == len(completion)
        # Positions of prompt + completion equal the reference's on the whole sequence.
        reference, _ = hf_thinker.get_rope_index(
            full.input_ids[None], video_grid_thw=torch.tensor([media.video.grid_thw]),
            attention_mask=torch.ones(1, full.length, dtype=torch.long), use_audio_in_video=True,
            audio_seqlens=torch.tensor([media.audio_frames]),
            second_per_grids=torch.tensor([media.video.second_per_grid]))
        assert torch.equal(full.position_ids, reference[:, 0])
    # The completion tokens see the same labels and loss in both views.
    assert torch.equal(student_full.labels[student_full.loss_mask.bool()], teacher_full.labels[teacher_full.loss_mask.bool()])


def test_content_errors_name_the_sample(make_processor, clips):
    sample = clips[0]
    processor = make_processor(max_seq_length=50)
    media = load_media(sample, processor.cfg)
    with pytest.raises(SampleTooLongError, match=rf"{sample.id} has \d+ tokens, more than data.max_seq_length=50"):
        processor.process(sample, media)
    processor = make_processor()
    with pytest.raises(DataError, match=rf"{sample.source}: sample {sample.id} has no 'description'"):
        processor.process(dataclasses.replace(sample, description=None), media)
    with pytest.raises(DataError, match="field 'subtitle' .* contains a control token"):
        processor.process(dataclasses.replace(sample, subtitle="hi <|VIDEO|>"), media, with_target=False)


def test_chunk_lengths_follow_the_reference_rule():
    assert chunk_lengths(range(120), 50) == [50, 50, 20]
    assert chunk_lengths([0.0, 0.0, 37.5, 37.5, 75.0, 75.0], 50) == [4, 2]
    # A jump over a whole chunk closes one chunk per element, as the reference does.
    assert chunk_lengths([0, 120, 130], 50) == [1, 1, 1]


def test_image_bounds_are_data_settings():
    from megatron_omni.config import ConfigError, load_config
    from megatron_omni.data.config import DataConfig

    cfg = load_config(None, ["image.max_pixels=6272"], cls=DataConfig)
    assert (cfg.image.min_pixels, cfg.image.max_pixels) == (4 * 28 * 28, 6272)
    with pytest.raises(ConfigError, match="data.image.min_pixels .* exceeds max_pixels"):
        load_config(None, ["image.min_pixels=999999999"], cls=DataConfig).validate("data")
