"""Throughput, MFU and peak memory of OPPO steps in bf16 and in FP8 (Transformer Engine).

    python tools/bench_precision.py --qwen7b-layers 4          # one H100: bf16, then FP8 hybrid/delayed
    python tools/bench_precision.py --qwen7b-layers 4 --fp8-recipe tensorwise   # current scaling
    python tools/bench_precision.py --variants bf16            # CPU: the toy model in bf16

Builds the toy OPPO run (examples/configs/toy_oppo.yaml at TP=1, random weights, the real reward)
once per variant in this process, runs one warm-up step and --steps measured steps (rollouts,
rewards, scoring forwards, loss, optimizer), and prints per variant: seconds per step, tokens/s
(completion tokens sampled, and sequence tokens trained), model TFLOP/s and MFU, peak memory above
the pre-step level, with the ratios against the first variant (bf16, the baseline).

FLOPs are counted as 2 x parameters per token for every forward (prefill and decode of the
rollouts, the no-grad scoring forwards) and 6 x parameters per trained token (forward + backward),
on padded sequences; attention's quadratic term is left out. MFU divides by --peak-tflops (the
dense bf16 peak of an H100 SXM by default, for both variants, as is customary). Variants that
cannot run here (FP8 without Transformer Engine on CUDA) are reported with the start-up error.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench_common import PeakMemory, follow_live_tensors, qwen7b_overrides, timed_rl_step

REPO = Path(__file__).resolve().parent.parent
H100_BF16_DENSE_TFLOPS = 989.0


def variant_overrides(name: str, args) -> list[str]:
    if name == "bf16":
        return ["precision.params_dtype=bf16", "precision.fp8=null"]
    return ["precision.params_dtype=bf16", f"precision.fp8={args.fp8}", f"precision.fp8_recipe={args.fp8_recipe}"]


def forwards_per_sequence(cfg) -> int:
    """No-grad scoring forwards of each completion: the frozen reference and two masked passes."""
    return (1 if cfg.oppo.grpo.kl_beta else 0) + (2 if cfg.oppo.perception_loss else 0)


def run_variant(name: str, args) -> dict[str, float]:
    from megatron_omni.config import load_config
    from megatron_omni.parallel import destroy_parallel, init_distributed
    from megatron_omni.runs.config import OmniTrainConfig
    from megatron_omni.runs.omni import build_run

    overrides = [
        "parallel.tensor_model_parallel_size=1", "init_from=null",
        *([f"reward.wheel_dir={args.wheel_dir}"] if args.wheel_dir else []),
        "train.save_dir=null", f"output_dir={tempfile.mkdtemp(prefix='bench_precision_')}",
        f"dataset.toy_dir={args.toy_dir}", "logging.progress_bar=false", "logging.tensorboard=false",
        "logging.metrics_jsonl=false", *qwen7b_overrides(args.qwen7b_layers), *variant_overrides(name, args),
        *args.override,
    ]
    init_distributed()
    r = build_run(load_config(REPO / "examples" / "configs" / "toy_oppo.yaml", overrides, cls=OmniTrainConfig))
    cfg, t = r.cfg, r.cfg.train
    params = sum(p.numel() for chunk in r.model_chunks for p in chunk.parameters())
    memory = PeakMemory()
    totals = {"step_s": 0.0, "completion_tokens": 0.0, "trained_tokens": 0.0, "flops": 0.0, "peak_mb": 0.0,
              "rollout_tokens_per_s": 0.0}
    for step in range(args.steps + 1):  # step 0 warms up
        memory.reset()
        microbatches, metrics, elapsed = timed_rl_step(r, step)
        sequences = sum(mb.batch.tokens.shape[0] for mb in microbatches)
        completions = metrics["completion_length"] * sequences
        prompts = sum(sum(mb.batch.prompt_lengths) for mb in microbatches) / cfg.oppo.grpo.group_size  # one prefill each
        trained = sequences * t.seq_length
        flops = 2 * params * (prompts + completions + forwards_per_sequence(cfg) * trained) + 6 * params * trained
        if step:
            for key, value in zip(totals, (elapsed, completions, trained, flops, memory.peak_mb(),
                                           metrics["rollout_tokens_per_s"])):
                totals[key] += value / args.steps
        print(f"[bench_precision] {name} step {step}{' (warm-up)' if not step else ''}: {elapsed:.2f} s", flush=True)
    destroy_parallel()
    return {
        "step_s": totals["step_s"],
        "completion_tokens_per_s": totals["completion_tokens"] / totals["step_s"],
        "trained_tokens_per_s": totals["trained_tokens"] / totals["step_s"],
        "model_tflops": totals["flops"] / totals["step_s"] / 1e12,
        "mfu_percent": 100 * totals["flops"] / totals["step_s"] / 1e12 / args.peak_tflops,
        "peak_mb": totals["peak_mb"],
        "rollout_tokens_per_s": totals["rollout_tokens_per_s"],
        "params_millions": params / 1e6,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    parser.add_argument("--fp8", default="hybrid", choices=["hybrid", "e4m3"])
    parser.add_argument("--fp8-recipe", default="delayed", choices=["delayed", "tensorwise"],
                        help="delayed scaling, or tensorwise current scaling")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per variant (after one warm-up step)")
    parser.add_argument("--qwen7b-layers", type=int, help="a Qwen2.5-7B-shaped decoder with this many layers")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    parser.add_argument("--toy-dir", default="data_toy", help="the toy data set (generated if missing)")
    parser.add_argument("--wheel-dir", help="MER emotion-wheel lexicon folder (default: the toy set's own wheel)")
    parser.add_argument("--override", nargs="*", default=[], help="section.key=value config overrides")
    parser.add_argument("--json", help="also write each variant's figures to this file")
    args = parser.parse_args(argv)
    follow_live_tensors()
    from megatron_omni.config import ConfigError

    results = {}
    for name in args.variants:
        try:
            results[name] = run_variant(name, args)
        except ConfigError as exc:
            print(f"[bench_precision] {name} cannot run here: {exc}", flush=True)
    if not results:
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    baseline = next(iter(results.values()))
    print(f"\nOPPO steps, mean of {args.steps}; ratios against {next(iter(results))}:")
    print(f" {'':<26}" + "".join(f"{n:>12}{'ratio':>8}" for n in results))
    for key in baseline:
        ratio = {name: r[key] / baseline[key] if baseline[key] else float("nan") for name, r in results.items()}
        cells = "".join(f"{r[key]:12.3f}{ratio[name]:8.3f}" for name, r in results.items())
        print(f" {key:<26}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
