"""Train the Qwen2.5 language decoder on the generated text corpus (launch with torchrun).

    torchrun --nproc-per-node 2 -m megatron_omni.cli.pretrain_decoder \
        --config examples/configs/toy_decoder.yaml parallel.tensor_model_parallel_size=2
"""
from __future__ import annotations

from megatron_omni.cli.launch import launch
from megatron_omni.runs.decoder import run


def main(argv: list[str] | None = None) -> None:
    launch(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
