"""The OmniOPSD teacher: the student's architecture (or another model sharing its vocabulary)
scoring completions with the privileged rationale in its prompt. It is never back-propagated.

Weights by ``opsd.teacher``:
  initial     a frozen copy of the starting policy (the default)
  ema         an exponential moving average of the student, saved with the run's checkpoints
  student     the student itself, under no_grad
  checkpoint  a frozen other model (opsd.teacher_checkpoint)
With opsd.offload_teacher the weights of its own stay on the CPU between its scoring passes.
"""
from __future__ import annotations

import torch

from megatron_omni.algorithms.step_common import move_chunks, on_step_device
from megatron_omni.data.batch import OmniBatch
from megatron_omni.training.model_setup import unwrap


class Teacher:
    def __init__(self, kind: str, chunks: list | None, ema_decay: float = 0.99):
        if (chunks is None) != (kind == "student"):
            raise ValueError(f"a '{kind}' teacher {'needs' if chunks is None else 'takes no'} model chunks of its own")
        self.kind, self.chunks, self.ema_decay = kind, chunks, ema_decay
        self.offloaded = False

    def offload(self) -> None:
        """Keep the weights on the CPU between scoring passes (see `scoring`)."""
        if self.kind == "student":
            raise ValueError("the 'student' teacher is the policy itself: it has no weights of its own to offload")
        move_chunks(self.chunks, torch.device("cpu"))
        self.offloaded = True

    def model_chunks(self, student_chunks: list) -> list:
        return student_chunks if self.kind == "student" else self.chunks

    def scoring(self, student_chunks: list):
        """A context giving the teacher's chunks on the step device (an offloaded teacher is
        moved there and back to the CPU at the end)."""
        return on_step_device(self.model_chunks(student_chunks), self.offloaded)

    @torch.no_grad()
    def update(self, student_chunks: list, step: int) -> None:
        """EMA: teacher <- decay * teacher + (1 - decay) * student, for the student weights that
        step ``step`` starts from (applied at the start of each step after the first, so a resumed
        run repeats it exactly)."""
        if self.kind != "ema" or step == 0:
            return
        for teacher_chunk, student_chunk in zip(self.chunks, student_chunks):
            for t, s in zip(unwrap(teacher_chunk).parameters(), unwrap(student_chunk).parameters()):
                # Where the teacher's weights are: the CPU for an offloaded teacher.
                t.lerp_(s.detach().to(t.device, t.dtype), 1.0 - self.ema_decay)

    def checkpointed_models(self) -> dict:
        """Only the EMA teacher changes during training; the others are rebuilt from their source."""
        return {"teacher": self.chunks} if self.kind == "ema" else {}

    @torch.no_grad()
    def logits(self, model, batch: OmniBatch) -> torch.Tensor:
        """[b, s, V_local] teacher logits of a privileged batch (one pipeline stage: PP = 1)."""
        return model(batch.tokens, batch.position_ids, None, **batch.model_kwargs())
