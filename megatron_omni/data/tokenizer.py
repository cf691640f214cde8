"""Tokenizers: the model's own (a local Hugging Face folder) or a small one built from a corpus.

``build_tokenizer`` trains a byte-level BPE with the Qwen2 pre-tokenizer and the Qwen2.5-Omni
special tokens, plus the reasoning tags ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` as
single tokens, and saves a folder that ``AutoTokenizer`` loads as a ``Qwen2Tokenizer``. Training
is deterministic: the same texts give the same files.

``special_token_ids`` reads every id the model config needs from whichever tokenizer is in use.
"""
from __future__ import annotations

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
CONTROL_TOKENS = (END_OF_TEXT, IM_START, IM_END, AUDIO, AUDIO_BOS, AUDIO_EOS, VISION_BOS, VISION_EOS, IMAGE, VIDEO)
REASONING_TAGS = ("<think>", "</think>", "<answer>", "</answer>")

# The attribute names the Qwen2.5-Omni processor reads from its tokenizer.
_MODALITY_TOKEN_ATTRIBUTES = {
    "image_token": IMAGE, "audio_token": AUDIO, "video_token": VIDEO,
    "vision_bos_token": VISION_BOS, "vision_eos_token": VISION_EOS,
    "audio_bos_token": AUDIO_BOS, "audio_eos_token": AUDIO_EOS,
}
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
    """Ids of the Qwen2.5-Omni control tokens; an error names any token the tokenizer lacks."""
    ids = {token: _single_id(tokenizer, token) for token in CONTROL_TOKENS}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[END_OF_TEXT]
    return SpecialTokenIds(
        audio_token_id=ids[AUDIO], image_token_id=ids[IMAGE], video_token_id=ids[VIDEO],
        audio_start_token_id=ids[AUDIO_BOS], audio_end_token_id=ids[AUDIO_EOS],
        vision_start_token_id=ids[VISION_BOS], vision_end_token_id=ids[VISION_EOS],
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


def build_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 768) -> Path:
    """Train a byte-level BPE on ``texts`` and save a Hugging Face tokenizer folder."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    minimum = 256 + len(CONTROL_TOKENS)
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
        special_tokens=list(CONTROL_TOKENS),
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
        "extra_special_tokens": _MODALITY_TOKEN_ATTRIBUTES,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out
