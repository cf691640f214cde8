"""Row chunking for the pure-torch paths: a chunk of token rows is upcast to fp32 at a time, so
the peak extra memory is a few [chunk x vocab] fp32 tiles, never [tokens x vocab]."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from megatron_omni.kernels.common.online_softmax import NEG_START
from megatron_omni.kernels.common.vocab_shards import RowSelection

# Bytes of one fp32 [chunk x vocab] tile; a chunk's arithmetic holds about five of them.
CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class RowChunk:
    slots: slice  # positions among the selected rows
    rows: slice | Tensor  # row ids in the [rows, vocab] logits


def row_chunks(rows: RowSelection, n_cols: int) -> Iterator[RowChunk]:
    step = max(1, CHUNK_BYTES // (4 * max(1, n_cols)))
    for start in range(0, rows.count, step):
        stop = min(start + step, rows.count)
        ids = slice(start, stop) if rows.index is None else rows.index[start:stop]
        yield RowChunk(slice(start, stop), ids)


def read_tile(logits: Tensor, chunk: RowChunk, n_valid: int) -> Tensor:
    """fp32 logits of the chunk's rows over the real columns (a fresh tensor)."""
    return logits[chunk.rows, :n_valid].to(torch.float32, copy=True)


def centre(x: Tensor, inv_temp: float) -> tuple[Tensor, Tensor]:
    """(x - rowmax(x)) / T in place, and the raw row max: only centred values are scaled, so
    logits near 1e4 keep their precision. A row whose columns are all masked (-inf; e.g. a TP
    shard holding only masked tokens) gets the empty shard's max NEG_START, as in the Triton
    kernels, so that it centres to -inf (weight 0) rather than to -inf - -inf = NaN."""
    m = x.amax(dim=1).clamp_min_(NEG_START)
    return x.sub_(m[:, None]).mul_(inv_temp), m


def write_tile(out: Tensor, chunk: RowChunk, n_valid: int, values: Tensor) -> None:
    if isinstance(chunk.rows, slice):
        out[chunk.rows, :n_valid] = values
    else:
        out[:, :n_valid].index_copy_(0, chunk.rows, values.to(out.dtype))


def zero_unwritten(out: Tensor, rows: RowSelection, n_valid: int) -> None:
    """Zero what `write_tile` never touches: padding columns and unselected rows."""
    out[:, n_valid:] = 0
    if rows.index is not None:
        out.index_fill_(0, (rows.slots() < 0).nonzero().squeeze(1), 0)
