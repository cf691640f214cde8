#!/usr/bin/env bash
# Train the Qwen2.5 language decoder on the generated text corpus.
#   NPROC_PER_NODE=2 examples/pretrain_decoder.sh --config examples/configs/toy_decoder.yaml [section.key=value ...]
set -euo pipefail
source "$(dirname "$0")/launch_common.sh"
launch megatron_omni.cli.pretrain_decoder "$@"
