"""The toy emotion data set: tiny real clips whose face and voice both carry the emotion.

    paths = make_toy_dataset("data/toy", num=64, seed=0)
    paths.train_manifest, paths.test_manifest, paths.tokenizer_dir, paths.wheel_dir

Each clip is 1-2 s of a drawn face (112x112, 10 fps) speaking with a synthetic voice (16 kHz),
stored as an mp4 with its audio track plus the same audio as WAV. The manifest line holds a
subtitle, an open-set label list of MER emotion-wheel words, an evidence-aware description,
the decomposed visual/audio/emotion cues and the basic-emotion label ``emo``. Every sixth clip
shows one emotion on the face and another in the voice; its labels name both, and
``face_emotion`` / ``voice_emotion`` / ``modalities_agree`` record it. The tokenizer folder is
a small byte-level BPE trained on the set's own text. ``toy_emotion_wheel/`` is the set's own small
emotion-wheel lexicon in the MER file format (``megatron_omni.data.toy_wheel``; it maps every toy
label word), for scoring without the released lexicon. Generation is deterministic by seed and
skipped when the folder already holds a complete set of the same version, size, seed and vocabulary.
"""
from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_omni.data.config import DataConfig
from megatron_omni.data.manifest import ExtractedClues, OmniSample, write_manifest
from megatron_omni.data.template import EMOTION_QUESTION, QWEN_OMNI_SYSTEM_PROMPT, format_target
from megatron_omni.data.tokenizer import build_tokenizer
from megatron_omni.data.toy_media import FaceStyle, Look, VoiceStyle, render_frames, synthesize_voice, write_mp4, write_wav
from megatron_omni.data.toy_wheel import TOY_WHEEL_DIRNAME, write_toy_emotion_wheel
from megatron_omni.data.video import VideoConfig

TOY_VERSION = 3  # 2: the set's own emotion wheel (toy_emotion_wheel/); 3: toy labels placed as the released lexicon places them
FRAME_SIZE = 112
FPS = 10
SAMPLING_RATE = 16000
DURATIONS = (1.0, 1.25, 1.5, 1.75, 2.0)
MISMATCH_EVERY = 6  # every sixth clip shows one emotion on the face and another in the voice
TEST_SHARE = 0.2
TOKENIZER_VOCAB = 768


@dataclass(frozen=True)
class EmotionProfile:
    words: tuple[str, ...]  # MER emotion-wheel words; the first is the basic label
    face: FaceStyle
    voice: VoiceStyle
    visual_clues: tuple[str, ...]
    audio_clues: tuple[str, ...]
    subtitles: tuple[str, ...]


