"""Train an omni model: SFT cold start, OPPO or OmniOPSD (launch with torchrun; see
examples/pretrain_oppo.sh and examples/train_omniopsd.sh).

    torchrun --nproc-per-node 2 -m megatron_omni.cli.train --config examples/configs/toy_oppo.yaml

With no manifests configured, the toy emotion data set is generated (once) and used.
"""
from __future__ import annotations

from megatron_omni.cli.launch import launch


def main(argv: list[str] | None = None) -> None:
    # Imported here rather than at the top: each rank's checkpoint helper is a spawned interpreter
    # that imports this module again as its __main__, and needs none of the training stack.
    from megatron_omni.runs.config import OmniTrainConfig
    from megatron_omni.runs.omni import run

    launch(__doc__, run, config_cls=OmniTrainConfig, argv=argv)


if __name__ == "__main__":
    main()
