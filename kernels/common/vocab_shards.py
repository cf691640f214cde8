"""Where a rank's vocabulary slice sits, which rows are computed, and the two TP collectives.

Every op in this package works on one rank's slice of the vocabulary ("shard"). A shard is a
contiguous run of global vocabulary ids; its trailing columns may be padding (Megatron pads the
vocabulary to a multiple of the TP size), and those are excluded by index, never read.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from megatron_omni.kernels.common.validation import fail


@dataclass(frozen=True)
class VocabShard:
    """One rank's slice of the vocabulary: global ids [start, start + n_cols), of which the first
    `n_valid` are real tokens and the rest padding."""

    start: int
    n_cols: int
    n_valid: int

    @property
    def n_load(self) -> int:
        """Columns the kernels load: n_valid rounded up to 16, within the row. A load mask that is
        constant over 16-column groups lets Triton issue 128-bit loads; the few padding columns
        read this way are masked out after loading."""
        return min(self.n_cols, -(-self.n_valid // 16) * 16)


@dataclass(frozen=True)
class TPGroup:
    """The tensor-parallel group the vocabulary is sharded over (`group=None`: unsharded)."""

    group: dist.ProcessGroup | None
    rank: int
    world_size: int

    @staticmethod
    def of(group: dist.ProcessGroup | None) -> "TPGroup":
        if group is None:
            return TPGroup(None, 0, 1)
        if not dist.is_initialized():
            fail("group", "a process group was given but torch.distributed is not initialised")
        return TPGroup(group, dist.get_rank(group), dist.get_world_size(group))

    def gather(self, local: Tensor) -> Tensor:
        """All ranks' per-token statistics stacked on a new leading dim: [world, *local.shape]."""
        if self.group is None:
            return local.unsqueeze(0)
        # Gathered along dim 0 as one flat tensor: the layout every backend (gloo too) accepts.
        out = local.new_empty((self.world_size * local.shape[0], *local.shape[1:]))
        dist.all_gather_into_tensor(out, local.contiguous(), group=self.group)
        return out.view(self.world_size, *local.shape)

    def sum(self, local: Tensor) -> Tensor:
        """Per-token partial sums added over ranks, in place (the emulation adds the shards' values)."""
        if self.group is not None:
            dist.all_reduce(local, op=dist.ReduceOp.SUM, group=self.group)
        return local


def vocab_shard(
    n_cols: int, tp: TPGroup, vocab_size: int | None, vocab_start_index: int | None
) -> VocabShard:
    """The shard this rank holds. By default rank r owns [r * n_cols, (r + 1) * n_cols); columns
    at or beyond the real global `vocab_size` are padding."""
    start = tp.rank * n_cols if vocab_start_index is None else int(vocab_start_index)
    if start < 0:
        fail("vocab_start_index", f"must be >= 0, got {start}")
    if vocab_size is None:
        return VocabShard(start, n_cols, n_cols)
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        fail("vocab_size", f"must be a positive int (the real, unpadded global size), got {vocab_size!r}")
    if vocab_size > start + n_cols and tp.rank == tp.world_size - 1:
        fail("vocab_size", f"{vocab_size} exceeds the padded vocabulary ({start + n_cols}) held by the last rank")
    return VocabShard(start, n_cols, max(0, min(n_cols, vocab_size - start)))


@dataclass(frozen=True)
class RowSelection:
    """Which of the `n_rows` flattened token rows are computed: `index` (sorted, unique, int64,
    on the logits' device) or None for all of them."""

    n_rows: int
    index: Tensor | None

    @property
    def count(self) -> int:
        return self.n_rows if self.index is None else int(self.index.numel())

    def slots(self) -> Tensor | None:
        """For each row, its position among the selected rows, or -1 (int32, [n_rows])."""
        if self.index is None:
            return None
        slot = torch.full((self.n_rows,), -1, dtype=torch.int32, device=self.index.device)
        slot[self.index] = torch.arange(self.index.numel(), dtype=torch.int32, device=self.index.device)
        return slot

    def scatter(self, values: Tensor) -> Tensor:
        """Selected-row values -> all rows, zero where not selected."""
        if self.index is None:
            return values
        out = values.new_zeros((self.n_rows,))
        out[self.index] = values
        return out

    def gather(self, values: Tensor) -> Tensor:
        """All-row values -> selected rows."""
        return values if self.index is None else values[self.index]


def select_rows(
    lead_shape: torch.Size, device: torch.device, row_mask: Tensor | None, row_index: Tensor | None
) -> RowSelection:
    """Validate a row mask (bool, shaped like the logits without the vocab dim) or a row index
    (1-D integer ids into the flattened rows) and turn either into a `RowSelection`."""
    n_rows = 1
    for d in lead_shape:
        n_rows *= d
    if row_mask is not None and row_index is not None:
        fail("row_mask/row_index", "give one of them, not both")
    if row_mask is not None:
        if not isinstance(row_mask, Tensor) or row_mask.dtype != torch.bool:
            fail("row_mask", f"must be a bool tensor, got {getattr(row_mask, 'dtype', type(row_mask))}")
        if tuple(row_mask.shape) != tuple(lead_shape):
            fail("row_mask", f"shape {tuple(row_mask.shape)} must equal the logits' leading shape {tuple(lead_shape)}")
        if row_mask.device != device:
            fail("row_mask", f"is on {row_mask.device}, the logits on {device}")
        return RowSelection(n_rows, row_mask.reshape(-1).nonzero().squeeze(1))
    if row_index is not None:
        if not isinstance(row_index, Tensor) or row_index.dtype not in (torch.int32, torch.int64):
            fail("row_index", f"must be an int32/int64 tensor, got {getattr(row_index, 'dtype', type(row_index))}")
        if row_index.dim() != 1:
            fail("row_index", f"must be 1-D (ids into the flattened rows), got shape {tuple(row_index.shape)}")
        if row_index.device != device:
            fail("row_index", f"is on {row_index.device}, the logits on {device}")
        index = torch.unique(row_index.long())  # sorted; duplicates would double-count a row
        if index.numel() != row_index.numel():
            fail("row_index", "contains duplicate rows")
        if index.numel() and (int(index[0]) < 0 or int(index[-1]) >= n_rows):
            fail("row_index", f"values must lie in [0, {n_rows}), got [{int(index[0])}, {int(index[-1])}]")
        return RowSelection(n_rows, index)
    return RowSelection(n_rows, None)
