"""Benchmark of `evidence_masked_kl` (OPPO's Omni-Perception loss term: one reverse KL per masked
modality on its evidence tokens, on `vocab_parallel_kl`) against eager torch
(`evidence_masked_kl_reference`, on `kl_reference`: the baseline the ratios are taken against) and
torch.compile of eager, in one process.

Two modalities ("visual", "audio"), each the evidence of a random `--evidence-fraction` of the
tokens. The KLs run over all tokens' logits but only the evidence rows are computed. Floor (bf16),
per modality: 4 bytes per element forward, 10 forward + backward (as `vocab_parallel_kl`), so 8 and
20 for the two. Reports time (best of N), achieved bandwidth, peak extra memory and the ratios
against eager. Variants: fused, fused_rows (the masked logits given as their evidence rows only,
[n_m, V], as OPPO keeps them: the full-input rows are gathered inside), eager, compiled.

    python tools/bench_kernel_evidence_masked_kl.py        # CUDA: T in {2048, 8192} x V in {32000, 152064}
    python tools/bench_kernel_evidence_masked_kl.py --device cpu --tokens 2048 --vocab 32000
"""
from __future__ import annotations

import torch
from bench_common import Variant, kernel_bench_parser, random_logits, run_kernel_bench

from megatron_omni.kernels import evidence_masked_kl
from megatron_omni.kernels.evidence_kl.reference import evidence_masked_kl_reference

MODALITIES = ("visual", "audio")
BYTES_PER_ELEMENT = {"forward": 4 * len(MODALITIES), "forward+backward": 10 * len(MODALITIES)}  # bf16 inputs


def make_inputs(args, tokens: int, vocab: int) -> tuple:
    gen = torch.Generator(device=args.device).manual_seed(0)
    full = random_logits(args, tokens, vocab, gen).requires_grad_()
    masked = {m: random_logits(args, tokens, vocab, gen) for m in MODALITIES}
    masks = {m: torch.rand(tokens, generator=gen, device=args.device) < args.evidence_fraction for m in MODALITIES}
    rows = {m: masked[m][masks[m]] for m in MODALITIES}
    return full, masked, masks, rows


def make_variants(args) -> dict[str, Variant]:
    kw = dict(gamma=0.5, temperature=args.temperature)

    def eager(full, masked, masks, rows):
        return evidence_masked_kl_reference(full, masked, masks, **kw)

    out = {"fused": Variant(lambda full, masked, masks, rows: evidence_masked_kl(full, masked, masks, **kw).loss),
           "fused_rows": Variant(lambda full, masked, masks, rows: evidence_masked_kl(full, rows, masks, **kw).loss),
           "eager": Variant(eager)}
    if not args.no_compile:
        out["compiled"] = Variant(torch.compile(eager, dynamic=False))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = kernel_bench_parser(__doc__, {"cuda": [2048, 8192], "cpu": [2048]}, {"cuda": [32000, 152064], "cpu": [32000]})
    parser.add_argument("--evidence-fraction", type=float, default=0.3, help="share of tokens that are a modality's "
                                                                             "evidence")
    args = parser.parse_args(argv)
    label = f"evidence_masked_kl modalities={','.join(MODALITIES)} evidence fraction={args.evidence_fraction}"
    run_kernel_bench(args, argv, label, make_inputs, make_variants, BYTES_PER_ELEMENT)


if __name__ == "__main__":
    main()
