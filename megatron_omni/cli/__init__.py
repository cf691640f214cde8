"""Command-line entry points, each a thin `main` over the library (`megatron_omni.runs`):

- `python -m megatron_omni.cli.train`: omni training (SFT, OPPO, OmniOPSD), under torchrun;
- `python -m megatron_omni.cli.pretrain_decoder`: the Qwen2.5 decoder on a generated text corpus;
- `python -m megatron_omni.cli.demo`: the main job on its embedded default (toy data, CPU);
- `python -m megatron_omni.cli.check_launch`: every rank reports its place, one all-reduce.

Nothing in the library imports this package.
"""
