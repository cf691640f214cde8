"""Throughput and memory of the data pipeline (decode + process + collate) on the toy set, on CPU.

    python tools/bench_data.py --data data_toy --num 64 --workers 0 1 2

Prints the per-stage cost of one sample in this process, then samples/s and peak resident memory
of the loader for each worker count (each measured in a fresh process, so peaks do not mix),
with the speed-up over the single-process loader as the baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def _config():
    from megatron_omni.data.toy import toy_data_config

    return toy_data_config(packing=True)


def stage_costs(paths) -> dict[str, float]:
    """Mean milliseconds per sample of each stage, single process, one thread."""
    import torch

    from megatron_omni.data.audio import load_audio_file
    from megatron_omni.data.manifest import load_manifest
    from megatron_omni.data.media import SampleMedia
    from megatron_omni.data.mel import log_mel_spectrogram
    from megatron_omni.data.processor import OmniProcessor
    from megatron_omni.data.tokenizer import load_tokenizer
    from megatron_omni.data.video import read_video, video_features

    torch.set_num_threads(1)
    cfg = _config()
    processor = OmniProcessor(load_tokenizer(paths.tokenizer_dir), cfg)
    timings: dict[str, list[float]] = {}

    def timed(name, step, *inputs):
        start = time.perf_counter()
        result = step(*inputs)
        timings.setdefault(name, []).append(time.perf_counter() - start)
        return result

    samples = load_manifest(paths.train_manifest)
    tokens = []
    for sample in samples[:1] + samples:  # the first pass pays imports and set-up: dropped below
        decoded = timed("video decode", read_video, sample.video, cfg.video)
        video = timed("video patches", video_features, decoded, cfg.video)
        waveform = timed("audio load", load_audio_file, sample.audio, cfg.audio)
        features = timed("log-mel", log_mel_spectrogram, waveform, cfg.audio)
        media = SampleMedia(video=video, audio_features=features, audio_in_video=cfg.use_audio_in_video)
        tokens.append(timed("tokens + positions", processor.process, sample, media).length)
    costs = {name: 1000 * float(np.mean(values[1:])) for name, values in timings.items()}
    costs["tokens per sample"] = float(np.mean(tokens[1:]))
    return costs


def measure_loader(paths, workers: int, micro_batch: int, epochs: int) -> dict[str, float]:
    """Run the loader over ``epochs`` epochs; samples/s and peak RSS of this process and its workers."""
    from megatron_omni.data.dataset import Collator, OmniDataset
    from megatron_omni.data.loader import OmniLoader
    from megatron_omni.data.processor import OmniProcessor
    from megatron_omni.data.sampler import ResumableBatchSampler
    from megatron_omni.data.tokenizer import load_tokenizer

    cfg = _config()
    processor = OmniProcessor(load_tokenizer(paths.tokenizer_dir), cfg)
    dataset = OmniDataset.from_manifest(paths.train_manifest, processor)
    sampler = ResumableBatchSampler(len(dataset), global_batch_size=micro_batch, seed=0)
    loader = OmniLoader(dataset, sampler, micro_batch, Collator(processor.token_ids.pad_token_id, packing=True),
                        num_workers=workers)
    steps = epochs * sampler.batches_per_epoch
    loader.next_step()  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(steps):
        loader.next_step()
    elapsed = time.perf_counter() - start
    del loader
    return {
        "workers": workers,
        "samples_per_s": steps * micro_batch / elapsed,
        "peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data_toy", help="toy data folder (made if absent)")
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one worker count
    args = parser.parse_args(argv)

    from megatron_omni.data.toy import make_toy_dataset

    paths = make_toy_dataset(args.data, num=args.num, seed=args.seed)
    if args.one is not None:
        print(json.dumps(measure_loader(paths, args.one, args.micro_batch, args.epochs)))
        return

    print(f"CPU cores: {os.cpu_count()}; toy set: {args.num} clips (seed {args.seed}), "
          f"{args.micro_batch} samples per micro-batch, packed")
    print("\nper-sample stage cost (1 process, 1 thread):")
    for name, value in stage_costs(paths).items():
        unit = "" if name == "tokens per sample" else " ms"
        print(f"  {name:<20} {value:8.2f}{unit}")

    results = []
    for workers in args.workers:
        command = [sys.executable, __file__, "--data", args.data, "--num", str(args.num), "--seed", str(args.seed),
                   "--micro-batch", str(args.micro_batch), "--epochs", str(args.epochs), "--one", str(workers)]
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    baseline = results[0]["samples_per_s"]
    print(f"\n{'workers':>7} {'samples/s':>10} {'vs ' + str(results[0]['workers']) + ' workers':>14} "
          f"{'peak RSS main':>14} {'peak RSS worker':>16}")
    for r in results:
        print(f"{r['workers']:>7} {r['samples_per_s']:>10.1f} {r['samples_per_s'] / baseline:>13.2f}x "
              f"{r['peak_rss_main_mb']:>11.0f} MB {r['peak_rss_worker_mb']:>13.0f} MB")


if __name__ == "__main__":
    main()
