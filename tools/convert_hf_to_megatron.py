"""Convert a Hugging Face Qwen2.5-Omni or Qwen3-Omni (MoE) thinker into a model-only Megatron checkpoint.

    python tools/convert_hf_to_megatron.py --hf-dir Qwen2.5-Omni-7B --out-dir checkpoints/omni-7b [--dtype bf16]

--hf-dir is a thinker folder or a full released Qwen2.5-Omni / Qwen3-Omni folder (config.json's
model_type says which). Only the thinker is trained and converted: the talker / token2wav /
code2wav weights and spk_dict.pt stay in --hf-dir, and
tools/convert_megatron_to_hf.py --base-model HF_DIR puts them back beside the trained thinker. The
conversion runs in one CPU process, one tensor at a time (peak memory about a layer plus a source
tensor's pages, whatever the model's size). The result loads at any tensor/pipeline-parallel
layout, MoE experts at any expert-parallel size (megatron_omni.convert.load_model_checkpoint) and carries omni_model.yaml and the
tokenizer/processor files.
"""
from __future__ import annotations

import argparse
import os
import sys

# A CPU job by design: accelerators are hidden before torch is imported.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from megatron_omni.convert import convert_hf_to_megatron  # noqa: E402
from megatron_omni.convert.cli import run_conversion  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", required=True, help="Hugging Face folder: config.json + safetensors")
    parser.add_argument("--out-dir", required=True, help="Megatron checkpoint folder to create")
    parser.add_argument("--dtype", dest="params_dtype", choices=["fp32", "bf16", "fp16"],
                        help="weights dtype (default: the one config.json names)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out-dir if it exists")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    return run_conversion(convert_hf_to_megatron, **vars(parse_args(argv)))


# dist_checkpointing.save starts a helper process that re-imports this module: keep the guard.
if __name__ == "__main__":
    sys.exit(main())
