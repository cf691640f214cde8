"""OmniOPSD: on-policy self-distillation with a rationale-privileged teacher.

One step, as the loop sees it:
  prepare:  (EMA teacher update) -> prompts -> student rollouts from the original input only
            -> rewards (for monitoring, or the optional GRPO mix) -> student sequences (prompt +
            completion) and teacher sequences (privileged prompt + the same completion) ->
            completion rows aligned and verified -> micro-batches
  forward_step: the teacher forward of this micro-batch (no grad), then the student forward and
            the per-token full-vocabulary divergence on the completion rows.
At PP = 1 the teacher runs inside each micro-batch's forward step, interleaved with the student,
so only one micro-batch of teacher logits ([completion tokens x V/TP], model dtype) exists at a
time. With pipeline stages the teacher needs a schedule of its own: it runs one forward-only pass
over the step's micro-batches first and the last stage keeps just their completion rows. An
offloaded teacher (opsd.offload_teacher) is scored first the same way at any PP, on the step device
for that pass only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from megatron.core import parallel_state

from megatron_omni.algorithms.config import RLRunSections
from megatron_omni.algorithms.grpo import GRPOLoss, group_advantages
from megatron_omni.algorithms.opsd.alignment import CompletionRows, completion_rows
from megatron_omni.algorithms.opsd.loss import DistillationLoss
from megatron_omni.algorithms.opsd.teacher import Teacher
from megatron_omni.algorithms.rollouts import collect_rollouts, prompt_rules, stopping_at
from megatron_omni.algorithms.step_common import step_microbatches, step_samples
from megatron_omni.data.batch import OmniBatch, pack, pad
from megatron_omni.data.processor import attach_completion
from megatron_omni.kernels import vocab_parallel_logprob_entropy
from megatron_omni.parallel.device import step_device
from megatron_omni.training.step import forward_only

# Teacher sequences (packed: teacher rows) longer than train.seq_length are padded to a multiple
# of this (one shape for all micro-batches of a step).
TEACHER_PAD_MULTIPLE = 16


@dataclass
class DistillMicroBatch:
    batch: OmniBatch  # student view: prompt + completion, [b, train.seq_length] (packed: [1, train.seq_length])
    teacher_batch: OmniBatch  # teacher view: privileged prompt + the same completion, the same layout
    rows: CompletionRows
    advantages: torch.Tensor | None  # [b] for the GRPO mix
    teacher_logits: torch.Tensor | None = None  # [N, V_local] completion rows, once scored


class OmniOPSD:
    def __init__(self, cfg: RLRunSections, prompts, samples, tokenizer, reward, model_chunks, teacher: Teacher,
                 stop_token_ids: list[int], pad_token_id: int):
        self.cfg = cfg
        o = cfg.opsd
        required = ((("description", "the OmniOPSD teacher's privileged prompt"),) if o.privileged else ())
        if o.grpo_weight:
            required += (("openset", "the labels of the opsd.grpo_weight reward"),)
        self.prompts = step_samples(prompts, prompt_rules(cfg.train, "opsd.sampling", o.sampling, required))
        self.samples = samples  # manifest records (reward labels)
        self.tokenizer = tokenizer
        self.reward = reward  # None: no reward is computed
        self.model_chunks = model_chunks
        self.teacher = teacher
        self.pad_token_id = pad_token_id
        self.sampling = stopping_at(o.sampling, stop_token_ids)
        self.group = o.group_size
        # The pipeline's shape (training/loop.py): a packed micro-batch is one row of train.seq_length.
        self.microbatch_rows = 1 if cfg.data.packing else cfg.train.micro_batch_size * self.group
        self.tp_group = parallel_state.get_tensor_model_parallel_group()
        self.loss = DistillationLoss(o.loss, cfg.model.vocab_size, self.tp_group)
        self.grpo = GRPOLoss(o.grpo) if o.grpo_weight else None
        if o.offload_teacher:
            teacher.offload()
        # Pipeline stages need the teacher scored up front (its own forward-only schedule); so
        # does an offloaded teacher, on the device for that pass only.
        self.teacher_first = parallel_state.get_pipeline_model_parallel_world_size() > 1 or o.offload_teacher
        self.teacher_seconds = 0.0  # this step's teacher forwards (read by tools/bench_opsd.py)

    def checkpointed_models(self) -> dict:
        return self.teacher.checkpointed_models()

    # ------------------------------------------------------------------ prepare

    def _teacher_prompt(self, index: int, student_prompt):
        """The privileged prompt of a sample, from the media the student prompt already loaded."""
        dataset = self.prompts.dataset
        return dataset.processor.process(dataset.samples[index], student_prompt.media, with_target=False,
                                         privileged=self.cfg.opsd.privileged)

    @property
    def sample_source(self):  # the loop prefetches the next batch's prompts through it
        return self.prompts

    def state_dict(self) -> dict:
        return {"samples": self.prompts.state_dict()}  # the skip counts, checkpointed

    def load_state_dict(self, state: dict) -> None:
        self.prompts.load_state_dict(state["samples"])

    def prepare(self, indices: list[int], step: int):
        cfg = self.cfg
        self.teacher.update(self.model_chunks, step)
        self.teacher_seconds = 0.0
        indices, prompts, skip_metrics = self.prompts.load_step(indices)
        started = time.perf_counter()
        rollouts = collect_rollouts(self.model_chunks, prompts, indices, step, self.sampling, self.group,
                                    cfg.train.seed, cfg.model.vocab_size, self.pad_token_id, self.tokenizer)
        rollout_seconds = time.perf_counter() - started
        rewards, advantages = {}, None
        if self.reward is not None:
            rewards = self.reward.compute(rollouts.texts, [self.samples[i] for i in rollouts.indices])
        if self.grpo is not None:
            advantages = group_advantages(rewards["total"], self.group, cfg.opsd.grpo.scale_advantages_by_std)

        student_prompts = dict(zip(rollouts.indices, rollouts.prompts))  # one per prompt, not per completion
        teacher_prompts = {i: self._teacher_prompt(i, p) for i, p in student_prompts.items()}
        teacher_sequences = [attach_completion(teacher_prompts[i], ids)
                             for i, ids in zip(rollouts.indices, rollouts.completion_ids)]
        students = step_microbatches(rollouts.sequences(), cfg.train.micro_batch_size * self.group,
                                     cfg.train.seq_length, cfg.data.packing)
        # A packed teacher row holds the teacher sequences of its student row's samples.
        layout = pack if cfg.data.packing else pad
        longest = max(sum(teacher_sequences[i].length for i in chunk) if cfg.data.packing
                      else max(teacher_sequences[i].length for i in chunk) for chunk, _ in students)
        # The student's shape when the privileged prompt fits: the same computation for the same input.
        teacher_length = max(cfg.train.seq_length, -(-longest // TEACHER_PAD_MULTIPLE) * TEACHER_PAD_MULTIPLE)
        microbatches, device = [], step_device()
        for chunk, batch in students:
            teacher_batch = layout([teacher_sequences[i] for i in chunk], teacher_length)
            # Aligned on the host copies (it reads token ids), then everything moves to the device.
            rows = completion_rows(batch, teacher_batch, self.tokenizer)
            microbatches.append(DistillMicroBatch(
                batch=batch.to(device), teacher_batch=teacher_batch.to(device), rows=rows.to(device),
                advantages=advantages[chunk].to(device) if advantages is not None else None,
            ))
        if self.teacher_first:
            self._score_teacher(microbatches, teacher_length)

        metrics = {**rollouts.metrics(rewards), **skip_metrics}
        metrics["time_rollout_s"] = rollout_seconds
        extra = sum(tp.prompt_length - p.prompt_length for tp, p in zip(teacher_sequences, rollouts.prompts))
        metrics["teacher_prompt_extra_tokens"] = float(extra / len(teacher_sequences))
        return microbatches, metrics

    def _score_teacher(self, microbatches: list[DistillMicroBatch], teacher_length: int) -> None:
        def store(mb, logits):
            mb.teacher_logits = mb.rows.select(logits.detach(), "teacher")

        started = time.perf_counter()
        with self.teacher.scoring(self.model_chunks) as chunks:
            forward_only(chunks, microbatches, lambda mb: mb.teacher_batch, store, teacher_length, self.microbatch_rows)
        self.teacher_seconds += time.perf_counter() - started

    # ------------------------------------------------------------------ loss

    def forward_step(self, mb: DistillMicroBatch, model):
        if not self.teacher_first:
            # Interleaved: this micro-batch's teacher forward, right before its student forward.
            started = time.perf_counter()
            teacher_model = self.teacher.model_chunks([model])[0]
            mb.teacher_logits = mb.rows.select(self.teacher.logits(teacher_model, mb.teacher_batch), "teacher")
            self.teacher_seconds += time.perf_counter() - started
        batch = mb.batch
        output = model(batch.tokens, batch.position_ids, None, **batch.model_kwargs())

        def loss_func(logits):
            teacher_logits, mb.teacher_logits = mb.teacher_logits, None  # the kernel holds what it needs
            total, count, metrics = self.loss(mb.rows.select(logits, "student"), teacher_logits)
            if self.grpo is not None:
                logprobs, _ = vocab_parallel_logprob_entropy(logits, batch.labels, group=self.tp_group,
                                                             vocab_size=self.cfg.model.vocab_size)
                # Aggregated per completion: one row per sample, as padded.
                rows = batch.per_sample
                policy, _, policy_metrics = self.grpo(rows(logprobs), rows(logprobs).detach(), mb.advantages,
                                                      rows(batch.loss_mask))
                total = total + self.cfg.opsd.grpo_weight * policy
                metrics.update(policy_metrics)
            return total, count, metrics

        return output, loss_func
