"""The built tokenizer loads with AutoTokenizer and holds the Qwen2.5-Omni special tokens."""
from __future__ import annotations

import pytest

from megatron_omni.data.tokenizer import (
    QWEN2_5_OMNI_TOKENS,
    REASONING_TAGS,
    build_tokenizer,
    load_tokenizer,
    special_token_ids,
)


def test_special_token_ids(toy_tokenizer):
    ids = special_token_ids(toy_tokenizer)
    values = [ids.audio_token_id, ids.image_token_id, ids.video_token_id, ids.audio_start_token_id,
              ids.audio_end_token_id, ids.vision_start_token_id, ids.vision_end_token_id, ids.im_start_token_id,
              ids.im_end_token_id, ids.pad_token_id]
    assert len(set(values)) == len(values)
    assert toy_tokenizer.convert_ids_to_tokens(ids.video_token_id) == "<|VIDEO|>"
    assert toy_tokenizer.convert_ids_to_tokens(ids.vision_start_token_id) == "<|vision_bos|>"
    assert ids.eos_token_id == ids.im_end_token_id == toy_tokenizer.eos_token_id
    assert ids.pad_token_id == toy_tokenizer.pad_token_id
    assert ids.stop_token_ids == (ids.im_end_token_id, ids.pad_token_id)
    # The attribute names the Qwen2.5-Omni processor reads.
    assert toy_tokenizer.video_token == "<|VIDEO|>" and toy_tokenizer.audio_token_id == ids.audio_token_id


def test_reasoning_tags_are_single_tokens_that_survive_decoding(toy_tokenizer):
    text = "<think>The voice is loud.</think><answer>angry</answer>"
    ids = toy_tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    tokens = toy_tokenizer.convert_ids_to_tokens(ids)
    for tag in REASONING_TAGS:
        assert tag in tokens
    assert toy_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_build_is_deterministic_and_small(tmp_path):
    texts = ["The person smiles widely.", "A loud harsh voice.", "sad, miserable"] * 20
    first = build_tokenizer(texts, tmp_path / "a", vocab_size=300)
    second = build_tokenizer(texts, tmp_path / "b", vocab_size=300)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    tokenizer = load_tokenizer(first)
    assert len(tokenizer) <= 300
    assert tokenizer.decode(tokenizer("The person smiles.")["input_ids"]) == "The person smiles."


def test_a_tokenizer_without_the_control_tokens_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    plain = Tokenizer(models.BPE())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel()
    plain.train_from_iterator(["hello world"] * 5, trainers.BpeTrainer(vocab_size=280, show_progress=False,
                                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from transformers import PreTrainedTokenizerFast

    with pytest.raises(ValueError, match=r"does not hold '<\|endoftext\|>' as one token"):
        special_token_ids(PreTrainedTokenizerFast(tokenizer_object=plain))
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json missing"):
        load_tokenizer(tmp_path)
    assert len(set(QWEN2_5_OMNI_TOKENS.control_tokens())) == 10

