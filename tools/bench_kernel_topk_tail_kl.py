"""Benchmark of `topk_tail_kl` (KL / JSD over the teacher's top-k tokens plus a tail bucket, chunked
pure torch) against eager torch (`topk_tail_kl_reference`: dense log_softmax, sort, collapse, the
baseline the ratios are taken against) and torch.compile of eager, in one process.

The teacher is a constant: the backward forms the student gradient only. Floor (bf16): 4 bytes
per element forward (read both logits), 8 forward + backward (read the student again and write its
gradient). Reports time (best of N), achieved bandwidth, peak extra memory and the ratios against
eager. Variants: fused, eager, compiled.

    python tools/bench_kernel_topk_tail_kl.py              # CUDA: T in {2048, 8192} x V in {32000, 152064}
    python tools/bench_kernel_topk_tail_kl.py --device cpu --tokens 2048 --vocab 32000 --k 64
"""
from __future__ import annotations

import torch
from bench_common import Variant, kernel_bench_parser, random_logits, run_kernel_bench

from megatron_omni.kernels import topk_tail_kl, topk_tail_kl_reference

BYTES_PER_ELEMENT = {"forward": 4, "forward+backward": 8}  # bf16 inputs


def make_inputs(args, tokens: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=args.device).manual_seed(0)
    student, teacher = random_logits(args, tokens, vocab, gen), random_logits(args, tokens, vocab, gen)
    return student.requires_grad_(), teacher


def make_variants(args) -> dict[str, Variant]:
    kw = dict(k=args.k, mode=args.mode, beta=args.beta, temperature=args.temperature)

    def eager(s, t):
        return topk_tail_kl_reference(s, t, **kw).sum()

    out = {"fused": Variant(lambda s, t: topk_tail_kl(s, t, **kw).sum()), "eager": Variant(eager)}
    if not args.no_compile:
        out["compiled"] = Variant(torch.compile(eager, dynamic=False))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = kernel_bench_parser(__doc__, {"cuda": [2048, 8192], "cpu": [2048]}, {"cuda": [32000, 152064], "cpu": [32000]})
    parser.add_argument("--k", type=int, default=64, help="teacher tokens that keep their own category")
    parser.add_argument("--mode", default="reverse", choices=["forward", "reverse", "jsd"])
    parser.add_argument("--beta", type=float, default=0.5, help="the JSD's mixture weight of the teacher")
    args = parser.parse_args(argv)
    label = f"topk_tail_kl k={args.k} mode={args.mode}" + (f" beta={args.beta}" if args.mode == "jsd" else "")
    run_kernel_bench(args, argv, label, make_inputs, make_variants, BYTES_PER_ELEMENT)


if __name__ == "__main__":
    main()
