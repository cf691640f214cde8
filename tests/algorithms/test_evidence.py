"""Evidence sentences -> exact token spans, on a crafted completion and a byte-level tokenizer."""
import torch

from megatron_omni.algorithms.evidence import evidence_token_masks, token_char_spans
from megatron_omni.rewards.cue_recovery import EvidenceSentence


class ByteTokenizer:
    """One token per UTF-8 byte: per-token decoding would break multi-byte characters."""

    def decode(self, ids, skip_special_tokens=False):
        return bytes(ids).decode("utf-8", errors="ignore")


def test_spans_follow_prefix_decoding_with_multibyte_characters():
    text = "a é b"
    ids = list(text.encode())
    spans = token_char_spans(ByteTokenizer(), ids)
    assert len(spans) == len(ids) == 6
    # 'é' is two bytes: its first byte decodes to nothing, its second completes the character.
    assert spans == [(0, 1), (1, 2), (2, 2), (2, 3), (3, 4), (4, 5)]


def test_crafted_completion_evidence_spans():
    completion = "<think>She smiles. Her voice rises. It is calm.</think><answer>happy</answer>"
    ids = list(completion.encode())
    spans = token_char_spans(ByteTokenizer(), ids)
    visual = completion.index("She smiles.")
    audio = completion.index("Her voice rises.")
    sentences = [
        EvidenceSentence(visual, visual + len("She smiles."), "visual"),
        EvidenceSentence(audio, audio + len("Her voice rises."), "audio"),
        EvidenceSentence(completion.index("It is"), completion.index("</think>"), "neutral"),
    ]
    masks = evidence_token_masks(spans, sentences)
    as_text = {m: bytes(t for t, keep in zip(ids, mask.tolist()) if keep).decode() for m, mask in masks.items()}
    assert as_text == {"visual": "She smiles.", "audio": "Her voice rises."}
    assert not (masks["visual"] & masks["audio"]).any()
    assert masks["visual"].dtype == torch.bool
