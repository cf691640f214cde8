"""Tokenizers: the model's own (a local Hugging Face folder) or a small one built from a corpus.

``build_tokenizer`` trains a byte-level BPE with the Qwen2 pre-tokenizer and the Qwen2.5-Omni
special tokens, plus the reasoning tags ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` as
single tokens, and saves a folder that ``AutoTokenizer`` loads as a ``Qwen2Tokenizer``. Training
is deterministic: the same texts give the same files.

``special_token_ids`` reads every id the model config needs from whichever tokenizer is in use;
the placeholder and bracket strings are the tokenizer's own (``modality_tokens``): Qwen2.5-Omni's
``<|AUDIO|>`` / ``<|audio_bos|>``..., Qwen3-Omni's ``<|audio_pad|>`` / ``<|audio_start|>``...
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# Qwen2.5-Omni's control tokens, in the order they get the lowest ids in a built tokenizer.
END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
VISION_BOS = "<|vision_bos|>"
VISION_EOS = "<|vision_eos|>"
IMAGE = "<|IMAGE|>"
VIDEO = "<|VIDEO|>"
REASONING_TAGS = ("<think>", "</think>", "<answer>", "</answer>")



@dataclass(frozen=True)
class ModalityTokens:
    """A tokenizer's placeholder and bracket strings, under the attribute names transformers' omni
    processors read from their tokenizer (the defaults are Qwen2.5-Omni's)."""

    image_token: str = IMAGE
    video_token: str = VIDEO
    audio_token: str = AUDIO
    vision_bos_token: str = VISION_BOS
    vision_eos_token: str = VISION_EOS
    audio_bos_token: str = AUDIO_BOS
    audio_eos_token: str = AUDIO_EOS

    def placeholder(self, medium: str) -> str:
        """One medium's unexpanded block in a prompt: ``image``, ``video`` or ``audio``."""
        if medium == "audio":
            return f"{self.audio_bos_token}{self.audio_token}{self.audio_eos_token}"
        return f"{self.vision_bos_token}{getattr(self, medium + '_token')}{self.vision_eos_token}"

    def control_tokens(self) -> tuple[str, ...]:
        """All control tokens in the order they get the lowest ids in a built tokenizer."""
        return (END_OF_TEXT, IM_START, IM_END, self.audio_token, self.audio_bos_token, self.audio_eos_token,
                self.vision_bos_token, self.vision_eos_token, self.image_token, self.video_token)


QWEN2_5_OMNI_TOKENS = ModalityTokens()
QWEN3_OMNI_TOKENS = ModalityTokens(
    image_token="<|image_pad|>", video_token="<|video_pad|>", audio_token="<|audio_pad|>",
    vision_bos_token="<|vision_start|>", vision_eos_token="<|vision_end|>",
    audio_bos_token="<|audio_start|>", audio_eos_token="<|audio_end|>",
)


def modality_tokens(tokenizer) -> ModalityTokens:
    """The strings the tokenizer names (its ``image_token``, ``audio_bos_token``... attributes, as
    released Qwen-Omni tokenizers carry them); Qwen2.5-Omni's for any it does not name."""
    return ModalityTokens(**{
        f.name: getattr(tokenizer, f.name, None) or getattr(QWEN2_5_OMNI_TOKENS, f.name)
        for f in dataclasses.fields(ModalityTokens)
    })
# Qwen2's pre-tokenizer split: contractions, letter runs, single digits, punctuation, whitespace.
_QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


@dataclass(frozen=True)
class SpecialTokenIds:
    """The token ids a Qwen2.5-Omni thinker config needs, read from the tokenizer."""

    audio_token_id: int
    image_token_id: int
    video_token_id: int
    audio_start_token_id: int
    audio_end_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    im_start_token_id: int
    im_end_token_id: int
    pad_token_id: int
    eos_token_id: int  # end of an assistant turn: generation stops here

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys((self.im_end_token_id, self.pad_token_id)))


def _single_id(tokenizer, token: str) -> int:
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} does not hold {token!r} "
                         f"as one token (it encodes to {ids})")
    return ids[0]


def special_token_ids(tokenizer) -> SpecialTokenIds:
    """Ids of the control tokens (the tokenizer's own modality strings); an error names any token
    the tokenizer lacks."""
    t = modality_tokens(tokenizer)
    ids = {token: _single_id(tokenizer, token) for token in t.control_tokens()}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[END_OF_TEXT]
    return SpecialTokenIds(
        audio_token_id=ids[t.audio_token], image_token_id=ids[t.image_token], video_token_id=ids[t.video_token],
        audio_start_token_id=ids[t.audio_bos_token], audio_end_token_id=ids[t.audio_eos_token],
        vision_start_token_id=ids[t.vision_bos_token], vision_end_token_id=ids[t.vision_eos_token],
        im_start_token_id=ids[IM_START], im_end_token_id=ids[IM_END],
        pad_token_id=pad, eos_token_id=ids[IM_END],
    )


def load_tokenizer(path: str | Path):
    """``AutoTokenizer`` from a local folder (the model directory or a built toy tokenizer)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"no tokenizer folder at {path} (tokenizer_config.json missing)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def build_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 768,
                    tokens: ModalityTokens = QWEN2_5_OMNI_TOKENS) -> Path:
    """Train a byte-level BPE on ``texts`` and save a Hugging Face tokenizer folder whose modality
    strings are ``tokens`` (Qwen3-Omni's with QWEN3_OMNI_TOKENS)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    control = tokens.control_tokens()
    minimum = 256 + len(control)
    if vocab_size <= minimum:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges (bytes + control tokens = {minimum})")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(REASONING_TAGS),
        special_tokens=list(control),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    # Not "special": decoding a completion with skip_special_tokens must keep the tags.
    tokenizer.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in REASONING_TAGS])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": END_OF_TEXT,
        "unk_token": None,
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": dataclasses.asdict(tokens),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out
