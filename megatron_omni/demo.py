"""The main job on its embedded default: toy clips -> SFT cold start -> OPPO at TP=2 -> scoreboard.

    python -m megatron_omni.demo [--wheel-dir DIR] [--out runs/demo]

1. generates the toy emotion data set (real mp4 clips with faces and voices, once);
2. SFT-trains a tiny Qwen2.5-Omni-shaped model on it (two CPU processes, TP=2);
3. runs OPPO from that checkpoint (TP=2), scoring the held-out split before and after;
4. prints the before/after table and writes a PNG of the reward terms per step.
The MER emotion-wheel lexicon (format.csv, synonym.xlsx, wheel1-5.xlsx) comes from --wheel-dir,
$MEGATRON_OMNI_WHEEL_DIR, or ../shared/data/emotion_wheel beside the repository.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from megatron_omni.training.metrics import read_metrics
from megatron_omni.training.plots import plot_metrics

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "examples" / "configs"
REWARD_TERMS = ["reward_total", "reward_ew", "reward_format", "reward_perc", "reward_coh"]
SCORES = ["reward_total", "reward_ew", "reward_format", "reward_perc", "reward_coh",
          "emotion_wheel_f1", "fs_level1", "precision_level1", "recall_level1", "format_rate"]


def find_wheel_dir(given: str | None) -> Path:
    candidates = [given, os.environ.get("MEGATRON_OMNI_WHEEL_DIR"), str(REPO.parent / "shared" / "data" / "emotion_wheel")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "format.csv").is_file():
            return Path(candidate).resolve()
    raise SystemExit(
        "the MER emotion-wheel lexicon was not found: pass --wheel-dir DIR (a folder with format.csv, "
        "synonym.xlsx and wheel1.xlsx..wheel5.xlsx, from MERTools' MER2025 emotion_wheel) or set MEGATRON_OMNI_WHEEL_DIR"
    )


def torchrun(config: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "megatron_omni.train_omni", "--config", str(config), *overrides]
    print("[demo] " + " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    subprocess.run(cmd, check=True, env=env)


def mean(records: list[dict], key: str) -> float:
    return sum(r[key] for r in records) / len(records)


def report(out: Path) -> bool:
    before = json.loads((out / "oppo" / "eval_start.json").read_text())["scores"]
    after = json.loads((out / "oppo" / "eval_end.json").read_text())["scores"]
    records = read_metrics(out / "oppo" / "metrics.jsonl")
    k = max(1, len(records) // 4)
    first, last = records[:k], records[-k:]
    png = plot_metrics(out / "oppo" / "metrics.jsonl", REWARD_TERMS, out / "oppo_rewards.png", "OPPO reward terms per step")

    print("\nHeld-out toy split (greedy answers), SFT model vs after OPPO:")
    print(f" {'metric':<20} {'SFT':>8} {'OPPO':>8} {'change':>8}")
    for key in SCORES:
        print(f" {key:<20} {before[key]:8.4f} {after[key]:8.4f} {after[key] - before[key]:+8.4f}")
    print(f"\nOPPO training reward (other prompts each step), mean of the first {k} vs the last {k} steps:")
    for key in REWARD_TERMS:
        print(f" {key:<20} {mean(first, key):8.4f} {mean(last, key):8.4f} {mean(last, key) - mean(first, key):+8.4f}")
    improved = after["emotion_wheel_f1"] > before["emotion_wheel_f1"] and after["reward_total"] > before["reward_total"]
    print(f"\n[demo] reward plot: {png}; metrics and checkpoints under {out}")
    print(f"[demo] {'OPPO improved' if improved else 'OPPO did NOT improve'} the held-out mean reward and emotion-wheel F1")
    return improved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel-dir", help="MER emotion-wheel lexicon folder")
    parser.add_argument("--out", default="runs/demo", help="output folder (replaced)")
    args = parser.parse_args(argv)
    wheel = find_wheel_dir(args.wheel_dir)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)  # a demo starts from scratch
    common = [f"reward.wheel_dir={wheel}", "logging.progress_bar=false"]
    torchrun(CONFIGS / "toy_omni_sft.yaml", [*common, f"output_dir={out}/sft", f"train.save_dir={out}/sft/checkpoints"])
    torchrun(CONFIGS / "toy_oppo.yaml", [
        *common, f"output_dir={out}/oppo", f"train.save_dir={out}/oppo/checkpoints",
        f"init_from={out}/sft/checkpoints", "evaluation.at_start=true", "evaluation.at_end=true",
    ])
    return 0 if report(out) else 1


if __name__ == "__main__":
    sys.exit(main())
