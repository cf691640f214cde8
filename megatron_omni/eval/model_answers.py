"""Model-backed answers for evaluation: greedy generation for manifest samples, optionally with
one modality masked (the MEP-Bench faithfulness re-run). Implements the evaluation's
``generate(samples, mask_modality=None) -> list[str | None]`` contract (None: a skipped sample)."""
from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_omni.data.dataset import OmniDataset
from megatron_omni.data.skips import SampleSource
from megatron_omni.generation.generator import SamplingConfig
from megatron_omni.generation.omni import sample_completions
from megatron_omni.models.masking import ModalityMask
from megatron_omni.training.model_setup import unwrap


class OmniAnswerer:
    def __init__(self, model_chunks, prompts: OmniDataset, tokenizer, vocab_size: int,
                 stop_token_ids: list[int], pad_token_id: int, max_new_tokens: int, mask_ratio: float = 0.9):
        self.model = unwrap(model_chunks[0])
        self.prompts = prompts
        # Every rank answers every sample (TP/PP collectives), so each decides skips alike; rank 0 reports.
        announce = not dist.is_initialized() or dist.get_rank() == 0
        self.source = SampleSource(prompts, announce=announce)
        self.index = {sample.id: i for i, sample in enumerate(prompts.samples)}
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, greedy=True, stop_token_ids=list(stop_token_ids))
        self.mask_ratio = mask_ratio

    def answer(self, sample_id: str, mask_modality: str | None = None) -> str | None:
        """The greedy answer; None for a sample skipped under data.skip_bad_samples."""
        if sample_id not in self.index:
            raise KeyError(f"sample {sample_id!r} is not in the evaluation manifest")
        prompt = self.source.load_one(self.index[sample_id])
        if prompt is None:
            return None
        mask = ModalityMask(mask_modality, self.mask_ratio, seed=0) if mask_modality is not None else None
        (completion,), _, _ = sample_completions(self.model, prompt, self.sampling, 1, 0, self.vocab_size,
                                              self.pad_token_id, modality_mask=mask)
        return self.tokenizer.decode(completion, skip_special_tokens=True)

    def __call__(self, samples: list[dict], mask_modality: str | None = None) -> list[str | None]:
        answers = [self.answer(str(sample["id"]), mask_modality) for sample in samples]
        self.source.check()
        return answers


def sample_records(prompts: OmniDataset) -> list[dict]:
    return [s.to_record() for s in prompts.samples]


@torch.no_grad()
def score_answers(answers: dict[str, str], records: list[dict], lexicon, reward=None) -> dict[str, float]:
    """Held-out figures of a set of answers: emotion-wheel F1 (the reward's R_ew, averaged),
    F_s / precision / recall at level 1 (the OV-MERD+ definition), the format rate and, given the
    reward object, the mean of each reward term on the same answers."""
    from megatron_omni.eval.metrics import openset_score
    from megatron_omni.rewards.emotion_wheel_f1 import emotion_wheel_f1
    from megatron_omni.text.completion import format_reward, parse_completion
    from megatron_omni.text.wordlists import parse_emotion_words

    answers = {sid: text for sid, text in answers.items() if text is not None}  # None: a skipped sample
    if not answers:
        raise ValueError("no answers to score: every sample was skipped")
    truth = {str(r["id"]): r["openset"] for r in records}
    predicted = {sid: parse_emotion_words(parse_completion(text).answer or "") for sid, text in answers.items()}
    f1 = [emotion_wheel_f1(predicted[sid], truth[sid], lexicon) for sid in answers]
    fs = openset_score(truth, predicted, lexicon, "level1")
    rewards = {}
    if reward is not None:
        ordered = [r for r in records if str(r["id"]) in answers]
        terms = reward.compute([answers[str(r["id"])] for r in ordered], ordered)
        rewards = {f"reward_{name}": float(values.mean()) for name, values in terms.items()}
    return {
        **rewards,
        "emotion_wheel_f1": sum(f1) / len(f1),
        "fs_level1": fs.fscore,
        "precision_level1": fs.precision,
        "recall_level1": fs.recall,
        "format_rate": sum(format_reward(text) for text in answers.values()) / len(answers),
    }
