"""Teacher and student score exactly the same completion tokens: the rows of both views that
hold the completion, verified token for token at run time."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_omni.data.batch import OmniBatch


class AlignmentError(RuntimeError):
    pass


@dataclass
class CompletionRows:
    """Label positions (batch row, sequence position) of the completion tokens, in the same order
    in both views: student[i] and teacher[i] predict the same token."""

    student: torch.Tensor  # [N, 2] long
    teacher: torch.Tensor  # [N, 2] long

    def to(self, device) -> "CompletionRows":
        return CompletionRows(self.student.to(device), self.teacher.to(device))

    def select(self, logits: torch.Tensor, view: str) -> torch.Tensor:
        """[b, s, V_local] logits -> [N, V_local] rows of ``view`` ("student" or "teacher")."""
        rows = getattr(self, view)
        return logits[rows[:, 0], rows[:, 1]]


def _token(tokenizer, token_id: int) -> str:
    return f"{token_id} {tokenizer.decode([token_id])!r}" if tokenizer is not None else str(token_id)


def completion_rows(student: OmniBatch, teacher: OmniBatch, tokenizer=None) -> CompletionRows:
    """The completion rows of each sample in both views (their loss-mask positions), after checking
    that the labels there are the same tokens; the error names the sample and the first mismatch."""
    if student.tokens.shape[0] != teacher.tokens.shape[0]:
        raise AlignmentError(f"student micro-batch has {student.tokens.shape[0]} sequences, teacher {teacher.tokens.shape[0]}")
    student_rows, teacher_rows = [], []
    for b, sample_id in enumerate(student.sample_ids):
        s_pos = student.loss_mask[b].nonzero().squeeze(1)
        t_pos = teacher.loss_mask[b].nonzero().squeeze(1)
        s_tok, t_tok = student.labels[b, s_pos].tolist(), teacher.labels[b, t_pos].tolist()
        if s_tok != t_tok:
            k = next((i for i, (a, c) in enumerate(zip(s_tok, t_tok)) if a != c), min(len(s_tok), len(t_tok)))
            student_at = _token(tokenizer, s_tok[k]) if k < len(s_tok) else "end of completion"
            teacher_at = _token(tokenizer, t_tok[k]) if k < len(t_tok) else "end of completion"
            raise AlignmentError(
                f"teacher and student do not score the same completion for sample {sample_id}: "
                f"{len(s_tok)} vs {len(t_tok)} tokens, first mismatch at completion token {k}: "
                f"student {student_at}, teacher {teacher_at}"
            )
        student_rows.append(torch.stack([torch.full_like(s_pos, b), s_pos], 1))
        teacher_rows.append(torch.stack([torch.full_like(t_pos, b), t_pos], 1))
    return CompletionRows(torch.cat(student_rows), torch.cat(teacher_rows))
