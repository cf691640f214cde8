"""OPPO's Omni-Perception Reward: R = w_ew R_ew + w_format R_format + w_perc R_perc + w_coh R_coh."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from megatron_omni.parallel.device import resolve_device
from megatron_omni.rewards.config import RewardConfig
from megatron_omni.rewards.cue_recovery import EvidenceSentence, classify_sentences, recovery_score
from megatron_omni.rewards.emotion_wheel_f1 import emotion_wheel_f1
from megatron_omni.text.completion import format_reward, parse_completion
from megatron_omni.text.embeddings import EmbeddingCache, SentenceEncoder, shared_encoder
from megatron_omni.text.lexicon import EmotionWheelLexicon
from megatron_omni.text.sentences import Sentence, split_sentences
from megatron_omni.text.wordlists import parse_emotion_words

CLUE_FIELDS = {"visual": "visual_clues", "audio": "audio_clues", "emotions": "reasoning_emotions"}


@dataclass(frozen=True)
class _Clues:
    visual: list[str]
    audio: list[str]
    emotions: list[str]


def _sample_clues(sample: dict, index: int) -> tuple[list[str], _Clues]:
    if "openset" not in sample:
        raise KeyError(f"sample {index}: missing field 'openset'")
    clues = sample.get("extracted_clues")
    if not isinstance(clues, dict):
        raise KeyError(f"sample {index}: 'extracted_clues' must be a dict with "
                       f"{sorted(CLUE_FIELDS.values())}, got {type(clues).__name__}")
    lists = {}
    for key, field in CLUE_FIELDS.items():
        value = clues.get(field, [])
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise TypeError(f"sample {index}: extracted_clues.{field} must be a list of strings")
        lists[key] = [v.strip() for v in value if v.strip()]
    return parse_emotion_words(sample["openset"]), _Clues(**lists)


class OmniPerceptionReward:
    """Rewards for a batch of completions; every term is returned so the trainer can log it."""

    def __init__(self, config: RewardConfig, lexicon: EmotionWheelLexicon | None = None,
                 encoder: SentenceEncoder | None = None):
        if lexicon is None and config.wheel_dir is None:
            raise ValueError("reward.wheel_dir must name the MER emotion-wheel lexicon folder")
        self.config = config
        self.lexicon = lexicon or EmotionWheelLexicon.from_dir(config.wheel_dir)
        self.device = resolve_device(config.device)
        self.encoder = encoder or shared_encoder(config.embedding_model, str(self.device))

    def compute(self, completions: Sequence[str], samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """{"ew", "format", "perc", "coh", "total"}: float32 tensors of shape [len(completions)]."""
        if len(completions) != len(samples):
            raise ValueError(f"{len(completions)} completions but {len(samples)} samples")
        labels = [_sample_clues(sample, i) for i, sample in enumerate(samples)]
        parsed = [parse_completion(text) for text in completions]
        sentences = [[s.text for s in split_sentences(p.think)] for p in parsed]
        # One encode call for every unique sentence and cue of the step.
        cache = EmbeddingCache(self.encoder)
        cache.prefetch([t for group in sentences for t in group]
                       + [cue for _, clues in labels for cue in clues.visual + clues.audio + clues.emotions])
        tau = self.config.tau
        terms: dict[str, list[float]] = {"ew": [], "format": [], "perc": [], "coh": []}
        for text, completion, sentence_texts, (openset, clues) in zip(completions, parsed, sentences, labels):
            answer = parse_emotion_words(completion.answer or "")
            embedded = cache.embed(sentence_texts)
            terms["ew"].append(emotion_wheel_f1(answer, openset, self.lexicon, self.config.wheel_level))
            terms["format"].append(format_reward(text))
            terms["perc"].append(recovery_score(embedded, [cache.embed(clues.visual), cache.embed(clues.audio)], tau))
            terms["coh"].append(recovery_score(embedded, [cache.embed(clues.emotions)], tau))
        rewards = {name: torch.tensor(values, dtype=torch.float32, device=self.device) for name, values in terms.items()}
        c = self.config
        rewards["total"] = (c.weight_ew * rewards["ew"] + c.weight_format * rewards["format"]
                            + c.weight_perc * rewards["perc"] + c.weight_coh * rewards["coh"])
        return rewards

    def evidence_sentences(self, completion: str, sample: dict) -> list[EvidenceSentence]:
        """The reasoning sentences of a completion as character spans labelled visual/audio/neutral.

        Offsets index into `completion`; the trainer maps them to token spans.
        """
        _, clues = _sample_clues(sample, 0)
        parsed = parse_completion(completion)
        pieces: list[Sentence] = split_sentences(parsed.think)
        cache = EmbeddingCache(self.encoder)
        cache.prefetch([s.text for s in pieces] + clues.visual + clues.audio)
        labels = classify_sentences(cache.embed([s.text for s in pieces]), cache.embed(clues.visual),
                                    cache.embed(clues.audio), self.config.evidence_threshold)
        offset = parsed.think_start
        return [EvidenceSentence(offset + s.start, offset + s.end, label) for s, label in zip(pieces, labels)]