EMOTIONS: dict[str, EmotionProfile] = {
    "happy": EmotionProfile(
        ("happy", "joyful", "cheerful"),
        FaceStyle(mouth_curve=1.0, mouth_open=0.15, brow_raise=0.3, brow_tilt=0.0, eye_open=0.9),
        VoiceStyle(pitch_hz=230, contour_semitones=4, syllables_per_s=5.0, loudness=0.8),
        ("raised mouth corners", "a wide smile", "relaxed open eyes"),
        ("high pitch", "rising intonation", "a fast lively pace", "a loud bright tone"),
        ("We finally made it, this is wonderful!", "I got the job, I can't believe it!",
         "What a lovely day to see you again.", "You remembered my birthday, thank you!"),
    ),
    "sad": EmotionProfile(
        ("sad", "miserable", "depressed"),
        FaceStyle(mouth_curve=-0.8, mouth_open=0.0, brow_raise=0.1, brow_tilt=0.8, eye_open=0.55),
        VoiceStyle(pitch_hz=120, contour_semitones=-4, syllables_per_s=2.0, loudness=0.3),
        ("downturned mouth corners", "inner brows drawn up", "half-closed eyes"),
        ("low pitch", "falling intonation", "a slow pace", "a quiet soft tone"),
        ("She is not coming back, is she?", "I lost everything I worked for.",
         "Nobody called me today.", "It doesn't matter anymore."),
    ),
    "angry": EmotionProfile(
        ("angry", "furious", "annoyed"),
        FaceStyle(mouth_curve=-0.5, mouth_open=0.1, brow_raise=-0.4, brow_tilt=-1.0, eye_open=0.7),
        VoiceStyle(pitch_hz=170, contour_semitones=0, syllables_per_s=5.5, loudness=1.0, breathiness=0.35),
        ("lowered brows pulled together", "a tight downturned mouth", "narrowed eyes"),
        ("a harsh rough tone", "flat forceful intonation", "a fast clipped pace", "very high volume"),
        ("Get out of my office right now!", "How many times do I have to tell you?",
         "You broke it again!", "Stop lying to me!"),
    ),
    "surprised": EmotionProfile(
        ("surprised", "astonished", "amazed"),
        FaceStyle(mouth_curve=0.0, mouth_open=0.9, brow_raise=1.0, brow_tilt=0.0, eye_open=1.35),
        VoiceStyle(pitch_hz=260, contour_semitones=7, syllables_per_s=3.0, loudness=0.75),
        ("raised eyebrows", "wide open eyes", "an open rounded mouth"),
        ("very high pitch", "sharply rising intonation", "short sudden bursts", "a loud tone"),
        ("Wait, you are here?", "No way, that really happened?",
         "Is this all for me?", "You did this by yourself?"),
    ),
    "worried": EmotionProfile(
        ("worried", "anxious", "nervous"),
        FaceStyle(mouth_curve=-0.3, mouth_open=0.05, brow_raise=0.4, brow_tilt=0.9, eye_open=1.0),
        VoiceStyle(pitch_hz=190, contour_semitones=1, syllables_per_s=4.0, loudness=0.4, tremolo=0.05),
        ("raised inner brows", "a slightly tense mouth", "wide alert eyes"),
        ("trembling pitch", "unsteady intonation", "a hurried pace", "a quiet tense tone"),
        ("What if they don't make it in time?", "I hope the test results are fine.",
         "Did you hear anything from him?", "I am not sure this is safe."),
    ),
    "calm": EmotionProfile(
        ("calm", "relaxed", "peaceful"),
        FaceStyle(mouth_curve=0.1, mouth_open=0.0, brow_raise=0.0, brow_tilt=0.0, eye_open=0.85),
        VoiceStyle(pitch_hz=150, contour_semitones=-1, syllables_per_s=3.0, loudness=0.5),
        ("a neutral mouth", "level brows", "a steady gaze"),
        ("moderate pitch", "even intonation", "a steady pace", "moderate volume"),
        ("The meeting starts at ten.", "I will take the bus home.",
         "Let me check the schedule.", "The report is on your desk."),
    ),
}


@dataclass(frozen=True)
class ToyDatasetPaths:
    root: Path
    train_manifest: Path
    test_manifest: Path
    tokenizer_dir: Path
    wheel_dir: Path  # the toy set's own emotion-wheel lexicon (not the released MER one)


def toy_data_config(**overrides) -> DataConfig:
    """Data settings for the toy clips: frames stay 112x112 (Qwen's default minimum of 128 * 28^2
    pixels would upscale them to 336x336) and 2 frames per second, so a clip costs 32 video tokens."""
    return DataConfig(video=VideoConfig(min_pixels=28 * 28, max_pixels=FRAME_SIZE * FRAME_SIZE), **overrides)


def _look(rng: random.Random) -> Look:
    skins = ((224, 172, 140), (198, 134, 98), (141, 85, 56), (240, 200, 170))
    backgrounds = ((70, 90, 120), (110, 130, 100), (130, 110, 140), (90, 90, 90))
    return Look(skin=rng.choice(skins), background=rng.choice(backgrounds), face_scale=rng.uniform(0.9, 1.1),
                center_shift=(rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)))


def _description(face: EmotionProfile, voice: EmotionProfile, visual: list[str], audio: list[str],
                 subtitle: str, words: list[str]) -> str:
    seen = f"The person shows {visual[0]} and {visual[1]}."
    heard = f"The voice has {audio[0]}, {audio[1]} and {audio[2]}."
    said = f'The subtitle says "{subtitle}"'
    if face is voice:
        verdict = f"Face, voice and words agree, so the person feels {' and '.join(words)}."
    else:
        verdict = (f"The face looks {face.words[0]} while the voice sounds {voice.words[0]}; the two "
                   f"disagree, so the person seems {words[0]} and {words[1]} at once.")
    return " ".join((seen, heard, said, verdict))


