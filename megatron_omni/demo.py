"""The main job on its embedded default: train the tiny Qwen2.5 decoder at TP=2 on CPU.

    python -m megatron_omni.demo [section.key=value ...]

Starts two processes with torchrun, trains on the generated text corpus, prints the loss curve
and fails if the loss did not fall.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from megatron_omni.training.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "examples" / "configs" / "toy_decoder.yaml"
OUT = Path("runs/demo")


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    shutil.rmtree(OUT, ignore_errors=True)  # a demo starts from scratch
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "megatron_omni.pretrain_decoder", "--config", str(CONFIG),
        f"output_dir={OUT}", f"train.save_dir={OUT}/checkpoints", *overrides,
    ]
    print("[demo] " + " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    subprocess.run(cmd, check=True, env=env)
    records = read_metrics(OUT / "metrics.jsonl")
    print("\n step | lm_loss | lr")
    for r in records[:: max(1, len(records) // 10)] + ([records[-1]] if len(records) % 10 else []):
        print(f" {r['step']:4d} | {r['lm_loss']:.4f} | {r['lr']:.2e}")
    first, last = records[0]["lm_loss"], records[-1]["lm_loss"]
    verdict = "fell" if last < first else "did NOT fall"
    print(f"\n[demo] loss {verdict}: {first:.4f} -> {last:.4f} over {len(records)} steps at TP=2 "
          f"(metrics: {OUT}/metrics.jsonl, TensorBoard: {OUT}/tensorboard, checkpoints: {OUT}/checkpoints)")
    return 0 if last < first else 1


if __name__ == "__main__":
    sys.exit(main())
