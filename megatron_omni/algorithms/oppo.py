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

from dataclasses import dataclass, field

import torch
from megatron.core import parallel_state

from megatron_omni.algorithms.config import RLRunSections
from megatron_omni.algorithms.evidence import MODALITIES, evidence_token_masks, token_char_spans
from megatron_omni.algorithms.grpo import GRPOLoss, group_advantages, kl_beta_at
from megatron_omni.algorithms.rollouts import collect_rollouts, prompt_rules, stopping_at
from megatron_omni.algorithms.step_common import move_chunks, on_step_device, padded_microbatches, step_samples
from megatron_omni.data.batch import OmniBatch
from megatron_omni.kernels import evidence_masked_kl, vocab_parallel_logprob_entropy
from megatron_omni.models.masking import ModalityMask
from megatron_omni.parallel.device import step_device
from megatron_omni.training.step import forward_only


@dataclass
class RLMicroBatch:
    batch: OmniBatch
    advantages: torch.Tensor  # [b]
    evidence: dict[str, torch.Tensor]  # modality -> bool [b, s] over label positions, completion tokens only
    # "completion" and each modality -> long [n, 2] (batch row, position) of its True positions in
    # row-major order: the rows the scoring forwards keep (their count is known on the host).
    rows: dict[str, torch.Tensor]
    # Filled by the scoring forwards (last stage only): "ref_logprobs" fp32 [n_completion];
    # "masked" modality -> [n_m, V_local] masked-input logits at that modality's evidence rows.
    scores: dict = field(default_factory=dict)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """[n, 2] (row, position) of a [b, s] bool mask's True entries, in row-major order."""
    return mask.nonzero()


class OPPO:
    def __init__(self, cfg: RLRunSections, prompts, samples, tokenizer, reward, model_chunks, reference_chunks,
                 stop_token_ids: list[int], pad_token_id: int):
        self.cfg = cfg
        o = cfg.oppo
        self.prompts = step_samples(prompts, prompt_rules(cfg.train, "oppo.sampling", o.sampling,
                                                          required=(("openset", "the labels of OPPO's reward"),)))
        self.samples = samples  # manifest records (reward labels and cues)
        self.tokenizer = tokenizer
        self.reward = reward
        self.model_chunks = model_chunks
        self.reference_chunks = reference_chunks
        if o.offload_reference:
            move_chunks(reference_chunks, torch.device("cpu"))
        self.pad_token_id = pad_token_id
        self.sampling = stopping_at(o.sampling, stop_token_ids)
        self.loss = GRPOLoss(o.grpo)
        self.group = o.grpo.group_size
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.beta = o.grpo.kl_beta

    # ------------------------------------------------------------------ prepare

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

    def state_dict(self) -> dict:
        return {"samples": self.prompts.state_dict()}  # the skip counts, checkpointed

    def load_state_dict(self, state: dict) -> None:
        self.prompts.load_state_dict(state["samples"])

    def prepare(self, indices: list[int], step: int):
        cfg = self.cfg
        indices, prompts, skip_metrics = self.prompts.load_step(indices)
        rollouts = collect_rollouts(self.model_chunks, prompts, indices, step, self.sampling, self.group,
                                    cfg.train.seed, cfg.model.vocab_size, self.pad_token_id, self.tokenizer)
        samples = [self.samples[i] for i in rollouts.indices]
        rewards = self.reward.compute(rollouts.texts, samples)
        advantages = group_advantages(rewards["total"], self.group, cfg.oppo.grpo.scale_advantages_by_std)

        seq = cfg.train.seq_length
        evidence = [self._evidence(ids, text, sample, p.prompt_length, seq)
                    for ids, text, sample, p in zip(rollouts.completion_ids, rollouts.texts, samples, rollouts.prompts)]
        device = step_device()
        microbatches = []
        for chunk, batch in padded_microbatches(rollouts.sequences(), cfg.train.micro_batch_size * self.group, seq):
            # Masks and their rows are made on the host copies: no device read decides what is kept.
            completion = batch.loss_mask.bool()
            masks = {m: torch.stack([evidence[i][m] for i in chunk]) & completion for m in MODALITIES}
            rows = {name: _positions(mask).to(device) for name, mask in (("completion", completion), *masks.items())}
            microbatches.append(RLMicroBatch(batch=batch.to(device), advantages=advantages[chunk].to(device),
                                             evidence={m: mask.to(device) for m, mask in masks.items()}, rows=rows))
        self._score(microbatches, step)

        metrics = {**rollouts.metrics(rewards), **skip_metrics}
        metrics.update({
            # Counted on the host copies: no device read.
            "evidence_visual_tokens": float(sum(int(e["visual"].sum()) for e in evidence)),
            "evidence_audio_tokens": float(sum(int(e["audio"].sum()) for e in evidence)),
            "kl_beta": self.beta,
        })
        return microbatches, metrics

    # ------------------------------------------------------------------ scoring forwards

    def _forward_only(self, chunks, microbatches, store, **model_kwargs):
        forward_only(chunks, microbatches, lambda mb: mb.batch, store, self.cfg.train.seq_length,
                     self.cfg.train.micro_batch_size * self.group, **model_kwargs)

    def _score(self, microbatches: list[RLMicroBatch], step: int):
        cfg = self.cfg
        self.beta = kl_beta_at(cfg.oppo.grpo, step, cfg.train.steps)
        vocab = cfg.model.vocab_size
        if self.beta and self.reference_chunks is not None:
            def store_ref(mb, logits):
                lp, _ = vocab_parallel_logprob_entropy(logits.detach(), mb.batch.labels, group=self.tp_group, vocab_size=vocab)
                rows = mb.rows["completion"]
                mb.scores["ref_logprobs"] = lp[rows[:, 0], rows[:, 1]]  # the loss reads completion tokens only

            with on_step_device(self.reference_chunks, cfg.oppo.offload_reference) as chunks:
                self._forward_only(chunks, microbatches, store_ref)
        if cfg.oppo.perception_loss:
            for modality in MODALITIES:
                def store_masked(mb, logits, modality=modality):
                    # The loss reads this modality's evidence rows only; kept as the model produced
                    # them (TP-sharded, model dtype): no fp32 copy, nothing for a micro-batch without evidence.
                    rows = mb.rows[modality]
                    mb.scores.setdefault("masked", {})[modality] = logits.detach()[rows[:, 0], rows[:, 1]]

                if not any(len(mb.rows[modality]) for mb in microbatches):
                    # No evidence of this modality in the step (the same on every rank of the model):
                    # its term is 0 without its masked forward.
                    continue
                mask = ModalityMask(modality, cfg.omni.modality_mask_ratio, seed=cfg.train.seed + step)
                self._forward_only(self.model_chunks, microbatches, store_masked, modality_mask=mask)

    # ------------------------------------------------------------------ loss

    @staticmethod
    def _ref_logprobs(mb: RLMicroBatch, logprobs: torch.Tensor) -> torch.Tensor | None:
        """[b, s] reference log-probs from the completion tokens' kept ones; elsewhere the policy's
        own (detached), so the k3 KL there is exactly 0 and finite whatever the loss mask does."""
        kept = mb.scores.pop("ref_logprobs", None)
        if kept is None:
            return None
        rows = mb.rows["completion"]
        return logprobs.detach().index_put((rows[:, 0], rows[:, 1]), kept)

    def forward_step(self, mb: RLMicroBatch, model):
        batch = mb.batch
        logits = model(batch.tokens, batch.position_ids, None, **batch.model_kwargs())

        def loss_func(logits):
            o, vocab = self.cfg.oppo, self.cfg.model.vocab_size
            logprobs, entropy = vocab_parallel_logprob_entropy(logits, batch.labels, group=self.tp_group, vocab_size=vocab)
            mask = batch.loss_mask
            total, count, metrics = self.loss(
                logprobs, logprobs.detach(), mb.advantages, mask,
                ref_logprobs=self._ref_logprobs(mb, logprobs), beta=self.beta,
            )
            metrics["entropy"] = torch.stack([(entropy.detach() * mask).sum(), mask.sum()])
            if o.perception_loss:
                # Released as they are read; no rows kept: a modality whose masked forward the step skipped.
                kept, none = mb.scores.pop("masked", {}), logits.new_empty((0, logits.shape[-1]))
                masked = {m: kept.get(m, none) for m in MODALITIES}
                term = evidence_masked_kl(
                    logits, masked, mb.evidence, gamma=o.perception_gamma, sign=o.perception_sign,
                    entropy=entropy, eta=o.perception_eta, vocab_size=vocab, group=self.tp_group,
                )
                # L_op is a mean; weighting it by this micro-batch's tokens makes megatron's
                # division by the global token count give the token-weighted mean over micro-batches.
                total = total + term.loss * count.float()
                for m in MODALITIES:
                    evidence = term.n_evidence[m].float()
                    metrics[f"perception_kl_{m}"] = torch.stack([term.kl_mean[m] * evidence, evidence])
                metrics["perception_loss"] = torch.stack([term.loss.detach() * count.float(), count.float()])
            return total, count, metrics

        return logits, loss_func
