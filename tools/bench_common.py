"""Shared by the benchmarks: peak memory above a reset point, and the overrides of a
Qwen2.5-7B-shaped decoder (few layers) for the toy configs (training steps); timing, bandwidth,
peak memory and the table of the kernel benchmarks against their eager baseline
(`run_kernel_bench`)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

QWEN7B = ["model.vocab_size=152064", "model.hidden_size=3584", "model.ffn_hidden_size=18944",
          "model.num_attention_heads=28", "model.num_query_groups=4", "model.mrope_section=[16, 24, 24]",
          "model.tie_word_embeddings=false", "omni.vision.out_hidden_size=3584", "omni.audio.output_dim=3584",
          "precision.params_dtype=bf16"]


def qwen7b_overrides(layers: int | None) -> list[str]:
    return [*QWEN7B, f"model.num_layers={layers}"] if layers else []


def timed_rl_step(r, step: int):
    """One training step of a built OPPO / OmniOPSD run (rollouts, rewards, scoring forwards, loss,
    optimizer): (micro-batches, metrics, seconds)."""
    from megatron_omni.training.step import optimizer_step

    started = time.perf_counter()
    microbatches, metrics = r.algorithm.prepare(r.sampler.next_indices(), step)
    optimizer_step(r.model_chunks, r.optimizer, r.scheduler, microbatches, r.algorithm.forward_step,
                   r.cfg.train.seq_length, r.cfg.train.micro_batch_size)
    return microbatches, metrics, time.perf_counter() - started


def follow_live_tensors() -> None:
    """Re-execute once with every buffer over 64 KiB mapped afresh and unmapped on free, so the
    resident set follows live tensors instead of keeping freed heap memory (glibc reads the
    setting at start)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])


def status_kb(field: str) -> int:
    """A kB field of /proc/self/status (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
    """Peak bytes above the level at ``reset()``: CUDA max_memory_allocated, else the process's
    peak resident set (restarted through /proc/self/clear_refs)."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.base = 0

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = status_kb("VmRSS") * 1024

    def peak_mb(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (status_kb("VmHWM") * 1024 - self.base) / 2**20


# Kernel benchmarks (tools/bench_kernel_<op>.py): one op against its eager torch reference, in
# one process. Each script supplies its inputs and variants; this runs and reports them.

KERNEL_BENCH_PEAK = """\
peak memory: CUDA: max_memory_allocated above the pre-step allocation; CPU: a fresh subprocess
per variant resets the resident-set high-water mark (/proc/self/clear_refs) after a warm-up step
and reads VmHWM - VmRSS, with MALLOC_MMAP_THRESHOLD_=65536 so that freed buffers leave the
resident set at once."""


@dataclass(frozen=True)
class Variant:
    """A way to compute the op: `fn(*inputs)` returns a scalar loss, differentiable w.r.t. the
    first input. `writes_input`: its backward overwrites the first input (in-place gradient), so
    it gets its own copy."""

    fn: Callable
    writes_input: bool = False


def random_logits(args, tokens: int, vocab: int, gen):
    """[tokens, vocab] logits of standard deviation 2, made in the benchmark's dtype directly so no
    fp32 [tokens x vocab] temporary inflates the peak."""
    import torch

    return torch.randn((tokens, vocab), generator=gen, device=args.device, dtype=getattr(torch, args.dtype)).mul_(2.0)


def kernel_bench_parser(description: str, default_tokens: dict, default_vocab: dict) -> argparse.ArgumentParser:
    """The options every kernel benchmark takes; `default_*` map "cuda" / "cpu" to lists."""
    import torch

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--tokens", type=int, nargs="+", help=f"token rows (default {default_tokens})")
    parser.add_argument("--vocab", type=int, nargs="+", help=f"vocabulary sizes (default {default_vocab})")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement, the best is kept "
                                                                  "(default 20 on CUDA, 3 on CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--variants", nargs="+", help="run only these variants")
    parser.add_argument("--json", help="also write the result rows to this file")
    parser.add_argument("--child-peak", help=argparse.SUPPRESS)
    parser.set_defaults(default_tokens=default_tokens, default_vocab=default_vocab)
    return parser


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _step(variant: Variant, inputs: tuple, backward: bool) -> None:
    loss = variant.fn(*inputs)
    if backward:
        loss.backward()
        inputs[0].grad = None


def time_ms(variant: Variant, inputs: tuple, backward: bool, repeats: int, device: str) -> float:
    """Best of `repeats` timed steps after one warm-up (compilation, launch caches): the best is
    the least disturbed by other work on a shared machine."""
    _step(variant, inputs, backward)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        _step(variant, inputs, backward)
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def copy_bandwidth_gbs(device: str, n_bytes: int = 1 << 30) -> float:
    """Achievable memory bandwidth here: a device-to-device copy, bytes read + written / time."""
    import torch

    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best / 1e9


