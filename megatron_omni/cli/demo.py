"""The main job on its embedded default: toy clips -> SFT cold start -> OPPO at TP=2 -> scoreboard.

    python -m megatron_omni.cli.demo [--wheel-dir DIR] [--out runs/demo]
    python -m megatron_omni.cli.demo --algorithm opsd      # the same with OmniOPSD (runs/demo_opsd)
    python -m megatron_omni.cli.demo --model moe           # a toy Qwen3-Omni MoE thinker (runs/demo_moe)

1. generates the toy emotion data set (real mp4 clips with faces and voices, once) where the
   training configs put it by default (dataset.toy_dir, data_toy/);
2. SFT-trains a tiny Qwen2.5-Omni-shaped model on it (two CPU processes, data parallel), or with
   --model moe a tiny Qwen3-Omni-MoE-shaped one (examples/configs/toy_moe_*.yaml); for OmniOPSD half
   of the SFT prompts also carry their rationale, so that the model learns to read the reference
   analysis its teacher view will get;
3. runs OPPO (or OmniOPSD) from that checkpoint (TP=2; the MoE model data parallel), scoring the held-out split before and after;
4. prints the before/after table and writes a PNG of the training curves.
The emotion-wheel lexicon that scores the answers (format.csv, synonym.xlsx, wheel1-5.xlsx) is the
released MER one when --wheel-dir or $MEGATRON_OMNI_WHEEL_DIR names a copy (MERTools,
MER2025/MER2025_Track23/emotion_wheel/); without either, the toy set's own small lexicon
(data_toy/toy_emotion_wheel, covering the toy labels) scores them and the demo says so. Nothing
outside the repository is needed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from megatron_omni.data.config import DatasetConfig
from megatron_omni.data.toy import ToyDatasetPaths, make_toy_dataset
from megatron_omni.data.toy_wheel import RELEASED_SOURCE, WHEEL_ENV, find_wheel_dir
from megatron_omni.text.lexicon_files import LexiconError
from megatron_omni.training.metrics import read_metrics
from megatron_omni.training.plots import plot_metrics

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "examples" / "configs"
REWARD_TERMS = ["reward_total", "reward_ew", "reward_format", "reward_perc", "reward_coh"]


@dataclass(frozen=True)
class DemoRun:
    name: str  # the table's column and the output folder
    sft_overrides: tuple[str, ...]
    curves: tuple[str, ...]  # per-step training metrics: first vs last steps, and the PNG


RUNS = {
    "oppo": DemoRun("OPPO", (), tuple(REWARD_TERMS)),
    # The privileged SFT prompts are longer: a longer SFT window (the student's stays 320).
    "opsd": DemoRun("OmniOPSD", ("sft.privileged_fraction=0.5", "train.seq_length=384"),
                    ("distill_kl", *REWARD_TERMS)),
}
# Per --model: the SFT config and the RL configs by algorithm.
MODELS = {
    "dense": ("toy_omni_sft.yaml", {"oppo": "toy_oppo.yaml", "opsd": "toy_omniopsd.yaml"}),
    "moe": ("toy_moe_sft.yaml", {"oppo": "toy_moe_oppo.yaml", "opsd": "toy_moe_omniopsd.yaml"}),
}
SCORES = ["reward_total", "reward_ew", "reward_format", "reward_perc", "reward_coh",
          "emotion_wheel_f1", "fs_level1", "precision_level1", "recall_level1", "format_rate"]


def toy_dataset() -> ToyDatasetPaths:
    """The toy set where the training configs look for it by default (dataset.toy_*), written once."""
    d = DatasetConfig()
    print(f"[demo] toy data set: {d.toy_dir} ({d.toy_num_clips} clips, seed {d.toy_seed})", flush=True)
    return make_toy_dataset(d.toy_dir, d.toy_num_clips, d.toy_seed)


def torchrun(config: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "megatron_omni.cli.train", "--config", str(config), *overrides]
    print("[demo] " + " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    subprocess.run(cmd, check=True, env=env)


def mean(records: list[dict], key: str) -> float:
    return sum(r[key] for r in records) / len(records)


def report(out: Path, demo: DemoRun) -> bool:
    rl = out / demo.name.lower()
    before = json.loads((rl / "eval_start.json").read_text())["scores"]
    after = json.loads((rl / "eval_end.json").read_text())["scores"]
    records = read_metrics(rl / "metrics.jsonl")
    k = max(1, len(records) // 4)
    first, last = records[:k], records[-k:]
    png = plot_metrics(rl / "metrics.jsonl", list(demo.curves), out / f"{demo.name.lower()}_curves.png",
                       f"{demo.name} training curves per step")

    print(f"\nHeld-out toy split (greedy answers), SFT model vs after {demo.name}:")
    print(f" {'metric':<20} {'SFT':>8} {demo.name:>8} {'change':>8}")
    for key in SCORES:
        print(f" {key:<20} {before[key]:8.4f} {after[key]:8.4f} {after[key] - before[key]:+8.4f}")
    print(f"\n{demo.name} training (other prompts each step), mean of the first {k} vs the last {k} steps:")
    for key in demo.curves:
        print(f" {key:<20} {mean(first, key):8.4f} {mean(last, key):8.4f} {mean(last, key) - mean(first, key):+8.4f}")
    improved = after["emotion_wheel_f1"] > before["emotion_wheel_f1"]
    if "distill_kl" in demo.curves:
        improved = improved and mean(last, "distill_kl") < mean(first, "distill_kl")
        claim = "lower the distillation loss and raise the held-out emotion-wheel F1"
    else:
        improved = improved and after["reward_total"] > before["reward_total"]
        claim = "improve the held-out mean reward and emotion-wheel F1"
    print(f"\n[demo] curves: {png}; metrics and checkpoints under {out}")
    print(f"[demo] {demo.name} {'did' if improved else 'did NOT'} {claim}")
    return improved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel-dir", help=f"MER emotion-wheel lexicon folder (default: ${WHEEL_ENV}, "
                        "else the toy set's own wheel)")
    parser.add_argument("--algorithm", choices=sorted(RUNS), default="oppo", help="the RL stage after SFT")
    parser.add_argument("--model", choices=sorted(MODELS), default="dense",
                        help="the toy model: dense Qwen2.5-Omni-shaped or Qwen3-Omni MoE-shaped")
    parser.add_argument("--out", help="output folder, replaced (default runs/demo, with _opsd / _moe suffixes for "
                        "--algorithm opsd / --model moe)")
    args = parser.parse_args(argv)
    try:
        wheel, own = find_wheel_dir(args.wheel_dir, lambda: toy_dataset().wheel_dir)
    except LexiconError as error:
        raise SystemExit(str(error)) from None
    if own:
        print(f"[demo] no MER lexicon given (--wheel-dir / {WHEEL_ENV}): scoring with the toy set's own emotion "
              f"wheel {wheel} (it places the toy labels as the released lexicon does); the released lexicon comes from "
              f"{RELEASED_SOURCE}", flush=True)
    else:
        print(f"[demo] MER emotion-wheel lexicon: {wheel}", flush=True)
    demo = RUNS[args.algorithm]
    suffix = ("" if args.algorithm == "oppo" else f"_{args.algorithm}") + ("" if args.model == "dense" else f"_{args.model}")
    out = Path(args.out or f"runs/demo{suffix}")
    sft_config, rl_configs = MODELS[args.model]
    shutil.rmtree(out, ignore_errors=True)  # a demo starts from scratch
    common = [f"reward.wheel_dir={wheel.resolve()}", "logging.progress_bar=false"]
    torchrun(CONFIGS / sft_config,
             [*common, *demo.sft_overrides, f"output_dir={out}/sft", f"train.save_dir={out}/sft/checkpoints"])
    rl = f"{out}/{demo.name.lower()}"
    torchrun(CONFIGS / rl_configs[args.algorithm], [
        *common, f"output_dir={rl}", f"train.save_dir={rl}/checkpoints",
        f"init_from={out}/sft/checkpoints", "evaluation.at_start=true", "evaluation.at_end=true",
    ])
    return 0 if report(out, demo) else 1


if __name__ == "__main__":
    sys.exit(main())
