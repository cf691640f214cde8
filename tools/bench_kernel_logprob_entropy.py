"""Benchmark of `vocab_parallel_logprob_entropy` (fused per-token log-prob of the sampled token
and entropy, GRPO's inputs) against eager torch (`logprob_entropy_reference`: log_softmax, gather
and entropy, the baseline the ratios are taken against) and torch.compile of eager, in one process.

The loss differentiated is sum(log-prob) + sum(entropy), so both gradients are formed. Floor
(bf16): 2 bytes per element forward (read the logits), 6 forward + backward (read them again and
write their gradient). Reports time (best of N), achieved bandwidth, peak extra memory and the
ratios against eager. Variants: fused, eager, compiled.

    python tools/bench_kernel_logprob_entropy.py           # CUDA: T in {2048, 8192} x V in {32000, 152064}
    python tools/bench_kernel_logprob_entropy.py --device cpu --tokens 2048 --vocab 32000
"""
from __future__ import annotations

import torch
from bench_common import Variant, kernel_bench_parser, random_logits, run_kernel_bench

from megatron_omni.kernels import logprob_entropy_reference, vocab_parallel_logprob_entropy

BYTES_PER_ELEMENT = {"forward": 2, "forward+backward": 6}  # bf16 logits


def make_inputs(args, tokens: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=args.device).manual_seed(0)
    logits = random_logits(args, tokens, vocab, gen)
    targets = torch.randint(0, vocab, (tokens,), generator=gen, device=args.device)
    return logits.requires_grad_(), targets


def make_variants(args) -> dict[str, Variant]:
    def fused(x, targets):
        logprob, entropy = vocab_parallel_logprob_entropy(x, targets, temperature=args.temperature)
        return logprob.sum() + entropy.sum()

    def eager(x, targets):
        logprob, entropy = logprob_entropy_reference(x, targets, args.temperature)
        return logprob.sum() + entropy.sum()

    out = {"fused": Variant(fused), "eager": Variant(eager)}
    if not args.no_compile:
        out["compiled"] = Variant(torch.compile(eager, dynamic=False))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = kernel_bench_parser(__doc__, {"cuda": [2048, 8192], "cpu": [2048]}, {"cuda": [32000, 152064], "cpu": [32000]})
    parser.add_argument("--tile", type=int, nargs=3, metavar=("ROWS", "COLS", "WARPS"),
                        help="override the Triton launch tile (for tuning)")
    args = parser.parse_args(argv)
    if args.tile:
        from megatron_omni.kernels.common.backend import TileShape
        from megatron_omni.kernels.logprob_entropy import triton_impl

        triton_impl.launch_tiles = lambda n_cols: TileShape(*args.tile)
    label = "vocab_parallel_logprob_entropy" + (f" tile={args.tile}" if args.tile else "")
    run_kernel_bench(args, argv, label, make_inputs, make_variants, BYTES_PER_ELEMENT)


if __name__ == "__main__":
    main()
