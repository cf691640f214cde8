"""Train the Qwen2.5 language decoder on the generated text corpus (launch with torchrun).

    torchrun --nproc-per-node 2 -m megatron_omni.cli.pretrain_decoder \
        --config examples/configs/toy_decoder.yaml parallel.tensor_model_parallel_size=2
"""
from __future__ import annotations

from megatron_omni.cli.launch import launch


def main(argv: list[str] | None = None) -> None:
    # Imported here rather than at the top: each rank's checkpoint helper is a spawned interpreter
    # that imports this module again as its __main__, and needs none of the training stack.
    from megatron_omni.runs.decoder import run

    launch(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
