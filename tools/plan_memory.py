"""Per-GPU peak memory of a training run, by component, from its config (no model is built).

    python tools/plan_memory.py examples/configs/qwen2_5_omni_7b_oppo.yaml
    python tools/plan_memory.py examples/configs/qwen2_5_omni_7b_oppo.yaml train.micro_batch_size=2 --world-size 8
    python tools/plan_memory.py examples/configs/toy_oppo.yaml model.vocab_size=32000 --cpu --measure 1 2

Prints weights, gradients, optimizer states, activations (with the config's recompute and
without), logits and the scoring stores, the rollout KV cache, the towers and the frozen
reference / teacher for the worst pipeline stage, each phase of the step (rollout, scoring,
training) and the peak: persistent state plus the largest phase (megatron_omni/training/memory_plan.py,
docs/PERFORMANCE.md "Memory plan"). --cpu plans what a CPU run holds (fp32 everywhere, no
Transformer Engine).

--measure N...: also build the run in this process (random weights, TP = PP = 1) and run one
warm-up step, then one step per N with N prompts in one micro-batch, each printed as measured
peak above the pre-step level (CUDA: max_memory_allocated; CPU: peak resident set with freed
buffers unmapped at once) beside the planner's figure for the same shape.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

from bench_common import PeakMemory, follow_live_tensors

from megatron_omni.training.memory_plan import format_plan, plan_memory


def load(config: str, overrides: list[str]):
    from megatron_omni.config import load_config
    from megatron_omni.runs.config import OmniTrainConfig

    return load_config(config, overrides, cls=OmniTrainConfig)


def measure(config: str, overrides: list[str], prompts: list[int], evidence_fraction: float,
            reward=None) -> list[dict]:
    """Measured vs planned step peaks of the run at each shape (prompts per micro-batch, one micro-batch);
    ``reward`` replaces the configured one (build_run)."""
    from megatron_omni.parallel import destroy_parallel, init_distributed
    from megatron_omni.runs.omni import build_run
    from megatron_omni.training.step import optimizer_step

    largest = max(prompts)
    fixed = ["parallel.tensor_model_parallel_size=1", "parallel.pipeline_model_parallel_size=1", "init_from=null",
             "train.save_dir=null", f"output_dir={tempfile.mkdtemp(prefix='plan_memory_')}", "logging.progress_bar=false",
             "logging.tensorboard=false", "logging.metrics_jsonl=false", "evaluation.at_start=false",
             "evaluation.at_end=false", f"train.micro_batch_size={largest}", f"train.global_batch_size={largest}"]
    init_distributed()
    r = build_run(load(config, [*overrides, *fixed]), reward)
    cfg, memory, rows = r.cfg, PeakMemory(), []
    weights = sum(p.numel() * p.element_size() for chunk in r.model_chunks for p in chunk.parameters())
    for step, n in enumerate([min(prompts), *prompts]):  # the first step warms up (optimizer states, lazy imports)
        cfg.train.micro_batch_size = cfg.train.global_batch_size = n
        if hasattr(r.algorithm, "micro_batch_size"):
            r.algorithm.micro_batch_size = n
        indices = r.sampler.next_indices()[:n]
        # Garbage of earlier steps or runs (reference cycles) freed by a collection inside the step
        # would lower the resident set under the pre-step level and hide that much of the peak.
        gc.collect()
        gc.disable()
        memory.reset()
        microbatches, metrics = r.algorithm.prepare(indices, step)
        optimizer_step(r.model_chunks, r.optimizer, r.scheduler, microbatches, r.algorithm.forward_step,
                       cfg.train.seq_length, n)
        peak = memory.peak_mb()
        del microbatches
        gc.enable()
        if step:
            if cfg.algorithm == "oppo":  # the step's own evidence share, for the masked store
                completion = metrics["completion_length"] * n * cfg.oppo.grpo.group_size
                evidence_fraction = max(metrics[f"evidence_{m}_tokens"] for m in ("visual", "audio")) / completion
            planned = plan_memory(cfg, world_size=1, cpu=not memory.cuda, evidence_fraction=evidence_fraction)
            rows.append({"algorithm": cfg.algorithm, "prompts": n, "measured_mb": peak,
                         "planned_mb": planned.step_peak / 2**20, "weights_mb": weights / 2**20,
                         "planned_weights_mb": planned.persistent["weights"] / 2**20})
            print(f"[plan_memory] {cfg.algorithm} {n} prompt(s) per micro-batch: measured {peak:.1f} MB, "
                  f"planned {rows[-1]['planned_mb']:.1f} MB", flush=True)
    destroy_parallel()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--world-size", type=int, default=8, help="GPUs of the run (DP = world / (TP x PP))")
    parser.add_argument("--gpu-gb", type=float, default=80.0, help="memory of one GPU, for the headroom line")
    parser.add_argument("--cpu", action="store_true", help="plan a CPU run (fp32, local layer spec)")
    parser.add_argument("--evidence-fraction", type=float, default=1.0,
                        help="share of completion tokens that are evidence of each modality (OPPO's masked store)")
    parser.add_argument("--measure", type=int, nargs="+", metavar="PROMPTS",
                        help="measure one step per value (prompts per micro-batch) in this process")
    parser.add_argument("--json", help="write the measured rows to this file")
    args = parser.parse_args(argv)
    if args.measure:
        follow_live_tensors()
        rows = measure(args.config, args.overrides, args.measure, args.evidence_fraction)
        if args.json:
            Path(args.json).write_text(json.dumps(rows))
        return 0
    cfg = load(args.config, args.overrides)
    print(format_plan(plan_memory(cfg, args.world_size, cpu=args.cpu, evidence_fraction=args.evidence_fraction),
                      gpu_bytes=args.gpu_gb * 1e9))
    return 0


if __name__ == "__main__":
    sys.exit(main())
