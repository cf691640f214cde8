"""Time and peak memory of OmniOPSD steps, split into rollout / teacher / student / optimizer.

    python tools/bench_opsd.py                      # the toy model on CPU (about a minute)
    python tools/bench_opsd.py --qwen7b-layers 2    # on a GPU: a Qwen2.5-7B-shaped model, 2 layers
    python tools/bench_opsd.py --override opsd.group_size=8 train.global_batch_size=2

Builds the toy OmniOPSD run (examples/configs/toy_omniopsd.yaml, random weights unless
--init-from) in this process, then runs the same steps twice: with the teacher interleaved with
the student one micro-batch at a time (what the trainer does at PP=1), and, as the baseline, with
the teacher scored up front for the whole step (what pipeline stages need), whose teacher logits
all live until the loss. Prints, per variant, the mean seconds of each phase and the peak memory
above the level before the step (CUDA: max_memory_allocated; CPU: the peak resident set, with glibc
returning freed buffers at once), and the ratios of the two.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench_common import PeakMemory, follow_live_tensors, qwen7b_overrides

REPO = Path(__file__).resolve().parent.parent
def build(args):
    from megatron_omni.config import load_config
    from megatron_omni.parallel import init_distributed
    from megatron_omni.runs.config import OmniTrainConfig
    from megatron_omni.runs.omni import build_run

    work = Path(tempfile.mkdtemp(prefix="bench_opsd_"))
    overrides = [
        "parallel.tensor_model_parallel_size=1", f"init_from={args.init_from or 'null'}",
        "reward.wheel_dir=null", "train.save_dir=null", f"output_dir={work}", f"dataset.toy_dir={args.toy_dir}",
        "logging.progress_bar=false", "logging.tensorboard=false", "logging.metrics_jsonl=false",
    ]
    overrides += qwen7b_overrides(args.qwen7b_layers)
    init_distributed()
    return build_run(load_config(REPO / "examples" / "configs" / "toy_omniopsd.yaml", [*overrides, *args.override],
                                 cls=OmniTrainConfig))


def run_variant(r, index_sets, teacher_first: bool, memory: PeakMemory) -> dict[str, float]:
    from megatron_omni.training.step import optimizer_step

    algorithm, t = r.algorithm, r.cfg.train
    algorithm.teacher_first = teacher_first
    totals: dict[str, float] = {}
    for step, indices in enumerate(index_sets):
        memory.reset()
        started = time.perf_counter()
        microbatches, metrics = algorithm.prepare(indices, step)
        prepared = time.perf_counter() - started
        metrics.update(optimizer_step(r.model_chunks, r.optimizer, r.scheduler, microbatches, algorithm.forward_step,
                                      t.seq_length, t.micro_batch_size))
        teacher = algorithm.teacher_seconds
        phases = {
            "rollout_s": metrics["time_rollout_s"],
            "teacher_s": teacher,
            # Up front, the teacher ran in prepare; interleaved, inside the forward-backward.
            "student_s": metrics["time_forward_backward_s"] - (0.0 if teacher_first else teacher),
            "optimizer_s": metrics["time_optimizer_s"],
            "other_s": prepared - metrics["time_rollout_s"] - (teacher if teacher_first else 0.0),
            "peak_mb": memory.peak_mb(),
            "completion_tokens": metrics["completion_length"] * len(indices) * algorithm.group,
        }
        del microbatches
        print(f"[bench_opsd] {'up-front' if teacher_first else 'interleaved'} step {step}: "
              + ", ".join(f"{k}={v:.3f}" for k, v in phases.items()), flush=True)
        for key, value in phases.items():
            totals[key] = totals.get(key, 0.0) + value / len(index_sets)
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per variant (after one warm-up step)")
    parser.add_argument("--init-from", help="starting weights (e.g. runs/demo/sft/checkpoints); default: random")
    parser.add_argument("--toy-dir", default="data_toy", help="the toy data set (generated if missing)")
    parser.add_argument("--qwen7b-layers", type=int, help="a Qwen2.5-7B-shaped decoder with this many layers")
    parser.add_argument("--override", nargs="*", default=[], help="section.key=value config overrides")
    args = parser.parse_args(argv)
    follow_live_tensors()

    r = build(args)
    memory = PeakMemory()
    index_sets = [r.sampler.next_indices() for _ in range(args.steps + 1)]
    run_variant(r, index_sets[:1], False, memory)  # warm-up: lazy imports, first-touch allocations
    interleaved = run_variant(r, index_sets[1:], False, memory)
    upfront = run_variant(r, index_sets[1:], True, memory)

    c = r.cfg
    print(f"\nOmniOPSD step, {c.model.num_layers} layers x {c.model.hidden_size}, vocab {c.model.vocab_size}, "
          f"{c.train.global_batch_size} prompts x {c.opsd.group_size} completions, "
          f"{'CUDA' if memory.cuda else 'CPU'}; mean of {args.steps} steps:")
    print(f" {'':<18} {'interleaved':>12} {'up-front':>12} {'ratio':>8}")
    for key in interleaved:
        ratio = interleaved[key] / upfront[key] if upfront[key] else float("nan")
        print(f" {key:<18} {interleaved[key]:12.3f} {upfront[key]:12.3f} {ratio:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
