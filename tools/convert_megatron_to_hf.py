"""Convert a Megatron checkpoint of the omni thinker into a Hugging Face folder.

    python tools/convert_megatron_to_hf.py --checkpoint runs/sft/checkpoints --out-dir omni-sft-hf \
        --base-model Qwen2.5-Omni-7B [--iteration 400] [--max-shard-size 5GB]

--checkpoint is a folder written by the HF -> Megatron converter, a training run's train.save_dir
(--iteration picks one of its complete checkpoints, default the latest) or an iter_* folder, saved
at any TP/PP with or without the distributed optimizer; the omni_model.yaml beside it describes the
model. With --base-model (the full released folder the run started from, of the checkpoint's
model.family) the output is the full model: the trained thinker, the base model's talker,
token2wav / code2wav, spk_dict.pt, config.json and tokenizer/processor files; a Qwen2.5-Omni one
loads with Qwen2_5OmniForConditionalGeneration.from_pretrained and speaks. Without it the output
is a thinker folder (Qwen2_5OmniThinkerForConditionalGeneration or
Qwen3OmniMoeThinkerForConditionalGeneration). Memory stays at one layer plus one output shard.
"""
from __future__ import annotations

import argparse
import os
import sys

# A CPU job by design: accelerators are hidden before torch is imported.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from megatron_omni.convert import convert_megatron_to_hf  # noqa: E402
from megatron_omni.convert.cli import run_conversion  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="Megatron checkpoint folder or training train.save_dir (with omni_model.yaml)")
    parser.add_argument("--iteration", type=int, help="which complete checkpoint of the folder (default: the latest)")
    parser.add_argument("--base-model", help="full released HF folder of the model family: write the full model, speech included")
    parser.add_argument("--out-dir", required=True, help="Hugging Face folder to create")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors file, e.g. 5GB or 500MB (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out-dir if it exists")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    return run_conversion(convert_megatron_to_hf, **vars(parse_args(argv)))


# The loader may start dist_checkpointing helper processes that re-import this module.
if __name__ == "__main__":
    sys.exit(main())
