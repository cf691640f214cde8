"""One optimizer step over a list of micro-batches with megatron's pipeline schedules, and the
metrics of a rollout batch's several optimizer steps."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_omni.models.moe import router_metrics
from megatron_omni.parallel.device import step_device
from megatron_omni.training.model_setup import unwrap

# forward_step(batch, model_chunk) -> (output_tensor, loss_func);
# loss_func(output) -> (token-sum loss, token count, {name: scalar or [sum, count] tensor})
ForwardStep = Callable


def run_microbatches(
    model_chunks,
    microbatches: list,
    forward_step: ForwardStep,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
) -> dict[str, float]:
    """Forward (and backward) every micro-batch; returns the mean of each reported metric.

    Every pipeline stage reads the same micro-batches (later stages need positions and labels),
    so each virtual stage gets its own iterator over the list. Metrics exist on the last stage
    only: they are summed over the pipeline group (other stages add zeros) and averaged over
    data-parallel replicas, so every rank returns the same numbers.
    """
    iterators = [iter(microbatches) for _ in model_chunks]

    def step_func(data_iterator, model):
        return forward_step(next(data_iterator), model)

    outputs = get_forward_backward_func()(
        forward_step_func=step_func,
        data_iterator=iterators if len(model_chunks) > 1 else iterators[0],
        model=model_chunks if len(model_chunks) > 1 else model_chunks[0],
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    return _reduce_metrics(outputs)


@torch.no_grad()
def forward_only(model_chunks, microbatches: list, batch_of: Callable, store: Callable, seq_length: int,
                 micro_batch_size: int, **model_kwargs) -> None:
    """A no-grad pass of the micro-batches through the pipeline (scoring forwards).

    megatron's forward-only schedule keeps autograd on; without no_grad each scoring forward would
    build a graph nobody runs, and a MoE router would add its load-balancing loss to the step's
    tracker (OPPO's reference and two masked forwards made its logged value four times the training
    forward's own).

    ``batch_of(mb)`` is the OmniBatch to run; ``store(mb, logits)`` runs on the last stage with the
    TP-sharded logits [b, s, V_local] as the model produced them.
    """

    def forward_step(mb, model):
        batch = batch_of(mb)
        output = model(batch.tokens, batch.position_ids, None, **batch.model_kwargs(), **model_kwargs)

        def capture(logits):
            store(mb, logits)
            return logits.sum() * 0.0, torch.ones((), dtype=torch.int), {}

        return output, capture

    run_microbatches(model_chunks, microbatches, forward_step, seq_length, micro_batch_size, forward_only=True)


def _reduce_metrics(outputs: list[dict]) -> dict[str, float]:
    """Global-batch values of the loss functions' metrics, identical on every rank.

    A metric reported as a pair ``[sum, count]`` becomes sum / count over all micro-batches and
    data-parallel ranks (a token mean); a scalar is averaged over micro-batches and ranks.
    """
    local = None
    if outputs:
        local = {}
        for name in outputs[0]:
            values = torch.stack([o[name].detach().double().reshape(-1) for o in outputs])
            local[name] = values.sum(0) if values.shape[1] == 2 else values.mean(0).reshape(1)
        if local:
            # One device-to-host copy for all of them: pickled CUDA tensors would arrive on the
            # sender's GPU index, not the receiver's.
            on_host = torch.cat(list(local.values())).cpu().split([v.numel() for v in local.values()])
            local = dict(zip(local, on_host))
    holder = [local]
    dist.broadcast_object_list(
        holder,
        src=parallel_state.get_pipeline_model_parallel_last_rank(),
        group=parallel_state.get_pipeline_model_parallel_group(),
    )
    names = sorted(holder[0])
    if not names:
        return {}
    flat = torch.cat([holder[0][n] for n in names]).to(step_device())
    dp_group = parallel_state.get_data_parallel_group()
    dist.all_reduce(flat, group=dp_group)
    reduced = flat.tolist()  # the step's one read of its metrics
    metrics, i = {}, 0
    for name in names:
        if holder[0][name].numel() == 2:
            metrics[name] = reduced[i] / max(reduced[i + 1], 1.0)
            i += 2
        else:
            metrics[name] = reduced[i] / dist.get_world_size(dp_group)
            i += 1
    return metrics


def _grads_finite(model_chunks) -> bool:
    """Whether every reduced gradient on every rank is finite (one flag all-reduced over the world).

    The per-parameter checks stay on the device; only the final flag is read back, once.
    """
    grads = [p.main_grad for chunk in model_chunks for p in chunk.parameters() if getattr(p, "main_grad", None) is not None]
    if grads:
        bad = torch.stack([~torch.isfinite(g).all() for g in grads]).any().float().reshape(1)
    else:
        bad = torch.zeros(1, device=step_device())
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad.item())


def optimizer_step(model_chunks, optimizer, scheduler, microbatches, forward_step, seq_length, micro_batch_size) -> dict:
    """Zero grads, run the schedule, step the optimizer and the LR scheduler.

    A step whose loss or gradient norm is not finite changes nothing (no parameter update, no
    scheduler step) and reports ``nonfinite = 1``: with fp32/bf16 parameters megatron's optimizer
    would otherwise apply NaN updates (only fp16 loss scaling checks for them).
    """
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    started = time.perf_counter()
    metrics = run_microbatches(model_chunks, microbatches, forward_step, seq_length, micro_batch_size)
    metrics["time_forward_backward_s"] = time.perf_counter() - started
    metrics.update(router_metrics(unwrap(model_chunks[0]).config, len(microbatches)))
    started = time.perf_counter()
    finite = all(math.isfinite(v) for v in metrics.values()) and _grads_finite(model_chunks)
    update_successful, grad_norm = False, float("nan")
    if finite:
        update_successful, grad_norm, _ = optimizer.step()
        if update_successful:
            scheduler.step(increment=1)
    metrics["time_optimizer_s"] = time.perf_counter() - started
    metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
    metrics["lr"] = optimizer.param_groups[0]["lr"]
    metrics["skipped"] = float(not update_successful)
    metrics["nonfinite"] = float(not finite)
    return metrics


# Counted over a rollout batch's optimizer steps; the learning rate is the last one's; the rest
# are averaged.
_COUNTED = ("skipped", "nonfinite", "time_forward_backward_s", "time_optimizer_s")


def combine_updates(per_update: list[dict]) -> dict:
    """The metrics of the optimizer steps made from one rollout batch (one: unchanged)."""
    if len(per_update) == 1:
        return per_update[0]
    combined = {}
    for name in per_update[0]:
        values = [m[name] for m in per_update]
        if name in _COUNTED:
            combined[name] = float(sum(values))
        elif name == "lr":
            combined[name] = values[-1]
        else:
            combined[name] = sum(values) / len(values)
    return combined
