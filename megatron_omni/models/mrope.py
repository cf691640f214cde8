"""Interleaved multimodal RoPE (Qwen3-Omni's ``mrope_interleaved``), as a drop-in for megatron's
``MultimodalRotaryEmbedding``.

megatron-core's MRoPE gives the temporal, height and width positions contiguous blocks of the
rotary channels (``mrope_section`` [t, h, w], Qwen2.5). Qwen3-Omni interleaves them: channel
``j`` of the ``head_dim / 2`` frequencies takes the height position when ``j % 3 == 1`` and
``j < 3 * h``, the width position when ``j % 3 == 2`` and ``j < 3 * w``, and the temporal
position otherwise (transformers' ``Qwen3OmniMoeThinkerTextRotaryEmbedding``). Only the choice of
position per channel differs; the frequencies, the rotate-half layout and the output shape
[s, b, 1, head_dim] are megatron's, so attention, the KV cache and generation take it unchanged.
"""
from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import MultimodalRotaryEmbedding


def interleaved_axis(half_dim: int, mrope_section: list[int]) -> torch.Tensor:
    """[half_dim] long: the position row (0 = t, 1 = h, 2 = w) each rotary frequency uses."""
    axis = torch.zeros(half_dim, dtype=torch.long)
    for row in (1, 2):
        axis[row : 3 * mrope_section[row] : 3] = row
    return axis


class InterleavedMultimodalRotaryEmbedding(MultimodalRotaryEmbedding):
    def forward(self, position_ids: torch.Tensor, mrope_section: list[int], cp_group=None) -> torch.Tensor:
        if cp_group is not None and cp_group.size() > 1:
            raise NotImplementedError("interleaved MRoPE does not support context parallelism")
        seq = position_ids.to(device=self.inv_freq.device, dtype=torch.float32)  # [3, b, s]
        if self.seq_len_interpolation_factor is not None:
            seq = seq / self.seq_len_interpolation_factor
        freqs = seq[..., None] * self.inv_freq  # [3, b, s, half]
        axis = interleaved_axis(freqs.shape[-1], mrope_section).to(freqs.device)
        chosen = freqs.gather(0, axis.expand(1, *freqs.shape[1:-1], -1)).squeeze(0)  # [b, s, half]
        emb = torch.cat((chosen, chosen), dim=-1)
        return emb[:, :, None, :].transpose(0, 1).contiguous()  # [s, b, 1, 2 * half]
