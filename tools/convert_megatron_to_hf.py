"""Convert a Megatron checkpoint of the omni thinker into a Hugging Face thinker folder.

    python tools/convert_megatron_to_hf.py --checkpoint checkpoints/omni-7b --out-dir omni-7b-hf [--max-shard-size 5GB]

--checkpoint is a folder written by the HF -> Megatron converter or by save_model_checkpoint
(saved at any TP/PP), or one of its iter_* folders; its omni_model.yaml describes the model. The
output (config.json, safetensors shards and index, tokenizer/processor files) loads with
transformers' Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained.
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
    parser.add_argument("--checkpoint", required=True, help="Megatron checkpoint folder (with omni_model.yaml)")
    parser.add_argument("--out-dir", required=True, help="Hugging Face folder to create")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors file, e.g. 5GB or 500MB (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out-dir if it exists")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    return run_conversion(convert_megatron_to_hf, **vars(parse_args(argv)))


# The loader may start dist_checkpointing helper processes that re-import this module.
if __name__ == "__main__":
    sys.exit(main())