def gpu_peak_extra_mb(variant: Variant, inputs: tuple) -> float:
    import torch

    _step(variant, inputs, True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _step(variant, inputs, True)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _cpu_peak_child(variant: Variant, inputs: tuple) -> None:
    """In a fresh process: one forward + backward of one variant; prints the peak as JSON."""
    _step(variant, inputs, True)  # warm-up: lazy imports and compilation are not the op's memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = status_kb("VmRSS")
    _step(variant, inputs, True)
    print(json.dumps({"peak_extra_mb": (status_kb("VmHWM") - base) / 1024}))


def _cpu_peak_extra_mb(argv: list[str], name: str, tokens: int, vocab: int) -> float:
    """Re-runs the calling script in a fresh process for one variant and shape."""
    cmd = [sys.executable, os.path.abspath(sys.argv[0]), *argv, "--device", "cpu", "--tokens", str(tokens),
           "--vocab", str(vocab), "--child-peak", name]
    # A fixed mmap threshold makes glibc map every buffer over 64 KiB afresh and unmap it on free,
    # so the resident set follows live tensors instead of keeping freed heap memory around.
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_mb"]


def _bench_shape(args, argv, tokens: int, vocab: int, make_inputs: Callable, variants: dict,
                 bytes_per_element: dict, bandwidth_gbs: float) -> list[dict]:
    import torch

    inputs = make_inputs(args, tokens, vocab)
    elements = tokens * vocab
    rows = []
    for name, variant in variants.items():
        if args.variants and name not in args.variants:
            continue
        row = {"tokens": tokens, "vocab": vocab, "variant": name}
        own = (inputs[0].detach().clone().requires_grad_(), *inputs[1:]) if variant.writes_input else inputs
        try:
            for phase, backward in (("forward", False), ("forward+backward", True)):
                ms = time_ms(variant, own, backward, args.repeats, args.device)
                gbs = bytes_per_element[phase] * elements / (ms * 1e-3) / 1e9
                row[f"{phase} ms"] = ms
                row[f"{phase} GB/s"] = gbs
                row[f"{phase} % floor"] = 100.0 * gbs / bandwidth_gbs
            row["peak extra MB"] = (gpu_peak_extra_mb(variant, own) if args.device == "cuda"
                                    else _cpu_peak_extra_mb(argv, name, tokens, vocab))
        except Exception as err:  # a baseline that cannot run here (out of memory, no compiler) is reported
            row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:160]
            if args.device == "cuda":
                torch.cuda.empty_cache()
        del own
        rows.append(row)
    eager = next((r for r in rows if r["variant"] == "eager" and "error" not in r), None)
    for row in rows:
        if eager and "error" not in row and row is not eager:
            row["speed-up vs eager"] = eager["forward+backward ms"] / row["forward+backward ms"]
            row["memory vs eager %"] = 100.0 * row["peak extra MB"] / max(eager["peak extra MB"], 1e-9)
    return rows


KERNEL_BENCH_COLUMNS = ["tokens", "vocab", "variant", "forward ms", "forward+backward ms", "forward+backward GB/s",
                        "forward+backward % floor", "peak extra MB", "speed-up vs eager", "memory vs eager %"]


def print_kernel_table(rows: list[dict]) -> None:
    print(" | ".join(KERNEL_BENCH_COLUMNS))
    for row in rows:
        if "error" in row:
            print(f"{row['tokens']} | {row['vocab']} | {row['variant']} | failed: {row['error']}")
            continue
        print(" | ".join(f"{row[c]:.2f}" if isinstance(row.get(c), float) else str(row.get(c, "-"))
                         for c in KERNEL_BENCH_COLUMNS))


def run_kernel_bench(args, argv: list[str] | None, label: str, make_inputs: Callable, make_variants: Callable,
                     bytes_per_element: dict) -> list[dict]:
    """Benchmark `make_variants(args)` (name -> Variant; "eager" is the baseline the ratios are
    taken against) on `make_inputs(args, tokens, vocab)` for every tokens x vocab size, print the
    table and return its rows. Prints figures only: nothing is asserted."""
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    on_gpu = args.device == "cuda"
    tokens = args.tokens or args.default_tokens[args.device]
    vocab = args.vocab or args.default_vocab[args.device]
    if args.child_peak:
        _cpu_peak_child(make_variants(args)[args.child_peak], make_inputs(args, tokens[0], vocab[0]))
        return []
    args.repeats = args.repeats or (20 if on_gpu else 3)
    bandwidth = copy_bandwidth_gbs(args.device)
    fused_path = "Triton" if on_gpu or os.environ.get("TRITON_INTERPRET") == "1" else "chunked torch"
    print(f"{label}; device={args.device} ({torch.cuda.get_device_name() if on_gpu else 'CPU'}), fused path: "
          f"{fused_path}, dtype={args.dtype}, T={args.temperature}, best of {args.repeats} timed runs")
    print(f"bandwidth floor reference: device copy {bandwidth:.0f} GB/s (read + write); floor bytes per element "
          f"({args.dtype}): {bytes_per_element}")
    print(KERNEL_BENCH_PEAK)
    variants = make_variants(args)
    rows = [row for t in tokens for v in vocab
            for row in _bench_shape(args, argv, t, v, make_inputs, variants, bytes_per_element, bandwidth)]
    print_kernel_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows
