"""OPPO: GRPO with the Omni-Perception Reward and the Omni-Perception Loss.

One step, as the loop sees it:
  prepare:  prompts -> rollout (G completions each) -> rewards (+ DAPO's overlong penalty;
            dynamic sampling drops groups of equal rewards and refills the batch from further
            prompts) -> group advantages -> evidence tokens -> scoring forwards (frozen reference;
            visual- and audio-masked rollout policy; the rollout policy itself when several
            updates need its log-probs, all no grad) -> micro-batches carrying everything the
            loss needs
  mini_batches: the micro-batches of each of the grpo.mini_batches x grpo.epochs optimizer steps
  forward_step: the policy forward and the loss (GRPO + L_op) through the fused kernels.
With one update per rollout batch the old policy of the PPO ratio is the current policy, so its
log-probs are the current ones detached and need no extra forward.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_omni.algorithms.config import RLRunSections
from megatron_omni.algorithms.evidence import MODALITIES, evidence_token_masks, token_char_spans
from megatron_omni.algorithms.grpo import (
    GroupSelection,
    GRPOLoss,
    group_advantages,
    kl_beta_at,
    overlong_penalty,
)
from megatron_omni.algorithms.rollouts import Rollouts, collect_rollouts, prompt_rules, stopping_at
from megatron_omni.algorithms.step_common import move_chunks, on_step_device, step_microbatches, step_samples
from megatron_omni.data.batch import OmniBatch
from megatron_omni.kernels import evidence_masked_kl, vocab_parallel_logprob_entropy
from megatron_omni.models.masking import ModalityMask
from megatron_omni.parallel.device import step_device
from megatron_omni.parallel.runtime import expert_group_max
from megatron_omni.training.step import forward_only


@dataclass
class RLMicroBatch:
    batch: OmniBatch  # padded [b, s] or one packed row [1, s] (data.packing)
    advantages: torch.Tensor  # [samples]
    evidence: dict[str, torch.Tensor]  # modality -> bool, the batch's layout, over label positions, completion tokens only
    # "completion" and each modality -> long [n, 2] (batch row, position) of its True positions in
    # row-major order (sample by sample, also when packed): the rows the scoring forwards keep
    # (their count is known on the host).
    rows: dict[str, torch.Tensor]
    mini_batch: int  # the part of the rollout batch (grpo.mini_batches) this micro-batch belongs to
    # Filled by the scoring forwards (last stage only), at the "completion" rows: "ref_logprobs",
    # "old_logprobs" (the rollout policy's, with several updates), "engine_logprobs" (the
    # engine's, when the loss reads them) fp32 [n_completion]; "masked" modality -> [n_m, V_local]
    # masked-input logits at that modality's evidence rows.
    scores: dict = field(default_factory=dict)
    reads_left: int = 1  # loss reads to come (grpo.epochs); the last one releases the scores


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
        self.loss = GRPOLoss(o.grpo, o.sampling.max_new_tokens)
        self.group = o.grpo.group_size
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.beta = o.grpo.kl_beta
        self.draws_prompts = o.grpo.dynamic_sampling  # prepare takes the loop's draw (training/loop.py)
        # The pipeline's activation shape: a packed micro-batch is one row of train.seq_length.
        self.microbatch_rows = 1 if cfg.data.packing else cfg.train.micro_batch_size * self.group

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

    @property
    def sample_source(self):  # the loop prefetches the next batch's prompts through it
        return self.prompts

    def state_dict(self) -> dict:
        return {"samples": self.prompts.state_dict()}  # the skip counts, checkpointed

    def load_state_dict(self, state: dict) -> None:
        self.prompts.load_state_dict(state["samples"])

    def prepare(self, indices: list[int], step: int, draw=None):
        cfg, g = self.cfg, self.cfg.oppo.grpo
        rollouts, rewards, data_metrics = self._rollouts(indices, step, draw)
        advantages = group_advantages(rewards["total"], self.group, g.scale_advantages_by_std)
        stop = set(self.sampling.stop_token_ids)
        truncated = [ids[-1] not in stop for ids in rollouts.completion_ids]  # cut at max_new_tokens
        filtered = truncated if g.overlong == "filter" else [False] * len(truncated)
        # The loss reads the engine's log-probs as pi_old or for the importance weights.
        engine = g.behaviour_logprobs == "engine" or g.tis_cap is not None

        seq = cfg.train.seq_length
        evidence = [self._evidence(ids, text, sample, p.prompt_length, seq)
                    for ids, text, sample, p in zip(rollouts.completion_ids, rollouts.texts,
                                                    [self.samples[i] for i in rollouts.indices], rollouts.prompts)]
        device = step_device()
        microbatches = []
        for part, chunk, batch in self._microbatches(rollouts.sequences()):
            for i, (row, start, end) in zip(chunk, batch.sample_spans()):
                if filtered[i]:  # DAPO's overlong filtering: no loss on a completion cut short
                    batch.loss_mask[row, start:end] = 0
            # Masks and their rows are made on the host copies: no device read decides what is kept.
            completion = batch.loss_mask.bool()
            masks = {m: batch.in_layout([evidence[i][m] for i in chunk]) & completion for m in MODALITIES}
            rows = {name: _positions(mask).to(device) for name, mask in (("completion", completion), *masks.items())}
            mb = RLMicroBatch(batch=batch.to(device), advantages=advantages[chunk].to(device),
                              evidence={m: mask.to(device) for m, mask in masks.items()}, rows=rows,
                              mini_batch=part, reads_left=g.epochs)
            if engine:  # row-major like the completion rows: each kept completion's tokens in order
                mb.scores["engine_logprobs"] = torch.cat(
                    [rollouts.logprobs[i] for i in chunk if not filtered[i]] or [torch.zeros(0)]).to(device)
            microbatches.append(mb)
        self._score(microbatches, step)

        counts = {  # counted on the host copies: no device read
            "evidence_visual_tokens": float(sum(int(e["visual"].sum()) for e in evidence)),
            "evidence_audio_tokens": float(sum(int(e["audio"].sum()) for e in evidence)),
        }
        means = {"truncated_fraction": sum(truncated) / len(truncated)} if g.overlong != "keep" else {}
        metrics = {**rollouts.metrics(rewards, means, counts), **data_metrics, "kl_beta": self.beta}
        return microbatches, metrics

    def _microbatches(self, sequences) -> list[tuple[int, list[int], OmniBatch]]:
        """(mini-batch, entry indices, batch) per micro-batch: each of the grpo.mini_batches
        consecutive parts of the rollout batch is split (or packed) on its own, so an optimizer
        step never takes part of another's completions."""
        cfg = self.cfg
        size = len(sequences) // cfg.oppo.grpo.mini_batches  # whole: check_oppo_run
        out = []
        for part in range(cfg.oppo.grpo.mini_batches):
            first = part * size
            for chunk, batch in step_microbatches(sequences[first : first + size], cfg.train.micro_batch_size * self.group,
                                                  cfg.train.seq_length, cfg.data.packing):
                out.append((part, [first + i for i in chunk], batch))
        return out

    def _sample(self, indices: list[int], prompts, step: int) -> tuple[Rollouts, dict[str, torch.Tensor]]:
        """Rollouts of ``prompts`` and their rewards (with DAPO's overlong penalty in the total)."""
        cfg, g = self.cfg, self.cfg.oppo.grpo
        rollouts = collect_rollouts(self.model_chunks, prompts, indices, step, self.sampling, self.group,
                                    cfg.train.seed, cfg.model.vocab_size, self.pad_token_id, self.tokenizer)
        rewards = self.reward.compute(rollouts.texts, [self.samples[i] for i in rollouts.indices])
        if g.overlong == "penalty":
            lengths = torch.tensor([len(ids) for ids in rollouts.completion_ids])
            rewards["overlong"] = overlong_penalty(lengths, self.sampling.max_new_tokens, g.overlong_buffer,
                                                   g.overlong_penalty_factor)
            rewards["total"] = rewards["total"] + rewards["overlong"]
        return rollouts, rewards

    def _rollouts(self, indices: list[int], step: int, draw):
        """The step's rollouts, rewards and data metrics; under grpo.dynamic_sampling the groups of
        equal rewards are replaced by groups of further prompts, drawn from the sampler through
        ``draw`` in rounds that every data-parallel rank takes together (the sampler's position
        stays the same on all of them), at most grpo.max_resample_rounds times."""
        g = self.cfg.oppo.grpo
        indices, prompts, metrics = self.prompts.load_step(indices)
        rollouts, rewards = self._sample(indices, prompts, step)
        if not g.dynamic_sampling:
            return rollouts, rewards, metrics
        selection = GroupSelection(len(indices), self.group)
        parts = [(rollouts, rewards)]
        uninformative = selection.add(rewards["total"])
        rounds = 0
        while True:
            # [groups still missing, groups of equal rewards found] over the data-parallel group.
            counts = torch.tensor([selection.shortfall, uninformative], dtype=torch.float64, device=step_device())
            dist.all_reduce(counts, group=parallel_state.get_data_parallel_group())
            shortfall, found = (int(c) for c in counts.tolist())
            metrics["dynamic_sampling_uninformative_groups"] = metrics.get("dynamic_sampling_uninformative_groups", 0.0) + found
            if not shortfall or rounds == g.max_resample_rounds:
                break
            if draw is None:
                raise ValueError("grpo.dynamic_sampling draws further prompts: prepare needs the loop's draw")
            rounds += 1
            more, more_prompts, more_metrics = self.prompts.load_step(draw())  # collective: every rank loads
            metrics["skipped_samples"] += more_metrics["skipped_samples"]
            metrics["skipped_samples_total"] = more_metrics["skipped_samples_total"]
            uninformative = 0
            if selection.shortfall:  # a full rank draws (the sampler moves on everywhere) but samples nothing
                parts.append(self._sample(more, more_prompts, step))
                uninformative = selection.add(parts[-1][1]["total"])
            elif parallel_state.get_expert_model_parallel_world_size() > 1:
                # ... but its MoE forwards keep the expert group's decode in step (the engine's pad prompts).
                collect_rollouts(self.model_chunks, [], [], step, self.sampling, self.group, self.cfg.train.seed,
                                 self.cfg.model.vocab_size, self.pad_token_id, self.tokenizer)
        metrics["dynamic_sampling_rounds"] = float(rounds)
        metrics["dynamic_sampling_filled_groups"] = float(shortfall)  # groups of equal rewards kept: rounds ran out
        metrics["dynamic_sampling_dropped_groups"] = metrics["dynamic_sampling_uninformative_groups"] - shortfall
        return _chosen(parts, selection.chosen(), self.group) + (metrics,)

    # ------------------------------------------------------------------ scoring forwards

    def _forward_only(self, chunks, microbatches, store, **model_kwargs):
        forward_only(chunks, microbatches, lambda mb: mb.batch, store, self.cfg.train.seq_length,
                     self.microbatch_rows, **model_kwargs)

    def _score(self, microbatches: list[RLMicroBatch], step: int):
        cfg = self.cfg
        self.beta = kl_beta_at(cfg.oppo.grpo, step, cfg.train.steps)
        vocab = cfg.model.vocab_size

        def store_logprobs(name):
            def store(mb, logits):
                lp, _ = vocab_parallel_logprob_entropy(logits.detach(), mb.batch.labels, group=self.tp_group, vocab_size=vocab)
                rows = mb.rows["completion"]
                mb.scores[name] = lp[rows[:, 0], rows[:, 1]]  # the loss reads completion tokens only
            return store

        if self.beta and self.reference_chunks is not None:
            with on_step_device(self.reference_chunks, cfg.oppo.offload_reference) as chunks:
                self._forward_only(chunks, microbatches, store_logprobs("ref_logprobs"))
        g = cfg.oppo.grpo
        if g.updates_per_rollout > 1 and g.behaviour_logprobs == "trainer":
            # pi_old of every update: the rollout policy, scored before the first of them.
            self._forward_only(self.model_chunks, microbatches, store_logprobs("old_logprobs"))
        if cfg.oppo.perception_loss:
            for modality in MODALITIES:
                def store_masked(mb, logits, modality=modality):
                    # The loss reads this modality's evidence rows only; kept as the model produced
                    # them (TP-sharded, model dtype): no fp32 copy, nothing for a micro-batch without evidence.
                    rows = mb.rows[modality]
                    mb.scores.setdefault("masked", {})[modality] = logits.detach()[rows[:, 0], rows[:, 1]]

                if not expert_group_max(int(any(len(mb.rows[modality]) for mb in microbatches))):
                    # No evidence of this modality in the step (the same on every rank of the model,
                    # and over an expert group): its term is 0 without its masked forward.
                    continue
                mask = ModalityMask(modality, cfg.omni.modality_mask_ratio, seed=cfg.train.seed + step)
                self._forward_only(self.model_chunks, microbatches, store_masked, modality_mask=mask)

    def mini_batches(self, microbatches: list[RLMicroBatch]) -> list[list[RLMicroBatch]]:
        """The micro-batches of each optimizer step: grpo.mini_batches consecutive parts of the
        rollout batch, all of them once per epoch."""
        g = self.cfg.oppo.grpo
        return [[mb for mb in microbatches if mb.mini_batch == k] for k in range(g.mini_batches)] * g.epochs

    # ------------------------------------------------------------------ loss

    @staticmethod
    def _read(mb: RLMicroBatch, name: str, default=None):
        """A score for this loss read; the last of the micro-batch's reads releases it."""
        return mb.scores.pop(name, default) if mb.reads_left == 1 else mb.scores.get(name, default)

    def _kept_logprobs(self, mb: RLMicroBatch, name: str, logprobs: torch.Tensor) -> torch.Tensor | None:
        """[b, s] log-probs from the completion tokens' kept ones; elsewhere the policy's own
        (detached), so ratios there are exactly 1, the k3 KL 0, finite whatever the loss mask does."""
        kept = self._read(mb, name)
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
            engine = self._kept_logprobs(mb, "engine_logprobs", logprobs)
            old = engine if o.grpo.behaviour_logprobs == "engine" else self._kept_logprobs(mb, "old_logprobs", logprobs)
            ref = self._kept_logprobs(mb, "ref_logprobs", logprobs)
            # The policy loss aggregates per completion: it reads one row per sample, as padded.
            rows = batch.per_sample
            total, count, metrics = self.loss(
                rows(logprobs), rows(logprobs.detach() if old is None else old), mb.advantages, rows(mask),
                ref_logprobs=None if ref is None else rows(ref), beta=self.beta,
                engine_logprobs=None if engine is None else rows(engine),
            )
            metrics["entropy"] = torch.stack([(entropy.detach() * mask).sum(), mask.sum()])
            if o.perception_loss:
                # Released as they are read; no rows kept: a modality whose masked forward the step skipped.
                kept, none = self._read(mb, "masked", {}), logits.new_empty((0, logits.shape[-1]))
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
            mb.reads_left -= 1
            return total, count, metrics

        return logits, loss_func


def _chosen(parts: list[tuple[Rollouts, dict]], chosen: list[tuple[int, int]], group: int) -> tuple[Rollouts, dict]:
    """The rollouts and rewards of the chosen (part, group) pairs, in that order."""
    entries = [(p, k) for p, g in chosen for k in range(g * group, (g + 1) * group)]
    rollouts = Rollouts.joined([r for r, _ in parts], entries)
    rewards = {name: torch.stack([parts[p][1][name][k] for p, k in entries]) for name in parts[0][1]}
    return rollouts, rewards
