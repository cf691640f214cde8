#!/usr/bin/env bash
# OmniOPSD (rationale-privileged on-policy self-distillation) of an omni model.
#   NPROC_PER_NODE=2 examples/train_omniopsd.sh --config examples/configs/toy_omniopsd.yaml [section.key=value ...]
#   NPROC_PER_NODE=8 examples/train_omniopsd.sh --config examples/configs/qwen2_5_omni_7b_omniopsd.yaml \
#       init_from=/models/omni7b_sft dataset.train_manifest=/data/train.jsonl ...
set -euo pipefail
source "$(dirname "$0")/launch_common.sh"
launch megatron_omni.cli.train "$@"
