"""Padded vs packed SFT micro-batches: decoder tokens processed and step time, on the toy set and on
a MER2025-like mix of clip lengths; then the training loader's samples/s with 0 and 2 workers.

    OMP_NUM_THREADS=2 python tools/bench_packing.py --steps 3

Layouts, the same samples in the same order in each:
  padded to seq_length   every row train.seq_length long (what PP > 1 needs, and what SFT runs did before);
  padded to the longest  rows as long as their longest sample rounded up to 64 (data.pad_to_multiple_of=64, PP = 1);
  packed                 data.packing: samples first-fit into rows of train.seq_length (cu_seqlens).
"Tokens" are the decoder positions the micro-batches hold (real + padding); the step is prepare
(collation) + forward + backward + optimizer of the toy SFT model (examples/configs/toy_omni_sft.yaml,
fp32, TP = PP = 1, one process): the layouts' runs take their steps in turn (a change in the
machine's load reaches all of them), median step time of ``--steps`` steps after one warm-up.

The MER-like mix: MER2025's clips are not in the repository, so clip lengths are modelled as
log-normal seconds (median ``--median-seconds`` 4, sigma ``--sigma`` 0.6: most clips are 2-8 s, a
long tail to 30 s, the cap), each clip ``--tokens-per-second`` 41 decoder tokens (the toy
resolution: 16 video + 25 audio tokens per second) plus ``--text-tokens`` 200 of prompt and target.
Its samples are text-only token rows of those lengths (the towers' cost does not depend on the
layout, padding only reaches the decoder); samples over train.seq_length are left out, as the run's
length budget would skip them.

The loader rows: the SFT run's sample source (decode + process; what `data.num_workers` moves to
worker processes) over the toy set, the next step's samples read ahead as the training loop does:
samples/s flat out, and each step's wait for its samples when the step itself computes for
``--busy-seconds`` (a sleep, the CPU idle, as while a GPU computes).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "toy_omni_sft.yaml"
LAYOUTS = {  # name -> overrides
    "padded to seq_length": ["data.packing=false", "data.pad_to_multiple_of={seq}"],
    "padded to the longest": ["data.packing=false", "data.pad_to_multiple_of=64"],
    "packed": ["data.packing=true"],
}


class TokenRows:
    """A stand-in sample source of text-only samples (the MER-like lengths) for the SFT algorithm."""

    def __init__(self, samples):
        self.samples = samples

    def load_step(self, indices):
        return indices, [self.samples[i] for i in indices], {}

    def prefetch(self, indices):
        pass

    def close(self):
        pass


def mer_like_samples(count: int, args, tokenizer, pad_token_id: int, seq_length: int):
    """``count`` text-only samples with MER-like lengths (docstring), the last 60 tokens the target."""
    from megatron_omni.data.media import SampleMedia
    from megatron_omni.data.processor import ProcessedSample

    generator = torch.Generator().manual_seed(args.seed)
    seconds = torch.exp(math.log(args.median_seconds) + args.sigma * torch.randn(count * 2, generator=generator))
    lengths = (args.text_tokens + args.tokens_per_second * seconds.clamp(max=30.0)).long().tolist()
    lengths = [n for n in lengths if n <= seq_length][:count]
    text = tokenizer("the speaker frowns and her voice trembles as she answers, calm at first, then angry. ",
                     add_special_tokens=False)["input_ids"]
    samples = []
    for k, n in enumerate(lengths):
        ids = torch.tensor((text * (n // len(text) + 1))[:n])
        labels = torch.cat([ids[1:], torch.tensor([pad_token_id])])
        loss_mask = torch.zeros(n)
        loss_mask[n - 61 : n - 1] = 1.0
        samples.append(ProcessedSample(
            sample_id=f"mer_like_{k}", input_ids=ids, labels=labels, loss_mask=loss_mask,
            position_ids=torch.arange(n).expand(3, n).clone(), prompt_length=n - 60, pad_token_id=pad_token_id,
            media=SampleMedia(video=None, audio_features=None, audio_in_video=False)))
    return samples


def build(toy, out: Path, seq: int, batch: int, layout: list[str], overrides: list[str] = ()):
    from megatron_omni.config import load_config
    from megatron_omni.runs.config import OmniTrainConfig
    from megatron_omni.runs.omni import build_run

    cfg = load_config(CONFIG, [
        f"dataset.train_manifest={toy.train_manifest}", f"dataset.test_manifest={toy.test_manifest}",
        f"dataset.tokenizer_dir={toy.tokenizer_dir}", f"train.seq_length={seq}", f"train.global_batch_size={batch}",
        "train.micro_batch_size=4", "train.save_dir=null", "optimizer.lr_warmup_steps=0", f"output_dir={out}",
        "logging.progress_bar=false", "logging.tensorboard=false", *[o.format(seq=seq) for o in layout], *overrides,
    ], cls=OmniTrainConfig)
    return build_run(cfg)


class LayoutSteps:
    """SFT steps of one built run: ``step()`` -> (tokens, real tokens, seconds, micro-batches)."""

    def __init__(self, r, samples=None):
        from megatron_omni.data.sampler import ResumableBatchSampler

        self.r, self.sampler = r, r.sampler
        if samples is not None:
            r.algorithm.sample_source = TokenRows(samples)
            self.sampler = ResumableBatchSampler(len(samples), r.cfg.train.global_batch_size, seed=r.cfg.train.seed)
        self.count = 0

    def step(self) -> tuple[int, int, float, int]:
        from megatron_omni.training.step import optimizer_step

        r = self.r
        started = time.perf_counter()
        microbatches, _ = r.algorithm.prepare(self.sampler.next_indices(), self.count)
        optimizer_step(r.model_chunks, r.optimizer, r.scheduler, microbatches, r.algorithm.forward_step,
                       r.cfg.train.seq_length, r.algorithm.microbatch_rows)
        self.count += 1
        return (sum(b.tokens.numel() for b in microbatches), sum(int(b.attention_mask.sum()) for b in microbatches),
                time.perf_counter() - started, len(microbatches))


def measure_layouts(runs: dict[str, LayoutSteps], steps: int) -> dict[str, dict]:
    """One warm-up step each (allocations, imports), then ``steps`` rounds taking one step of every
    layout in turn, so a change in the machine's load reaches all of them: mean tokens and the
    median step time per layout."""
    for layout in runs.values():
        layout.step()
    records = {name: [] for name in runs}
    for _ in range(steps):
        for name, layout in runs.items():
            records[name].append(layout.step())
    return {name: {"tokens": statistics.mean(r[0] for r in rows), "real": statistics.mean(r[1] for r in rows),
                   "seconds": statistics.median(r[2] for r in rows), "micro_batches": statistics.mean(r[3] for r in rows)}
            for name, rows in records.items()}


def layout_table(title: str, results: dict[str, dict]) -> None:
    base = results["padded to seq_length"]
    print(f"\n{title}")
    print(f"{'layout':<24} {'tokens/step':>11} {'real':>7} {'fill':>6} {'vs seq_length':>13} "
          f"{'micro-batches':>13} {'s/step':>8} {'vs seq_length':>13}")
    for name, m in results.items():
        print(f"{name:<24} {m['tokens']:>11.0f} {m['real']:>7.0f} {m['real'] / m['tokens']:>6.1%} "
              f"{m['tokens'] / base['tokens']:>12.3f}x {m['micro_batches']:>13} {m['seconds']:>8.3f} "
              f"{m['seconds'] / base['seconds']:>12.3f}x")


def measure_loader(r, workers: int, steps: int, compute_s: float) -> dict[str, float]:
    """The run's sample source with ``workers`` workers: samples/s flat out, then the mean wait for
    a step's samples when each step computes for ``compute_s`` seconds."""
    from megatron_omni.data.skips import SampleSource

    old = r.algorithm.sample_source
    source = SampleSource(old.dataset, old.rules)
    source.num_workers = workers
    sampler = r.sampler
    sampler.consumed_samples = 0
    result = {}
    for phase, pause in (("flat", 0.0), ("busy", compute_s)):
        source.load_step(sampler.next_indices())  # worker start-up and the first read are not throughput
        waits, loaded, started = [], 0, time.perf_counter()
        for _ in range(steps):
            indices = sampler.next_indices()
            source.prefetch(sampler.indices_at(sampler.consumed_samples))
            begun = time.perf_counter()
            loaded += len(source.load_step(indices)[1])
            waits.append(time.perf_counter() - begun)
            time.sleep(pause)
        elapsed = time.perf_counter() - started
        if phase == "flat":
            result["samples_per_s"] = loaded / elapsed
        else:
            result["wait_s"] = sum(waits) / steps
    source.close()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data_toy", help="toy data folder (made if absent)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per layout (after one warm-up)")
    parser.add_argument("--batch", type=int, default=16, help="samples per step (train.global_batch_size)")
    parser.add_argument("--toy-seq-length", type=int, default=640)
    parser.add_argument("--mer-seq-length", type=int, default=768)
    parser.add_argument("--median-seconds", type=float, default=4.0)
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--tokens-per-second", type=float, default=41.0)
    parser.add_argument("--text-tokens", type=int, default=200)
    parser.add_argument("--loader-steps", type=int, default=6)
    parser.add_argument("--busy-seconds", type=float, default=0.5, help="a step's compute in the loader's busy rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_packing")
    parser.add_argument("--cases", nargs="+", choices=["toy", "mer", "loader"], default=["toy", "mer", "loader"])
    parser.add_argument("--override", nargs="*", default=[], help="config overrides of the SFT runs (e.g. a wider model)")
    args = parser.parse_args(argv)

    from megatron_omni.convert.world import single_process_world
    from megatron_omni.data.toy import make_toy_dataset

    toy = make_toy_dataset(args.data, num=64, seed=0)
    out = Path(args.out)
    print(f"threads {torch.get_num_threads()}; {args.batch} samples per step, 4 per padded micro-batch; "
          f"{args.steps} measured steps per layout")
    with single_process_world():
        if "toy" in args.cases:
            runs = {name: LayoutSteps(build(toy, out / "toy", args.toy_seq_length, args.batch, layout, args.override))
                    for name, layout in LAYOUTS.items()}
            layout_table(f"toy set (51 training clips of 1-2 s, about 264 tokens each), train.seq_length "
                         f"{args.toy_seq_length}", measure_layouts(runs, args.steps))
        if "mer" in args.cases:
            runs = {}
            for name, layout in LAYOUTS.items():
                r = build(toy, out / "mer", args.mer_seq_length, args.batch, layout, args.override)
                samples = mer_like_samples(args.batch * (args.steps + 1), args, r.tokenizer,
                                           r.processor.token_ids.pad_token_id, args.mer_seq_length)
                runs[name] = LayoutSteps(r, samples)
            lengths = sorted(s.length for s in samples)
            print(f"\nMER-like lengths: median {lengths[len(lengths) // 2]}, p90 {lengths[int(0.9 * len(lengths))]}, "
                  f"max {lengths[-1]} tokens")
            layout_table(f"MER-like mix, train.seq_length {args.mer_seq_length}", measure_layouts(runs, args.steps))
        if "loader" in args.cases:
            r = build(toy, out / "loader", args.toy_seq_length, 8, LAYOUTS["packed"], args.override)
            # One thread here as in each worker: intra-op threads of an in-process load would compete
            # with the other processes for the cores instead of decoding.
            torch.set_num_threads(1)
            print(f"\ntraining loader on the toy set, 8 samples per step, read-ahead of the next step, 1 thread per "
                  f"process; busy: a step computing for {args.busy_seconds:.2f} s")
            print(f"{'workers':>7} {'samples/s':>10} {'vs 0':>6} {'wait per busy step (s)':>23}")
            base = None
            for workers in (0, 2):
                m = measure_loader(r, workers, args.loader_steps, args.busy_seconds)
                base = base or m["samples_per_s"]
                print(f"{workers:>7} {m['samples_per_s']:>10.1f} {m['samples_per_s'] / base:>5.2f}x {m['wait_s']:>23.3f}")


if __name__ == "__main__":
    main()
