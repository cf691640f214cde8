"""Model-backed answers for evaluation: greedy generation for manifest samples, optionally with
one modality masked (the MEP-Bench faithfulness re-run). Implements the evaluation's
``generate(samples, mask_modality=None) -> list[str | None]`` contract (None: a skipped sample)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_omni.data.dataset import OmniDataset
from megatron_omni.data.skips import SampleSource
from megatron_omni.generation.generator import SamplingConfig
from megatron_omni.generation.omni import sample_prompts
from megatron_omni.models.masking import ModalityMask
from megatron_omni.training.model_setup import unwrap


class OmniAnswerer:
    """Greedy answers, the samples of a call decoded together. Under data parallelism each model
    replica answers every DP-th sample of the call and the answers are gathered over the DP
    group, so every rank returns all of them, as one process would."""

    def __init__(self, model_chunks, prompts: OmniDataset, tokenizer, vocab_size: int,
                 stop_token_ids: list[int], pad_token_id: int, max_new_tokens: int, mask_ratio: float = 0.9):
        self.model = unwrap(model_chunks[0])
        self.prompts = prompts
        # The ranks of one model replica (TP/PP) load the same samples: its first rank reports skips.
        self.source = SampleSource(prompts, announce=parallel_state.get_model_parallel_group().rank() == 0)
        self.index = {sample.id: i for i, sample in enumerate(prompts.samples)}
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, greedy=True, stop_token_ids=list(stop_token_ids))
        self.mask_ratio = mask_ratio

    def __call__(self, samples: list[dict], mask_modality: str | None = None) -> list[str | None]:
        """One greedy answer per sample; None for a sample skipped under data.skip_bad_samples."""
        ids = [str(sample["id"]) for sample in samples]
        for sample_id in ids:
            if sample_id not in self.index:
                raise KeyError(f"sample {sample_id!r} is not in the evaluation manifest")
        group = parallel_state.get_data_parallel_group()
        size, rank = group.size(), group.rank()
        mine = range(rank, len(ids), size)
        loaded = {position: self.source.load_one(self.index[ids[position]]) for position in mine}
        usable = [position for position, prompt in loaded.items() if prompt is not None]
        answers: dict[int, str | None] = dict.fromkeys(loaded)
        # Called with no usable sample too: under expert parallelism the replicas decode in step.
        mask = ModalityMask(mask_modality, self.mask_ratio, seed=0) if mask_modality is not None else None
        generated = sample_prompts(self.model, [loaded[p] for p in usable], self.sampling, 1, [0] * len(usable),
                                   self.vocab_size, self.pad_token_id, modality_mask=mask)
        for position, (completion,) in zip(usable, generated.completions, strict=True):
            answers[position] = self.tokenizer.decode(completion, skip_special_tokens=True)
        elsewhere = (0, 0)
        if size > 1:
            gathered: list[dict[int, str | None]] = [{} for _ in range(size)]
            dist.all_gather_object(gathered, answers, group=group)
            others = [part for r, part in enumerate(gathered) if r != rank]
            elsewhere = (sum(len(part) for part in others), sum(text is None for part in others for text in part.values()))
            answers = {position: text for part in gathered for position, text in part.items()}
        self.source.check(elsewhere)  # the skip share over every replica's samples, alike on every rank
        return [answers[position] for position in range(len(ids))]


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
