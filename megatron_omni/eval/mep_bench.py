"""MEP-Bench-style perception diagnostics (OPPO's benchmark has no public definition; this is
the reading documented in docs/EVALUATION.md).

- Utilization: recall of the ground-truth visual/audio cues in the reasoning (a cue counts when
  some reasoning clause has cosine >= 0.6 to it) and precision of the reasoning's claims about a
  modality (a claim counts when it has cosine >= 0.6 to a ground-truth cue of that modality).
- Faithfulness: generation is re-run with one modality masked; the share of claims (and of
  sentences holding such a claim) about the masked modality. Lower is more faithful.
Claims come from a pluggable extractor: a sentence-level cue-vocabulary matcher offline, or an LLM.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch

from megatron_omni.eval.generation import GenerateFn
from megatron_omni.eval.llm_endpoint import ChatEndpoint
from megatron_omni.eval.metrics import safe_ratio
from megatron_omni.text.completion import parse_completion
from megatron_omni.text.embeddings import EmbeddingCache, SentenceEncoder
from megatron_omni.text.modalities import MODALITIES
from megatron_omni.text.sentences import split_sentences

CUE_FIELDS = {"visual": "visual_clues", "audio": "audio_clues"}

# Word stems that mark a clause as describing what is seen or heard.
VISUAL_STEMS = (
    "face", "facial", "expression", "eye", "brow", "eyebrow", "gaze", "glanc", "stare", "glar", "smil",
    "frown", "grin", "grimac", "mouth", "lip", "forehead", "cheek", "nod", "head", "posture", "gesture",
    "body", "hand", "arm", "shoulder", "tear", "blink", "wrinkl", "clench", "scene", "video", "visual",
    "appear", "wearing", "dressed", "lean", "slump", "hunch",
)
AUDIO_STEMS = (
    "voice", "vocal", "tone", "pitch", "intonation", "speech", "speak", "spoke", "pace", "volume", "loud",
    "whisper", "shout", "yell", "scream", "sigh", "laugh", "sob", "audio", "sound", "accent", "stutter",
    "paus", "rhythm", "timbre", "murmur", "mutter", "monoton", "tremul",
)


@dataclass(frozen=True)
class Claim:
    text: str
    sentence: int  # index of the sentence that holds the claim
    modalities: frozenset[str]  # the modalities it describes (possibly none)


class ClaimExtractor(Protocol):
    def __call__(self, reasoning: str) -> list[Claim]:
        """The claims of a reasoning text, each tagged with the modalities it is about."""


def _stem_pattern(stems: Sequence[str]) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(map(re.escape, stems)) + r")\w*", re.IGNORECASE)


class KeywordClaimExtractor:
    """Offline default: each clause of each sentence is a claim, about the modalities whose cue
    vocabulary it uses."""

    def __init__(self, visual_stems: Sequence[str] = VISUAL_STEMS, audio_stems: Sequence[str] = AUDIO_STEMS):
        self.patterns = {"visual": _stem_pattern(visual_stems), "audio": _stem_pattern(audio_stems)}

    def __call__(self, reasoning: str) -> list[Claim]:
        claims = []
        for index, sentence in enumerate(split_sentences(reasoning, at_commas=False)):
            for clause in split_sentences(sentence.text):
                tags = frozenset(m for m, pattern in self.patterns.items() if pattern.search(clause.text))
                claims.append(Claim(clause.text, index, tags))
        return claims


CLAIM_PROMPT = (
    "Split the reasoning below into atomic factual claims. The sentences are numbered. For each claim "
    "write one line: <sentence number> | <visual, audio, both, text or other> | <claim>. Use visual for "
    "what is seen (face, gaze, gesture, posture, scene), audio for what is heard (voice, tone, pitch, "
    "pace, sounds), text for the spoken words, other for anything else. Write nothing else.\n\n{sentences}"
)
_CLAIM_LINE = re.compile(r"^\s*(\d+)\s*\|\s*(visual|audio|both|text|other)\s*\|\s*(.+?)\s*$", re.IGNORECASE)


class LLMClaimExtractor:
    """Claims and their modalities as judged by an LLM endpoint."""

    def __init__(self, endpoint: ChatEndpoint):
        self.endpoint = endpoint

    def __call__(self, reasoning: str) -> list[Claim]:
        sentences = split_sentences(reasoning, at_commas=False)
        if not sentences:
            return []
        numbered = "\n".join(f"{i + 1}. {s.text}" for i, s in enumerate(sentences))
        claims = []
        for line in self.endpoint.complete(CLAIM_PROMPT.format(sentences=numbered)).splitlines():
            match = _CLAIM_LINE.match(line)
            if not match or not 1 <= int(match.group(1)) <= len(sentences):
                continue
            tag = match.group(2).lower()
            tags = frozenset(MODALITIES) if tag == "both" else frozenset({tag} & set(MODALITIES))
            claims.append(Claim(match.group(3), int(match.group(1)) - 1, tags))
        return claims


def reasoning_text(output: str) -> str:
    return parse_completion(output).think


@dataclass(frozen=True)
class UtilizationScore:
    recall: dict[str, float]
    precision: dict[str, float]
    cues: dict[str, int]  # ground-truth cues per modality
    claims: dict[str, int]  # extracted claims per modality

    @property
    def mean_recall(self) -> float:
        return safe_ratio(sum(self.recall[m] for m in MODALITIES if self.cues[m]),
                          sum(1 for m in MODALITIES if self.cues[m]), "utilization recall over modalities")

    @property
    def mean_precision(self) -> float:
        return safe_ratio(sum(self.precision[m] for m in MODALITIES if self.claims[m]),
                          sum(1 for m in MODALITIES if self.claims[m]), "utilization precision over modalities")


def _best_cosines(rows: torch.Tensor, against: torch.Tensor) -> list[float]:
    """For each row, its best cosine to `against`; -1 (never a match) when `against` is empty."""
    if rows.shape[0] == 0:
        return []
    if against.shape[0] == 0:
        return [-1.0] * rows.shape[0]
    return (rows @ against.T).max(dim=1).values.tolist()


def cue_utilization(outputs: Sequence[str], samples: Sequence[dict], extractor: ClaimExtractor,
                    encoder: SentenceEncoder, threshold: float = 0.6) -> UtilizationScore:
    """Pooled over the set: recall over all ground-truth cues, precision over all modality claims."""
    if len(outputs) != len(samples):
        raise ValueError(f"{len(outputs)} outputs but {len(samples)} samples")
    reasonings = [reasoning_text(o) for o in outputs]
    clauses = [[s.text for s in split_sentences(r)] for r in reasonings]
    claims = [extractor(r) for r in reasonings]
    cues = []
    for index, sample in enumerate(samples):
        clues = sample.get("extracted_clues")
        if not isinstance(clues, dict):
            raise KeyError(f"sample {index}: missing 'extracted_clues'")
        cues.append({m: [c for c in clues.get(f, []) if c.strip()] for m, f in CUE_FIELDS.items()})
    cache = EmbeddingCache(encoder)
    cache.prefetch([t for group in clauses for t in group] + [c.text for group in claims for c in group]
                   + [c for sample_cues in cues for m in MODALITIES for c in sample_cues[m]])
    found = {m: 0 for m in MODALITIES}
    total_cues = {m: 0 for m in MODALITIES}
    supported = {m: 0 for m in MODALITIES}
    total_claims = {m: 0 for m in MODALITIES}
    for sample_clauses, sample_claims, sample_cues in zip(clauses, claims, cues):
        clause_rows = cache.embed(sample_clauses)
        for m in MODALITIES:
            cue_rows = cache.embed(sample_cues[m])
            total_cues[m] += len(sample_cues[m])
            found[m] += sum(c >= threshold for c in _best_cosines(cue_rows, clause_rows))
            about = [c.text for c in sample_claims if m in c.modalities]
            total_claims[m] += len(about)
            supported[m] += sum(c >= threshold for c in _best_cosines(cache.embed(about), cue_rows))
    return UtilizationScore(
        recall={m: safe_ratio(found[m], total_cues[m], f"{m} cue recall") for m in MODALITIES},
        precision={m: safe_ratio(supported[m], total_claims[m], f"{m} claim precision") for m in MODALITIES},
        cues=total_cues, claims=total_claims,
    )


@dataclass(frozen=True)
class FaithfulnessScore:
    claim_level: dict[str, float]  # masked modality -> share of claims about it
    sentence_level: dict[str, float]  # masked modality -> share of sentences holding such a claim
    claims: dict[str, int] = field(default_factory=dict)
    sentences: dict[str, int] = field(default_factory=dict)


def faithfulness_of_outputs(masked_outputs: Mapping[str, Sequence[str | None]],
                            extractor: ClaimExtractor) -> FaithfulnessScore:
    """Share of claims (and of sentences holding one) about the masked modality, from the outputs
    generated with that modality masked ({modality: outputs}; None: a sample skipped)."""
    claim_level, sentence_level, claim_counts, sentence_counts = {}, {}, {}, {}
    for masked, outputs in masked_outputs.items():
        about_claims = all_claims = about_sentences = all_sentences = 0
        for output in filter(None.__ne__, outputs):
            reasoning = reasoning_text(output)
            claims = extractor(reasoning)
            all_claims += len(claims)
            about_claims += sum(masked in c.modalities for c in claims)
            all_sentences += len(split_sentences(reasoning, at_commas=False))
            about_sentences += len({c.sentence for c in claims if masked in c.modalities})
        claim_level[masked] = safe_ratio(about_claims, all_claims, f"claims with {masked} masked")
        sentence_level[masked] = safe_ratio(about_sentences, all_sentences, f"sentences with {masked} masked")
        claim_counts[masked], sentence_counts[masked] = all_claims, all_sentences
    return FaithfulnessScore(claim_level, sentence_level, claim_counts, sentence_counts)


def masked_faithfulness(samples: Sequence[dict], generate: GenerateFn, extractor: ClaimExtractor,
                        modalities: Sequence[str] = MODALITIES) -> FaithfulnessScore:
    """Re-generate with each modality masked and measure how much is still claimed about it."""
    masked_outputs = {}
    for masked in modalities:
        outputs = generate(list(samples), mask_modality=masked)
        if len(outputs) != len(samples):
            raise ValueError(f"generate returned {len(outputs)} outputs for {len(samples)} samples")
        masked_outputs[masked] = outputs
    return faithfulness_of_outputs(masked_outputs, extractor)


@dataclass(frozen=True)
class MEPResult:
    utilization: UtilizationScore
    faithfulness: FaithfulnessScore

    def summary(self) -> dict:
        """JSON-ready figures (fractions), with the means over modalities."""
        return {"utilization": {**asdict(self.utilization), "mean_recall": self.utilization.mean_recall,
                                "mean_precision": self.utilization.mean_precision},
                "faithfulness": asdict(self.faithfulness)}

    def markdown(self) -> str:
        """The utilization and faithfulness tables (x100; faithfulness: lower is more faithful)."""
        u, f = self.utilization, self.faithfulness
        lines = ["| Utilization | " + " | ".join(MODALITIES) + " | mean |", "| --- |" + " --- |" * (len(MODALITIES) + 1),
                 "| recall | " + " | ".join(f"{100 * u.recall[m]:.2f}" for m in MODALITIES) + f" | {100 * u.mean_recall:.2f} |",
                 "| precision | " + " | ".join(f"{100 * u.precision[m]:.2f}" for m in MODALITIES)
                 + f" | {100 * u.mean_precision:.2f} |", "",
                 "| Faithfulness (masked) | " + " | ".join(f.claim_level) + " |", "| --- |" + " --- |" * len(f.claim_level),
                 "| claim level | " + " | ".join(f"{100 * v:.2f}" for v in f.claim_level.values()) + " |",
                 "| sentence level | " + " | ".join(f"{100 * v:.2f}" for v in f.sentence_level.values()) + " |"]
        return "\n".join(lines) + "\n"


def run_mep_bench(samples: Sequence[dict], generate: GenerateFn, extractor: ClaimExtractor,
                  encoder: SentenceEncoder, threshold: float = 0.6) -> MEPResult:
    outputs = generate(list(samples))
    answered = [(output, sample) for output, sample in zip(outputs, samples) if output is not None]  # None: skipped
    if not answered:
        raise ValueError("no answers to score: every sample was skipped")
    outputs, samples = [output for output, _ in answered], [sample for _, sample in answered]
    return MEPResult(cue_utilization(outputs, samples, extractor, encoder, threshold),
                     masked_faithfulness(samples, generate, extractor))
