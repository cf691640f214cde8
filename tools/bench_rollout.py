"""Rollout throughput: this project's engine against transformers' `generate` on the same weights.

    python tools/bench_rollout.py [--config examples/configs/toy_oppo.yaml] [--prompts 8] [--group 8]
                                  [--new-tokens 128] [--repeats 2] [override ...]

One process, TP = PP = 1. The config's model (the toy omni model unless overridden) is built with
its seeded initial weights, saved, and converted to a Hugging Face thinker folder with the
project's converter; transformers loads that folder. The workload: the first ``--prompts``
prompts of the toy training split (video + audio + text) with ``--group`` sampled completions
each, ``--new-tokens`` new tokens per completion (no stop token, so both sides generate exactly
as many), the config's temperature and top-k. Printed per engine: generated tokens per second
(the best of ``--repeats`` timed runs after one warm-up, the two sides taking turns), and the
ratio. Both run without the CPU compatibility layer's TorchFunctionMode
(``cuda_redirect_suspended``): the engine leaves it for its forwards, and a transformers user does
not have it.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from megatron_omni.config import load_config
from megatron_omni.convert import OmniModelConfig, convert_megatron_to_hf, save_model_checkpoint
from megatron_omni.convert.world import single_process_world
from megatron_omni.data.batch import pad
from megatron_omni.data.dataset import OmniDataset
from megatron_omni.generation.generator import SamplingConfig
from megatron_omni.generation.omni import sample_prompts
from megatron_omni.parallel.cpu_compat import cuda_redirect_suspended
from megatron_omni.parallel.device import step_device
from megatron_omni.runs.config import OmniTrainConfig
from megatron_omni.runs.omni import prepare_model, resolve_dataset
from megatron_omni.training.model_setup import unwrap

REPO = Path(__file__).resolve().parents[1]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "examples/configs/toy_oppo.yaml"))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="dotted config overrides (key=value)")
    return p.parse_args()


def best_rates(runs, tokens: int, repeats: int) -> list[float]:
    """Tokens per second of the fastest of ``repeats`` runs of each of ``runs``, after one warm-up
    run each; the runs take turns, so a change in the machine's load reaches every side alike."""
    for run in runs:
        run()
    times = [[] for _ in runs]
    for _ in range(repeats):
        for run, taken in zip(runs, times):
            started = time.perf_counter()
            run()
            taken.append(time.perf_counter() - started)
    return [tokens / min(taken) for taken in times]


def hf_inputs(prompts, pad_token_id: int, device) -> dict:
    """Left-padded token ids and mask (what batched `generate` needs) and the prompts' media."""
    longest = max(p.length for p in prompts)
    ids = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), longest, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, longest - p.length:], mask[row, longest - p.length:] = p.input_ids, 1
    batch = pad(prompts)
    # The media tensors only: the attention mask above stands for the padding, and nothing is packed.
    media = {k: v for k, v in batch.model_kwargs().items()
             if k not in ("packed_seq_params", "padding_mask") and v is not None}
    if batch.video_second_per_grid is not None:  # transformers' TMRoPE reads the seconds of each video grid
        media["video_second_per_grid"] = batch.video_second_per_grid
    return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": mask, **media}.items()}


def main():
    args = parse_args()
    layout = ["parallel.tensor_model_parallel_size=1", "parallel.pipeline_model_parallel_size=1", "init_from=null",
              f"dataset.toy_dir={REPO / 'data_toy'}"]
    with single_process_world(), tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [*layout, *args.overrides], cls=OmniTrainConfig)
        resolve_dataset(cfg)
        tokenizer, processor, chunks = prepare_model(cfg, wrap_ddp=False)
        model = unwrap(chunks[0])
        description = OmniModelConfig(model=cfg.model, omni=cfg.omni, params_dtype=cfg.precision.params_dtype)
        save_model_checkpoint(Path(tmp) / "megatron", chunks, description, assets_from=cfg.dataset.tokenizer_dir)
        hf_dir = convert_megatron_to_hf(Path(tmp) / "megatron", Path(tmp) / "hf", log=lambda _: None)

        from transformers import Qwen2_5OmniThinkerForConditionalGeneration

        device = step_device()
        hf_model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(hf_dir).to(device).eval()
        dataset = OmniDataset.from_manifest(cfg.dataset.train_manifest, processor, with_target=False)
        prompts = [dataset.load(i) for i in range(args.prompts)]
        sampling = cfg.oppo.sampling if cfg.algorithm == "oppo" else cfg.opsd.sampling
        sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=sampling.temperature,
                                  top_k=sampling.top_k, top_p=sampling.top_p)  # no stop token
        pad_id = processor.token_ids.pad_token_id
        generated = args.prompts * args.group * args.new_tokens

        def engine():
            out = sample_prompts(model, prompts, sampling, args.group, list(range(args.prompts)),
                                 cfg.model.vocab_size, pad_id)
            assert sum(len(c) for rows in out.completions for c in rows) == generated

        inputs = hf_inputs(prompts, pad_id, device)

        @torch.no_grad()
        def transformers_generate():
            # Without the CPU compatibility layer's TorchFunctionMode, which a transformers user
            # does not have (the engine leaves it for its own forwards too).
            with cuda_redirect_suspended():
                out = hf_model.generate(
                    **inputs, use_audio_in_video=cfg.data.use_audio_in_video, do_sample=True,
                    temperature=sampling.temperature, top_k=sampling.top_k or None, top_p=sampling.top_p,
                    max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, num_return_sequences=args.group,
                    pad_token_id=pad_id, eos_token_id=None,
                )
            assert out.shape == (args.prompts * args.group, inputs["input_ids"].shape[1] + args.new_tokens)

        ours, theirs = best_rates([engine, transformers_generate], generated, args.repeats)
        lengths = [p.length for p in prompts]
        print(f"workload: {args.prompts} prompts ({min(lengths)}-{max(lengths)} tokens, video + audio + text) x "
              f"{args.group} completions x {args.new_tokens} new tokens, sampling (T={sampling.temperature}, "
              f"top_k={sampling.top_k}, top_p={sampling.top_p}); {device}, torch threads {torch.get_num_threads()}")
        print(f"{'engine':<28}{'tokens/s':>12}")
        print(f"{'megatron_omni':<28}{ours:>12.1f}")
        print(f"{'transformers generate':<28}{theirs:>12.1f}")
        print(f"ratio: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
