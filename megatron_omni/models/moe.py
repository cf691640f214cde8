"""The mixture-of-experts decoder of the ``qwen3_omni_moe`` family on megatron-core's MoE layer.

Routing is the released model's (transformers' ``Qwen3OmniMoeThinkerTextTopKRouter``): softmax of
the router logits over all experts, the top k, renormalised to sum to 1 when ``norm_topk_prob``.
megatron's softmax router computes the same: with ``moe_router_pre_softmax=False`` it takes the
top-k logits and a softmax over those k (which is the renormalised top-k of the full softmax);
with ``pre_softmax=True`` it keeps the full softmax's top-k probabilities as they are.

Load balancing: transformers' ``load_balancing_loss_func`` is ``E * sum_i f_i P_i`` (f_i the
fraction of the k routing slots taken by expert i, P_i its mean router probability, over the
micro-batch's non-padding tokens), weighted by ``router_aux_loss_coef``. megatron's ``aux_loss``
is the same product per layer divided by k, summed over layers; the coefficient handed to megatron
is therefore ``coef * k / num_layers``: every layer's loss is transformers' formula on that layer,
and the sum is their mean over layers weighted by ``coef``. transformers joins the layers' f and P
before the product instead (equal for one layer); a per-layer loss is what pipeline stages can
compute without exchanging routing statistics.

Tokens are never dropped (no capacity factor), so there is no dropped-token count to report.

Uneven token counts. megatron's all-gather dispatcher (the CPU one, docs/PARALLELISM.md) gathers
the tokens of the TP x EP group with ``all_gather_into_tensor``, which needs the same count on
every rank; the ranks of an expert group are data-parallel replicas whose micro-batches (rows
padded to their own longest sample, a rollout's prompts) differ in length. `UnevenAllGatherDispatcher`
pads each rank's tokens to the group's largest count with tokens routed to no expert (zero
hidden state, probability and routing) and cuts them off after the combine: they take no expert
compute and add nothing to any real token, so each rank gets what a single process computes.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.moe import moe_utils
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.moe.token_dispatcher import MoEAllGatherTokenDispatcher

from megatron_omni.models.config import ModelSections

if not moe_utils.HAVE_TE:
    # megatron-core 0.16.1's router GEMM tests ``te_general_gemm is not None`` but binds the name
    # only when Transformer Engine imports: without TE it raises NameError. None selects its torch path.
    moe_utils.te_general_gemm = None


def moe_transformer_fields(cfg: ModelSections) -> dict:
    """TransformerConfig fields of the MoE layers (empty for a dense decoder)."""
    m = cfg.model
    if m.num_moe_experts is None:
        return {}
    return dict(
        num_moe_experts=m.num_moe_experts,
        moe_ffn_hidden_size=m.moe_ffn_hidden_size,
        moe_router_topk=m.moe_router_topk,
        moe_router_score_function="softmax",
        moe_router_pre_softmax=not m.moe_norm_topk_prob,
        moe_router_load_balancing_type="aux_loss" if m.moe_aux_loss_coeff > 0 else "none",
        moe_aux_loss_coeff=m.moe_aux_loss_coeff * m.moe_router_topk / m.num_layers,
        # megatron's all-to-all dispatcher overlaps its host copies on CUDA streams (it builds one at
        # construction), so CPU runs take the all-gather dispatcher: gloo has all_gather_into_tensor
        # and reduce_scatter_tensor (docs/PARALLELISM.md). The routed tokens and results are the same.
        moe_token_dispatcher_type="alltoall" if torch.cuda.is_available() else "allgather",
        expert_model_parallel_size=cfg.parallel.expert_model_parallel_size,
    )


class UnevenAllGatherDispatcher(MoEAllGatherTokenDispatcher):
    """megatron's all-gather dispatcher for ranks whose token counts differ (module docstring)."""

    def dispatch_preprocess(self, hidden_states, routing_map, probs):
        hidden_states, probs = super().dispatch_preprocess(hidden_states, routing_map, probs)
        self.local_tokens = hidden_states.shape[0]
        if self.tp_size == 1 and self.ep_size == 1:
            return hidden_states, probs
        largest = torch.tensor([self.local_tokens], dtype=torch.long, device=hidden_states.device)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=self.tp_ep_group)
        missing = int(largest) - self.local_tokens
        if missing:
            hidden_states = torch.cat([hidden_states, hidden_states.new_zeros(missing, hidden_states.shape[1])])
            probs = torch.cat([probs, probs.new_zeros(missing, probs.shape[1])])
            self.routing_map = torch.cat([self.routing_map, self.routing_map.new_zeros(missing, self.routing_map.shape[1])])
        return hidden_states, probs

    def combine_postprocess(self, hidden_states):
        return super().combine_postprocess(hidden_states[: self.local_tokens])


def take_uneven_token_counts(model: torch.nn.Module) -> None:
    """Give the all-gather dispatchers of ``model``'s MoE layers uneven token counts (the class
    only adds the padding around megatron's own methods, so its dispatchers are re-classed in place)."""
    for module in model.modules():
        if isinstance(module, MoELayer) and type(module.token_dispatcher) is MoEAllGatherTokenDispatcher:
            module.token_dispatcher.__class__ = UnevenAllGatherDispatcher


LOAD_BALANCING = "load_balancing_loss"  # megatron's tracker entry of the aux_loss type


def router_metrics(config: TransformerConfig, num_microbatches: int) -> dict[str, float]:
    """The step's load-balancing loss in transformers' scale (its formula per layer, averaged over
    the micro-batches, the data-parallel ranks and the layers), read from and then clearing
    megatron's per-layer tracker, which the training forwards fill; collective over the pipeline and
    data-parallel groups. Empty for a dense decoder."""
    tracker = moe_utils.get_moe_layer_wise_logging_tracker()
    if config.num_moe_experts is None or LOAD_BALANCING not in tracker:
        return {}
    moe_utils.reduce_aux_losses_tracker_across_ranks([LOAD_BALANCING])
    # megatron tracks E / k * sum_i f_i P_i per layer and micro-batch (f_i, P_i as transformers').
    per_layer = tracker[LOAD_BALANCING]["values"].float() * config.moe_router_topk / num_microbatches
    moe_utils.clear_aux_losses_tracker()
    return {"moe_load_balancing_loss": float(per_layer.sum()) / config.num_layers}
