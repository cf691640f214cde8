"""Benchmark of `vocab_parallel_kl` (the fused full-vocabulary KL / JSD) against eager torch
(`kl_reference`: log_softmax + KL, the baseline the ratios are taken against), torch.compile of
eager and, when it is installed, Liger-Kernel, all in one process.

For each tokens x vocab size it reports forward and forward+backward time (best of N), achieved
bandwidth against the memory-traffic floor (bf16: 4 bytes per element forward, 10 bytes per
element forward + backward: read student and teacher, then read both again and write the student
gradient), the peak extra memory of forward + backward (gradient buffer included) and the ratios
against eager. Variants: fused, fused_inplace (`inplace_backward=True`), eager, compiled, liger.

    python tools/bench_kernel_vocab_parallel_kl.py         # CUDA: T in {2048, 8192} x V in {32000, 152064}
    python tools/bench_kernel_vocab_parallel_kl.py --device cpu --tokens 2048 --vocab 32000
"""
from __future__ import annotations

import torch
from bench_common import Variant, kernel_bench_parser, random_logits, run_kernel_bench

from megatron_omni.kernels import kl_reference, vocab_parallel_kl

BYTES_PER_ELEMENT = {"forward": 4, "forward+backward": 10}  # bf16 inputs


def make_inputs(args, tokens: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=args.device).manual_seed(0)
    student, teacher = random_logits(args, tokens, vocab, gen), random_logits(args, tokens, vocab, gen)
    return student.requires_grad_(), teacher


def _liger(args) -> Variant | None:
    try:
        from liger_kernel.transformers import LigerJSD
    except ImportError:
        return None
    # Liger's JSD takes log-probabilities; its beta = 1 is the reverse KL, beta = 0 the forward.
    jsd = LigerJSD(jsd_beta={"reverse": 1.0, "forward": 0.0, "jsd": args.beta}[args.mode])

    def loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_q = torch.log_softmax(s.float() / args.temperature, dim=-1)
        log_p = torch.log_softmax(t.float() / args.temperature, dim=-1)
        return jsd(log_q, log_p) * s.shape[0]  # its mean over tokens, back to a sum

    return Variant(loss)


def make_variants(args) -> dict[str, Variant]:
    kw = dict(mode=args.mode, beta=args.beta, temperature=args.temperature)

    def eager(s, t):
        return kl_reference(s, t, args.mode, args.beta, args.temperature).sum()

    out = {
        "fused": Variant(lambda s, t: vocab_parallel_kl(s, t, **kw).sum()),
        "fused_inplace": Variant(lambda s, t: vocab_parallel_kl(s, t, inplace_backward=True, **kw).sum(),
                                 writes_input=True),
        "eager": Variant(eager),
    }
    if not args.no_compile:
        out["compiled"] = Variant(torch.compile(eager, dynamic=False))
    liger = _liger(args)
    if liger is not None:
        out["liger"] = liger
    return out


def main(argv: list[str] | None = None) -> None:
    parser = kernel_bench_parser(__doc__, {"cuda": [2048, 8192], "cpu": [2048]}, {"cuda": [32000, 152064], "cpu": [32000]})
    parser.add_argument("--mode", default="reverse", choices=["forward", "reverse", "jsd"])
    parser.add_argument("--beta", type=float, default=0.5, help="the JSD's mixture weight of the teacher")
    parser.add_argument("--tile", type=int, nargs=3, metavar=("ROWS", "COLS", "WARPS"),
                        help="override the Triton launch tile (for tuning)")
    args = parser.parse_args(argv)
    if args.tile:
        from megatron_omni.kernels.common.backend import TileShape
        from megatron_omni.kernels.kl import triton_impl

        triton_impl.launch_tiles = lambda n_cols: TileShape(*args.tile)
    label = f"vocab_parallel_kl mode={args.mode}" + (f" beta={args.beta}" if args.mode == "jsd" else "") \
        + (f" tile={args.tile}" if args.tile else "")
    run_kernel_bench(args, argv, label, make_inputs, make_variants, BYTES_PER_ELEMENT)


if __name__ == "__main__":
    main()
