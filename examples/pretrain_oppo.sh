#!/usr/bin/env bash
# OPPO (or SFT, with algorithm=sft) training of an omni model.
#   NPROC_PER_NODE=2 examples/pretrain_oppo.sh --config examples/configs/toy_oppo.yaml [section.key=value ...]
#   NPROC_PER_NODE=8 examples/pretrain_oppo.sh --config examples/configs/qwen2_5_omni_7b_oppo.yaml \
#       init_from=/models/qwen2_5_omni_7b_megatron dataset.train_manifest=/data/train.jsonl ...
set -euo pipefail
source "$(dirname "$0")/launch_common.sh"
launch megatron_omni.cli.train "$@"
