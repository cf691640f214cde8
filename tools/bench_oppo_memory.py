"""Peak memory of an OPPO step: what the scoring forwards keep, the rollout KV cache and the
frozen reference's weights.

    python tools/bench_oppo_memory.py                     # CPU: toy widths at vocabulary 152064
    python tools/bench_oppo_memory.py --variants rows full_store --override model.vocab_size=32000

Builds the toy OPPO run (examples/configs/toy_oppo.yaml at TP=1, random weights, the real reward,
model.vocab_size=152064 unless overridden) once per variant in this process, runs one warm-up step
and --steps measured steps (rollouts, rewards, scoring forwards, loss, optimizer), and prints the
peak memory above the pre-step level per variant (CUDA: max_memory_allocated; CPU: the peak
resident set, with freed buffers unmapped at once), with its ratio against the first variant.
A random-weight model writes no sentence the reward counts as evidence, so the first and the next
--evidence-fraction of each completion's tokens are taken as its visual and audio evidence.

Variants:
  full_store   the store before the evidence-rows change, kept here as a baseline only: every
               micro-batch's visual- and audio-masked logits [b, s, V/TP] and reference
               log-probs [b, s] live from the scoring forwards to the end of the step
  rows         the library's store: masked logits at each modality's evidence rows, reference
               log-probs at completion tokens, each released when its micro-batch's loss reads it
  interleaved  (PP = 1) no masked forward up front: each micro-batch runs its two masked
               forwards right before its policy forward and keeps their evidence rows only
  kv_kept      rows, with every rollout's KV cache held until the step ends (what freeing the
               cache after decoding prevents)
  offload      rows with oppo.offload_reference=true: the reference's weights live on the CPU
               between its forwards (on a CPU machine the move is a no-op: the figure to read
               is then the weight bytes printed beside it)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import torch
from bench_common import PeakMemory, follow_live_tensors, timed_rl_step

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("full_store", "rows", "interleaved", "kv_kept", "offload")


def full_store_oppo(base):
    """OPPO with the store it had before: whole [b, s, V/TP] masked logits per modality and whole
    [b, s] reference log-probs per micro-batch, held until the step ends."""
    from megatron_omni.algorithms.evidence import MODALITIES
    from megatron_omni.kernels import vocab_parallel_logprob_entropy
    from megatron_omni.models.masking import ModalityMask

    class FullStore(base):
        def _score(self, microbatches, step):
            from megatron_omni.algorithms.grpo import kl_beta_at

            cfg = self.cfg
            self.beta = kl_beta_at(cfg.oppo.grpo, step, cfg.train.steps)
            self.held = []  # the step's micro-batch list held them all until the step ended

            def store_ref(mb, logits):
                lp, _ = vocab_parallel_logprob_entropy(logits.detach(), mb.batch.labels, group=self.tp_group,
                                                       vocab_size=cfg.model.vocab_size)
                mb.scores["ref_logprobs"] = lp
                self.held.append(lp)

            if self.beta and self.reference_chunks is not None:
                self._forward_only(self.reference_chunks, microbatches, store_ref)
            for modality in MODALITIES:
                mask = ModalityMask(modality, cfg.omni.modality_mask_ratio, seed=cfg.train.seed + step)

                def store_masked(mb, logits, modality=modality):
                    mb.scores.setdefault("masked", {})[modality] = logits.detach()
                    self.held.append(logits.detach())

                self._forward_only(self.model_chunks, microbatches, store_masked, modality_mask=mask)

        def _kept_logprobs(self, mb, name, logprobs):
            if name == "ref_logprobs":  # held whole, [b, s]
                return self._read(mb, name)
            return super()._kept_logprobs(mb, name, logprobs)

    return FullStore


def interleaved_oppo(base):
    """OPPO whose masked forwards run per micro-batch inside the training schedule (PP = 1)."""
    from megatron_omni.algorithms.evidence import MODALITIES
    from megatron_omni.models.masking import ModalityMask

    class Interleaved(base):
        def _score(self, microbatches, step):
            self.step = step
            perception, self.cfg.oppo.perception_loss = self.cfg.oppo.perception_loss, False
            try:
                super()._score(microbatches, step)  # the reference forwards only
            finally:
                self.cfg.oppo.perception_loss = perception

        def forward_step(self, mb, model):
            cfg, batch = self.cfg, mb.batch
            with torch.no_grad():
                for modality in MODALITIES:
                    rows = mb.rows[modality]
                    if len(rows):
                        mask = ModalityMask(modality, cfg.omni.modality_mask_ratio, seed=cfg.train.seed + self.step)
                        logits = model(batch.tokens, batch.position_ids, None, **batch.model_kwargs(), modality_mask=mask)
                        mb.scores.setdefault("masked", {})[modality] = logits[rows[:, 0], rows[:, 1]]
                        del logits
            return super().forward_step(mb, model)

    return Interleaved


class KeptCaches(dict):
    """A KV-cache dict whose tensors outlive the rollout: a stand-in for a leaked context."""

    held: list = []

    def clear(self):
        KeptCaches.held.append(dict(self))
        super().clear()


def keep_kv_caches():
    import megatron_omni.generation.generator as generator

    class LeakyContext(generator.StaticInferenceContext):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.key_value_memory_dict = KeptCaches()

    generator.StaticInferenceContext = LeakyContext


def drawn_evidence(fraction: float):
    """OPPO._evidence marking the first ``fraction`` of a completion's tokens visual, the next audio."""
    from megatron_omni.algorithms.evidence import MODALITIES

    def evidence(self, completion_ids, text, sample, prompt_length: int, seq_length: int):
        out = {m: torch.zeros(seq_length, dtype=torch.bool) for m in MODALITIES}
        k = int(len(completion_ids) * fraction)
        out["visual"][prompt_length - 1 : prompt_length - 1 + k] = True
        out["audio"][prompt_length - 1 + k : prompt_length - 1 + 2 * k] = True
        return out

    return evidence


