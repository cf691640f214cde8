"""Triton building blocks shared by the KL and log-prob kernels: the online (streaming)
log-sum-exp update and the centred cross-term update, plus the launch geometry.

Online softmax keeps, per row, the running max m of the raw logits and z = sum exp((x - m) / T).
Only centred differences are scaled by 1/T: x - m is exact for nearby values, so logits near 1e4
lose nothing to the temperature. A cross term c = sum exp((a - m_a) / T) * d, where d is a
difference of logits each centred on its own running max (and scaled), is rescaled when either
max moves: centring keeps d small even when both logits are huge, so the final KL does not come
from cancelling two large numbers.
"""
from __future__ import annotations

import triton
import triton.language as tl

from megatron_omni.kernels.common.backend import TileShape, interpreter_requested, tile_shape

# Whether the @triton.jit functions in this package were built for the interpreter: Triton
# decides when a kernel module is imported, so this is fixed for the life of the process.
INTERPRETED: bool = interpreter_requested()


def launch_tiles(n_cols: int) -> TileShape:
    return tile_shape(n_cols, INTERPRETED)


def n_programs(n_rows: int, tile: TileShape) -> tuple[int]:
    return (max(1, triton.cdiv(n_rows, tile.rows)),)


@triton.jit
def online_lse_step(m, z, x, inv_temp):
    """Fold a [rows, cols] tile x of raw logits (padding = -inf) into the running (m, z) of each
    row. Returns the new m and z, exp((x - m_new) / T) and the factor alpha that rescales old sums."""
    m_new = tl.maximum(m, tl.max(x, axis=1))
    alpha = tl.exp((m - m_new) * inv_temp)
    e = tl.exp((x - m_new[:, None]) * inv_temp)
    return m_new, z * alpha + tl.sum(e, axis=1), e, alpha


@triton.jit
def centred_cross_step(c, z_old, alpha, shift, e, d):
    """c = sum e * d, rescaled by alpha and re-centred by `shift` (the change of the centring
    under the new maxima, weighted by the old sum-exp z_old), plus this tile's terms. Terms whose
    weight underflowed to 0 are dropped explicitly: 0 * inf would be NaN."""
    return alpha * (c + z_old * shift) + tl.sum(tl.where(e > 0, e * d, 0.0), axis=1)


@triton.jit
def load_rows(ptr, rows, stride, cols, row_mask, n_load, n_valid):
    """A [rows, cols] tile of logits as fp32; masked rows and columns at or beyond n_valid
    (padding) are -inf (weight 0). Loads run to n_load (`VocabShard.n_load`) so they vectorise."""
    mask = row_mask[:, None] & (cols < n_load)[None, :]
    x = tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=float("-inf"))
    return tl.where((cols < n_valid)[None, :], x.to(tl.float32), float("-inf"))


@triton.jit
def row_tile(pid, index_ptr, n_sel, HAS_INDEX: tl.constexpr, BLOCK_R: tl.constexpr):
    """A forward program's selected-row slots, their row ids (int64) and which are in range."""
    slots = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    in_range = slots < n_sel
    if HAS_INDEX:
        rows = tl.load(index_ptr + slots, mask=in_range, other=0)
    else:
        rows = slots
    return slots, rows.to(tl.int64), in_range


@triton.jit
def all_rows_tile(pid, slot_ptr, n_rows, HAS_SLOTS: tl.constexpr, BLOCK_R: tl.constexpr):
    """A backward program's rows. Backward programs walk every row, so unselected rows and
    padding columns get exact zeros without a separate fill pass; only `live` (selected) rows
    read logits. Returns row ids (int64), their slots among the selected rows (0 where not
    live), which rows are in range, and which are live."""
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    in_range = rows < n_rows
    if HAS_SLOTS:
        slots = tl.load(slot_ptr + rows, mask=in_range, other=-1)
    else:
        slots = rows
    live = in_range & (slots >= 0)
    return rows.to(tl.int64), tl.where(live, slots, 0), in_range, live