def toy_sample(index: int, rng: random.Random, clips: Path) -> tuple[OmniSample, dict]:
    """The manifest entry of clip ``index`` and the parameters its media are rendered from."""
    names = sorted(EMOTIONS)
    face_name = rng.choice(names)
    voice_name = face_name
    if index % MISMATCH_EVERY == MISMATCH_EVERY - 1:
        voice_name = rng.choice([n for n in names if n != face_name])
    face, voice = EMOTIONS[face_name], EMOTIONS[voice_name]
    agree = face is voice
    visual = rng.sample(face.visual_clues, 2)
    audio = rng.sample(voice.audio_clues, 3)
    subtitle = rng.choice(voice.subtitles if agree else EMOTIONS["calm"].subtitles)
    words = [face.words[0]] + rng.sample(face.words[1:], 1) if agree else [voice.words[0], face.words[0]]
    sample_id = f"toy_{index:05d}"
    sample = OmniSample(
        id=sample_id, video=clips / f"{sample_id}.mp4", audio=clips / f"{sample_id}.wav",
        subtitle=subtitle, openset=tuple(words),
        description=_description(face, voice, visual, audio, subtitle, words),
        extracted_clues=ExtractedClues(tuple(visual), tuple(audio), tuple(words)),
        emo=voice.words[0],
        extra={"face_emotion": face_name, "voice_emotion": voice_name, "modalities_agree": agree},
    )
    render = {"face": face.face, "voice": voice.voice, "look": _look(rng),
              "duration": rng.choice(DURATIONS), "seed": rng.randrange(2**31)}
    return sample, render


def _write_clip(sample: OmniSample, render: dict) -> None:
    rng = np.random.default_rng(render["seed"])
    audio = synthesize_voice(render["voice"], render["duration"], SAMPLING_RATE, rng)
    frames = render_frames(render["face"], render["look"], render["voice"], render["duration"], FPS, FRAME_SIZE, rng)
    write_mp4(sample.video, frames, FPS, audio, SAMPLING_RATE)
    write_wav(sample.audio, audio, SAMPLING_RATE)


def tokenizer_corpus(samples: list[OmniSample]) -> list[str]:
    """Every text the toy model reads or writes, as often as it does: BPE merges follow frequency,
    so the prompt repeated per sample compresses as well as the answers."""
    texts = [", ".join(profile.words) for profile in EMOTIONS.values()]
    for sample in samples:
        texts += ["system", QWEN_OMNI_SYSTEM_PROMPT, "user", f'Subtitle: "{sample.subtitle}"', EMOTION_QUESTION,
                  f"Reference analysis: {sample.description}", "assistant",
                  format_target(sample.description or "", sample.openset)]
    return texts


def _meta(num: int, seed: int, vocab_size: int) -> dict:
    return {"version": TOY_VERSION, "num": num, "seed": seed, "vocab_size": vocab_size}


def make_toy_dataset(out_dir: str | Path, num: int = 64, seed: int = 0,
                     vocab_size: int = TOKENIZER_VOCAB) -> ToyDatasetPaths:
    """Write (or reuse) ``num`` clips, train/test manifests, the tokenizer and the toy emotion wheel under ``out_dir``.

    ``vocab_size`` bounds the tokenizer (the model's vocabulary must be at least as large); fewer
    merges mean longer token sequences (64 clips: about 69 target tokens at 768, 113 at 512).
    """
    if num < 2:
        raise ValueError(f"the toy data set needs at least 2 clips (one per split), got num={num}")
    root = Path(out_dir)
    paths = ToyDatasetPaths(root, root / "train.jsonl", root / "test.jsonl", root / "tokenizer", root / TOY_WHEEL_DIRNAME)
    meta_file = root / "meta.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()) == _meta(num, seed, vocab_size):
        return paths
    clips = root / "clips"
    if meta_file.is_file():  # a set of another size, seed or version made by this function
        meta_file.unlink()
        shutil.rmtree(clips, ignore_errors=True)
    clips.mkdir(parents=True, exist_ok=True)

    rng = random.Random(seed)
    entries = [toy_sample(index, rng, clips) for index in range(num)]
    for sample, render in entries:
        _write_clip(sample, render)
    samples = [sample for sample, _ in entries]
    order = list(range(num))
    random.Random(seed + 1).shuffle(order)
    num_test = min(num - 1, max(1, round(num * TEST_SHARE)))
    test = set(order[:num_test])
    write_manifest(paths.train_manifest, [s for i, s in enumerate(samples) if i not in test])
    write_manifest(paths.test_manifest, [s for i, s in enumerate(samples) if i in test])
    build_tokenizer(tokenizer_corpus(samples), paths.tokenizer_dir, vocab_size=vocab_size)
    write_toy_emotion_wheel(paths.wheel_dir)
    meta_file.write_text(json.dumps(_meta(num, seed, vocab_size)) + "\n")  # written last: marks the set complete
    return paths
