"""OPPO: GRPO with the Omni-Perception Reward and the Omni-Perception Loss.

One step, as the loop sees it:
  prepare:  prompts -> rollout (G completions each) -> rewards -> group advantages
            -> evidence tokens -> scoring forwards (frozen reference; visual- and audio-masked
            current policy, no grad) -> micro-batches carrying everything the loss needs
  forward_step: the policy forward and the loss (GRPO + L_op) through the fused kernels.
The old policy of the PPO ratio is the current policy (one update per rollout batch), so its
log-probs are the current ones detached and need no extra forward.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
from megatron.core import parallel_state

from kernels import evidence_masked_kl, vocab_parallel_logprob_entropy
from megatron_omni.algorithms.evidence import MODALITIES, evidence_token_masks, token_char_spans
from megatron_omni.algorithms.grpo import GRPOLoss, group_advantages, kl_beta_at
from megatron_omni.algorithms.sft import check_length
from megatron_omni.data.batch import OmniBatch, pad
from megatron_omni.data.processor import attach_completion
from megatron_omni.models.masking import ModalityMask
from megatron_omni.rollout.omni import loaded, sample_completions
from megatron_omni.train_config import OmniTrainConfig
from megatron_omni.training.loop import split_microbatches
from megatron_omni.training.model_setup import unwrap
from megatron_omni.training.step import run_microbatches


@dataclass
class RLMicroBatch:
    batch: OmniBatch
    advantages: torch.Tensor  # [b]
    evidence: dict[str, torch.Tensor]  # modality -> bool [b, s] over label positions
    scores: dict = field(default_factory=dict)  # filled by the scoring forwards (last stage only)


class OPPO:
    def __init__(self, cfg: OmniTrainConfig, prompts, samples, tokenizer, reward, model_chunks, reference_chunks,
                 stop_token_ids: list[int], pad_token_id: int):
        self.cfg = cfg
        self.prompts = prompts  # OmniDataset of prompts (no targets)
        self.samples = samples  # manifest records (reward labels and cues)
        self.tokenizer = tokenizer
        self.reward = reward
        self.model_chunks = model_chunks
        self.reference_chunks = reference_chunks
        self.pad_token_id = pad_token_id
        o = cfg.oppo
        self.sampling = o.sampling
        if not self.sampling.stop_token_ids:
            self.sampling.stop_token_ids = list(stop_token_ids)
        self.loss = GRPOLoss(o.grpo)
        self.group = o.grpo.group_size
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.beta = o.grpo.kl_beta

    # ------------------------------------------------------------------ prepare

    def _rollout(self, index: int, step: int):
        prompt = loaded(self.prompts[index], f"prompt {index}")
        seed = self.cfg.train.seed * 1_000_003 + step * 7919 + zlib.crc32(prompt.sample_id.encode())
        completions, tokens_per_second = sample_completions(
            unwrap(self.model_chunks[0]), prompt, self.sampling, self.group, seed, self.cfg.model.vocab_size,
            self.pad_token_id,
        )
        return prompt, completions, tokens_per_second

    def _texts(self, completion_ids: list[int]) -> str:
        return self.tokenizer.decode(completion_ids, skip_special_tokens=True)

    def _evidence(self, completion_ids, text, sample, prompt_length: int, seq_length: int) -> dict[str, torch.Tensor]:
        """Evidence masks over label positions: completion token k is the label at prompt_length - 1 + k."""
        # Special tokens (the stop token) are not in the decoded text the sentences index into.
        special = set(self.tokenizer.all_special_ids)
        kept = [j for j, token in enumerate(completion_ids) if token not in special]
        spans = token_char_spans(self.tokenizer, [completion_ids[j] for j in kept])
        token_masks = evidence_token_masks(spans, self.reward.evidence_sentences(text, sample))
        rows = torch.tensor([prompt_length - 1 + j for j in kept], dtype=torch.long)
        out = {}
        for m in MODALITIES:
            out[m] = torch.zeros(seq_length, dtype=torch.bool)
            out[m][rows] = token_masks[m]
        return out

    def prepare(self, indices: list[int], step: int):
        cfg = self.cfg
        rollouts = [self._rollout(i, step) for i in indices]
        flat_samples, flat_texts, flat_ids, flat_prompts = [], [], [], []
        for index, (prompt, completions, _) in zip(indices, rollouts):
            for ids in completions:
                flat_samples.append(self.samples[index])
                flat_ids.append(ids)
                flat_texts.append(self._texts(ids))
                flat_prompts.append(prompt)
        rewards = self.reward.compute(flat_texts, flat_samples)
        advantages = group_advantages(rewards["total"], self.group, cfg.oppo.grpo.scale_advantages_by_std)

        seq = cfg.train.seq_length
        sequences = [attach_completion(p, ids) for p, ids in zip(flat_prompts, flat_ids)]
        evidence = [self._evidence(ids, text, sample, p.prompt_length, seq)
                    for ids, text, sample, p in zip(flat_ids, flat_texts, flat_samples, flat_prompts)]
        per_micro = cfg.train.micro_batch_size * self.group
        microbatches = []
        for chunk in split_microbatches(list(range(len(sequences))), per_micro):
            batch = check_length(pad([sequences[i] for i in chunk], seq), seq)
            microbatches.append(RLMicroBatch(
                batch=batch, advantages=advantages[chunk],
                evidence={m: torch.stack([evidence[i][m] for i in chunk]) for m in MODALITIES},
            ))
        self._score(microbatches, step)

        lengths = torch.tensor([len(ids) for ids in flat_ids], dtype=torch.float)
        metrics = {f"reward_{k}": float(v.mean()) for k, v in rewards.items()}
        metrics.update({
            "completion_length": float(lengths.mean()),
            "rollout_tokens_per_s": sum(r[2] for r in rollouts) / len(rollouts),
            "evidence_visual_tokens": float(sum(int(m.evidence["visual"].sum()) for m in microbatches)),
            "evidence_audio_tokens": float(sum(int(m.evidence["audio"].sum()) for m in microbatches)),
            "kl_beta": self.beta,
        })
        return microbatches, metrics

    # ------------------------------------------------------------------ scoring forwards

    def _forward_only(self, chunks, microbatches, store, **model_kwargs):
        """A no-grad pass through the pipeline; ``store(mb, logits)`` runs on the last stage."""

        def forward_step(mb: RLMicroBatch, model):
            output = model(mb.batch.tokens, mb.batch.position_ids, None, **mb.batch.model_kwargs(), **model_kwargs)

            def capture(logits):
                store(mb, logits)
                return logits.sum() * 0.0, torch.ones((), dtype=torch.int), {}

            return output, capture

        run_microbatches(chunks, microbatches, forward_step, self.cfg.train.seq_length,
                         self.cfg.train.micro_batch_size * self.group, forward_only=True)

    def _score(self, microbatches: list[RLMicroBatch], step: int):
        cfg = self.cfg
        self.beta = kl_beta_at(cfg.oppo.grpo, step, cfg.train.steps)
        vocab = cfg.model.vocab_size
        if self.beta and self.reference_chunks is not None:
            def store_ref(mb, logits):
                lp, _ = vocab_parallel_logprob_entropy(logits.detach(), mb.batch.labels, group=self.tp_group, vocab_size=vocab)
                mb.scores["ref_logprobs"] = lp

            self._forward_only(self.reference_chunks, microbatches, store_ref)
        if cfg.oppo.perception_loss:
            for modality in MODALITIES:
                mask = ModalityMask(modality, cfg.omni.modality_mask_ratio, seed=cfg.train.seed + step)

                def store_masked(mb, logits, modality=modality):
                    # Kept as the model produced them (TP-sharded, model dtype): no fp32 copy.
                    mb.scores.setdefault("masked", {})[modality] = logits.detach()

                self._forward_only(self.model_chunks, microbatches, store_masked, modality_mask=mask)

    # ------------------------------------------------------------------ loss

    def forward_step(self, mb: RLMicroBatch, model):
        batch = mb.batch
        logits = model(batch.tokens, batch.position_ids, None, **batch.model_kwargs())

        def loss_func(logits):
            o, vocab = self.cfg.oppo, self.cfg.model.vocab_size
            logprobs, entropy = vocab_parallel_logprob_entropy(logits, batch.labels, group=self.tp_group, vocab_size=vocab)
            mask = batch.loss_mask
            total, count, metrics = self.loss(
                logprobs, logprobs.detach(), mb.advantages, mask,
                ref_logprobs=mb.scores.get("ref_logprobs"), beta=self.beta,
            )
            metrics["entropy"] = torch.stack([(entropy.detach() * mask).sum(), mask.sum()])
            if o.perception_loss and "masked" in mb.scores:
                evidence = {m: mb.evidence[m] & mask.bool() for m in MODALITIES}
                term = evidence_masked_kl(
                    logits, mb.scores["masked"], evidence, gamma=o.perception_gamma, sign=o.perception_sign,
                    entropy=entropy, eta=o.perception_eta, vocab_size=vocab, group=self.tp_group,
                )
                # L_op is a mean; weighting it by this micro-batch's tokens makes megatron's
                # division by the global token count give the token-weighted mean over micro-batches.
                total = total + term.loss * count.float()
                for m in MODALITIES:
                    metrics[f"perception_kl_{m}"] = torch.stack([term.kl_mean[m] * term.n_evidence[m], torch.tensor(float(term.n_evidence[m]))])
                metrics["perception_loss"] = torch.stack([term.loss.detach() * count.float(), count.float()])
            return total, count, metrics

        return logits, loss_func
