"""Benchmark of the fused full-vocabulary KL against eager torch, torch.compile and (when it is
installed) Liger-Kernel, all in one run.

For each tokens x vocab size it reports forward and forward+backward time (best of N), achieved bandwidth
against the memory-traffic floor (bf16: 4 bytes per element forward, 10 bytes per element forward
+ backward: read student and teacher, then read both again and write the student gradient), and
the peak extra memory of forward + backward (gradient buffer included).

Peak memory: on CUDA, torch.cuda.max_memory_allocated() above what was allocated before the
step. On CPU, each variant runs in a fresh subprocess that resets the kernel's resident-set
high-water mark (/proc/self/clear_refs) once its inputs exist, then reads VmHWM - VmRSS.

    python tools/bench_kernels.py                       # CUDA: T in {2048, 8192} x V in {32000, 152064}
    python tools/bench_kernels.py --device cpu --tokens 2048 --vocab 32000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from bench_common import status_kb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_omni.kernels import kl_reference, vocab_parallel_kl  # noqa: E402

BYTES_PER_ELEMENT = {"forward": 4, "forward+backward": 10}  # bf16 inputs


@dataclass(frozen=True)
class Case:
    tokens: int
    vocab: int
    mode: str
    temperature: float
    device: str
    dtype: torch.dtype


def make_inputs(case: Case, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=case.device).manual_seed(seed)
    shape = (case.tokens, case.vocab)
    # Made in the target dtype directly so no fp32 [tokens x vocab] temporary inflates the peak.
    student = torch.randn(shape, generator=gen, device=case.device, dtype=case.dtype).mul_(2.0)
    teacher = torch.randn(shape, generator=gen, device=case.device, dtype=case.dtype).mul_(2.0)
    return student.requires_grad_(), teacher


def _liger_loss(case: Case) -> Callable | None:
    try:
        from liger_kernel.transformers import LigerJSD
    except ImportError:
        return None
    # Liger's JSD takes log-probabilities; its beta = 1 is the reverse KL, beta = 0 the forward.
    beta = {"reverse": 1.0, "forward": 0.0, "jsd": 0.5}[case.mode]
    jsd = LigerJSD(jsd_beta=beta)

    def loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_q = torch.log_softmax(s.float() / case.temperature, dim=-1)
        log_p = torch.log_softmax(t.float() / case.temperature, dim=-1)
        return jsd(log_q, log_p) * s.shape[0]  # its mean over tokens, back to a sum

    return loss


def variants(case: Case, with_compile: bool) -> dict[str, Callable]:
    def fused(s, t):
        return vocab_parallel_kl(s, t, mode=case.mode, temperature=case.temperature).sum()

    def fused_inplace(s, t):
        return vocab_parallel_kl(s, t, mode=case.mode, temperature=case.temperature, inplace_backward=True).sum()

    def eager(s, t):
        return kl_reference(s, t, case.mode, 0.5, case.temperature).sum()

    out = {"fused": fused, "fused_inplace": fused_inplace, "eager": eager}
    if with_compile:
        out["compiled"] = torch.compile(eager, dynamic=False)
    liger = _liger_loss(case)
    if liger is not None:
        out["liger"] = liger
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _step(fn: Callable, s: torch.Tensor, t: torch.Tensor, backward: bool) -> None:
    loss = fn(s, t)
    if backward:
        loss.backward()
        s.grad = None


def time_ms(fn: Callable, s, t, backward: bool, repeats: int, device: str) -> float:
    _step(fn, s, t, backward)  # warm-up: compilation and launch caches
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        _step(fn, s, t, backward)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)  # best of N: least disturbed by other work on a shared machine


def copy_bandwidth_gbs(device: str, n_bytes: int = 1 << 30) -> float:
    """Achievable memory bandwidth here: a device-to-device copy, bytes read + written / time."""
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best / 1e9


def gpu_peak_extra_mb(fn: Callable, s, t) -> float:
    _step(fn, s, t, True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _step(fn, s, t, True)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def cpu_peak_child(case: Case, name: str, with_compile: bool) -> None:
    """Runs in a fresh process: one forward + backward of one variant, prints the peak JSON."""
    fn = variants(case, with_compile)[name]
    s, t = make_inputs(case)
    _step(fn, s, t, True)  # warm-up: lazy imports and compilation are not the op's memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = status_kb("VmRSS")
    _step(fn, s, t, True)
    print(json.dumps({"peak_extra_mb": (status_kb("VmHWM") - base) / 1024}))


def cpu_peak_extra_mb(case: Case, name: str, with_compile: bool) -> float:
    cmd = [sys.executable, os.path.abspath(__file__), "--child-peak", name, "--device", "cpu",
           "--tokens", str(case.tokens), "--vocab", str(case.vocab), "--mode", case.mode,
           "--temperature", str(case.temperature), "--dtype", str(case.dtype).split(".")[-1]]
    if not with_compile:
        cmd.append("--no-compile")
    # A fixed mmap threshold makes glibc map every buffer over 64 KiB afresh and unmap it on free,
    # so the resident set follows live tensors instead of keeping freed heap memory around.
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_mb"]


def bench_case(case: Case, repeats: int, with_compile: bool, bandwidth_gbs: float, only: list[str] | None) -> list[dict]:
    s, t = make_inputs(case)
    elements = case.tokens * case.vocab
    rows = []
    for name, fn in variants(case, with_compile).items():
        if only and name not in only:
            continue
        row = {"tokens": case.tokens, "vocab": case.vocab, "variant": name}
        # The in-place variant turns its logits into their gradient: it gets its own copy.
        student = s.detach().clone().requires_grad_() if name == "fused_inplace" else s
        try:
            for phase, backward in (("forward", False), ("forward+backward", True)):
                ms = time_ms(fn, student, t, backward, repeats, case.device)
                gbs = BYTES_PER_ELEMENT[phase] * elements / (ms * 1e-3) / 1e9
                row[f"{phase} ms"] = ms
                row[f"{phase} GB/s"] = gbs
                row[f"{phase} % floor"] = 100.0 * gbs / bandwidth_gbs
            row["peak extra MB"] = (gpu_peak_extra_mb(fn, student, t) if case.device == "cuda"
                                    else cpu_peak_extra_mb(case, name, with_compile))
        except Exception as err:  # a baseline that cannot run here (out of memory, no compiler) is reported
            row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:160]
            if case.device == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    eager = next((r for r in rows if r["variant"] == "eager" and "error" not in r), None)
    for row in rows:
        if eager and "error" not in row and row is not eager:
            row["speed-up vs eager"] = eager["forward+backward ms"] / row["forward+backward ms"]
            row["memory vs eager %"] = 100.0 * row["peak extra MB"] / eager["peak extra MB"]
    return rows


def print_table(rows: list[dict]) -> None:
    cols = ["tokens", "vocab", "variant", "forward ms", "forward+backward ms", "forward+backward GB/s",
            "forward+backward % floor", "peak extra MB", "speed-up vs eager", "memory vs eager %"]
    print(" | ".join(cols))
    for row in rows:
        if "error" in row:
            print(f"{row['tokens']} | {row['vocab']} | {row['variant']} | failed: {row['error']}")
            continue
        print(" | ".join(f"{row[c]:.2f}" if isinstance(row.get(c), float) else str(row.get(c, "-")) for c in cols))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--tokens", type=int, nargs="+", default=None)
    parser.add_argument("--vocab", type=int, nargs="+", default=None)
    parser.add_argument("--mode", default="reverse", choices=["forward", "reverse", "jsd"])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (the best is kept)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--variants", nargs="+", help="run only these (fused, fused_inplace, eager, compiled, liger)")
    parser.add_argument("--tile", type=int, nargs=3, metavar=("ROWS", "COLS", "WARPS"),
                        help="override the Triton launch tile (for tuning)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--child-peak", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    on_gpu = args.device == "cuda"
    tokens = args.tokens or ([2048, 8192] if on_gpu else [2048])
    vocab = args.vocab or ([32000, 152064] if on_gpu else [32000])
    dtype = getattr(torch, args.dtype)
    if args.child_peak:
        cpu_peak_child(Case(tokens[0], vocab[0], args.mode, args.temperature, "cpu", dtype),
                       args.child_peak, not args.no_compile)
        return
    if args.tile:
        from megatron_omni.kernels import backend, kl_triton

        kl_triton.launch_tiles = lambda n_cols: backend.TileShape(*args.tile)
    repeats = args.repeats or (20 if on_gpu else 3)
    bandwidth = copy_bandwidth_gbs(args.device)
    fused_path = "Triton" if on_gpu or os.environ.get("TRITON_INTERPRET") == "1" else "chunked torch"
    print(f"device={args.device} ({torch.cuda.get_device_name() if on_gpu else 'CPU'}), fused path: {fused_path}, "
          f"mode={args.mode}, dtype={args.dtype}, T={args.temperature}, best of {repeats} timed runs"
          + (f", tile={args.tile}" if args.tile else ""))
    print(f"bandwidth floor reference: device copy {bandwidth:.0f} GB/s (read + write); floor bytes per "
          f"element: {BYTES_PER_ELEMENT}")
    print("peak memory: " + ("torch.cuda.max_memory_allocated above the pre-step allocation" if on_gpu else
                             "VmHWM - VmRSS in a fresh subprocess per variant (high-water reset via /proc/self/clear_refs)"))
    rows = []
    for t_ in tokens:
        for v_ in vocab:
            rows += bench_case(Case(t_, v_, args.mode, args.temperature, args.device, dtype),
                               repeats, not args.no_compile, bandwidth, args.variants)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
