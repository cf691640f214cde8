"""megatron-core optimizer (Adam, optional distributed optimizer) and its LR/WD scheduler."""
from __future__ import annotations

from megatron.core.optimizer import OptimizerConfig as McoreOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_omni.training.config import RunConfig


def build_optimizer(cfg: RunConfig, model_chunks):
    o, prec = cfg.optimizer, cfg.precision
    mcfg = McoreOptimizerConfig(
        optimizer="adam",
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=prec.params_dtype == "bf16",
        fp16=prec.params_dtype == "fp16",
        params_dtype=model_chunks[0].config.params_dtype,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(mcfg, model_chunks)
    # fp16 loss scaling enters the backward through the schedule's grad_scale_func.
    model_chunks[0].config.grad_scale_func = optimizer.scale_loss
    # The schedule ticks once per optimizer step: train.steps rollout (or data) batches, each of
    # optimizer_steps_per_batch() optimizer steps (PPO mini-batches x epochs; 1 otherwise).
    steps = max(cfg.train.steps * cfg.optimizer_steps_per_batch(), 1)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if o.lr_warmup_steps else o.lr,
        max_lr=o.lr,
        min_lr=o.min_lr if o.lr_decay_style != "constant" else o.lr,
        lr_warmup_steps=o.lr_warmup_steps,
        lr_decay_steps=steps,
        lr_decay_style=o.lr_decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=steps,
        wd_incr_style="constant",
    )
    return optimizer, scheduler
