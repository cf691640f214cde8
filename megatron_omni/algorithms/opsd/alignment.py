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


def _completion(batch: OmniBatch, span: tuple[int, int, int]) -> tuple[int, torch.Tensor]:
    """(row, positions) of a sample's loss-mask tokens, the sample's span (row, start, end) of ``batch``."""
    row, start, end = span
    return row, batch.loss_mask[row, start:end].nonzero().squeeze(1) + start


def completion_rows(student: OmniBatch, teacher: OmniBatch, tokenizer=None) -> CompletionRows:
    """The completion rows of each sample in both views (their loss-mask positions), after checking
    that the labels there are the same tokens; the error names the sample and the first mismatch.
    Either view may be padded or packed."""
    if student.num_samples != teacher.num_samples:
        raise AlignmentError(f"student micro-batch has {student.num_samples} sequences, teacher {teacher.num_samples}")
    student_rows, teacher_rows = [], []
    for sample_id, s_span, t_span in zip(student.sample_ids, student.sample_spans(), teacher.sample_spans()):
        s_row, s_pos = _completion(student, s_span)
        t_row, t_pos = _completion(teacher, t_span)
        s_tok, t_tok = student.labels[s_row, s_pos].tolist(), teacher.labels[t_row, t_pos].tolist()
        if s_tok != t_tok:
            k = next((i for i, (a, c) in enumerate(zip(s_tok, t_tok)) if a != c), min(len(s_tok), len(t_tok)))
            student_at = _token(tokenizer, s_tok[k]) if k < len(s_tok) else "end of completion"
            teacher_at = _token(tokenizer, t_tok[k]) if k < len(t_tok) else "end of completion"
            raise AlignmentError(
                f"teacher and student do not score the same completion for sample {sample_id}: "
                f"{len(s_tok)} vs {len(t_tok)} tokens, first mismatch at completion token {k}: "
                f"student {student_at}, teacher {teacher_at}"
            )
        student_rows.append(torch.stack([torch.full_like(s_pos, s_row), s_pos], 1))
        teacher_rows.append(torch.stack([torch.full_like(t_pos, t_row), t_pos], 1))
    return CompletionRows(torch.cat(student_rows), torch.cat(teacher_rows))