def run_variant(name: str, args) -> dict[str, float]:
    from megatron_omni.algorithms.oppo import OPPO
    from megatron_omni.config import load_config
    from megatron_omni.parallel import destroy_parallel, init_distributed
    from megatron_omni.runs.config import OmniTrainConfig
    from megatron_omni.runs.omni import build_run

    overrides = [
        "parallel.tensor_model_parallel_size=1", "init_from=null", f"model.vocab_size={args.vocab}",
        "train.save_dir=null", f"output_dir={tempfile.mkdtemp(prefix='bench_oppo_memory_')}",
        f"dataset.toy_dir={args.toy_dir}", "logging.progress_bar=false", "logging.tensorboard=false",
        "logging.metrics_jsonl=false", f"train.global_batch_size={args.prompts}",
        f"oppo.sampling.max_new_tokens={args.max_new_tokens}",
        *(["oppo.offload_reference=true"] if name == "offload" else []), *args.override,
    ]
    init_distributed()
    r = build_run(load_config(REPO / "examples" / "configs" / "toy_oppo.yaml", overrides, cls=OmniTrainConfig))
    r.algorithm._evidence = types.MethodType(drawn_evidence(args.evidence_fraction), r.algorithm)
    if name == "full_store":
        r.algorithm.__class__ = full_store_oppo(OPPO)
    elif name == "interleaved":
        r.algorithm.__class__ = interleaved_oppo(OPPO)
    elif name == "kv_kept":
        keep_kv_caches()
    reference = r.algorithm.reference_chunks or []
    memory = PeakMemory()
    peaks, seconds = [], []
    for step in range(args.warmup + args.steps):
        memory.reset()
        microbatches, metrics, elapsed = timed_rl_step(r, step)
        peak = memory.peak_mb()
        if step >= args.warmup:
            peaks.append(peak)
            seconds.append(elapsed)
        del microbatches
        r.algorithm.__dict__.pop("held", None)
        KeptCaches.held.clear()
        print(f"[bench_oppo_memory] {name} step {step}{' (warm-up)' if step < args.warmup else ''}: "
              f"{elapsed:.2f} s, peak {peak:.0f} MB, evidence tokens visual {metrics['evidence_visual_tokens']:.0f} "
              f"audio {metrics['evidence_audio_tokens']:.0f}", flush=True)
    destroy_parallel()
    return {
        "peak_mb": max(peaks),
        "step_s": sum(seconds) / len(seconds),
        "reference_weights_mb": sum(p.numel() * p.element_size() for c in reference for p in c.parameters()) / 2**20,
        "reference_on": str(next(reference[0].parameters()).device) if reference else "-",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="the first one is the baseline of the ratios")
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step (train.global_batch_size)")
    parser.add_argument("--steps", type=int, default=1, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=1, choices=[0, 1],
                        help="unmeasured steps first (0: the measured step also allocates the optimizer states)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="oppo.sampling.max_new_tokens")
    parser.add_argument("--evidence-fraction", type=float, default=0.25,
                        help="share of each completion's tokens taken as visual evidence, and as audio evidence")
    parser.add_argument("--toy-dir", default="data_toy", help="the toy data set (generated if missing)")
    parser.add_argument("--override", nargs="*", default=[], help="section.key=value config overrides")
    parser.add_argument("--json", help="also write each variant's figures to this file")
    args = parser.parse_args(argv)
    follow_live_tensors()

    results = {name: run_variant(name, args) for name in args.variants}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    base_name = args.variants[0]
    base = results[base_name]["peak_mb"]
    device = "CUDA max_memory_allocated" if torch.cuda.is_available() else "CPU peak resident set"
    print(f"\nOPPO step peak memory above the pre-step level ({device}), V={args.vocab}, "
          f"{args.prompts} prompts per step, max of {args.steps} measured step(s) after {args.warmup} warm-up; "
          f"ratio against {base_name}:")
    print(f" {'variant':<12}{'peak MB':>10}{'ratio':>8}{'step s':>9}  reference weights")
    for name, r in results.items():
        print(f" {name:<12}{r['peak_mb']:10.1f}{r['peak_mb'] / base:8.3f}{r['step_s']:9.2f}  "
              f"{r['reference_weights_mb']:.1f} MB on {r['reference_on']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
