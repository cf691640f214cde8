"""Compile every Triton kernel variant for an NVIDIA GPU ahead of time, without a GPU, and report
what the machine code does: registers, local-memory spills and the width of global loads and
stores. Triton ships ptxas and cuobjdump, so this runs on any machine with Triton installed.

    TRITON_INTERPRET=0 python -m megatron_omni.kernels.common.compile_check          # sm_90 (Hopper), a table
    TRITON_INTERPRET=0 python -m megatron_omni.kernels.common.compile_check --json   # one JSON object per variant

Arguments are specialised as Triton's JIT specialises them at a Qwen-sized launch (V = 152064
columns per row): pointers 16-byte aligned, row strides and `n_load` / `n_cols` divisible by 16,
while the real-vocabulary bound `n_valid` is not (151646 is no multiple of 16).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass

LOGITS_DTYPE = "*bf16"
POINTER_TYPES = {
    "s_ptr": LOGITS_DTYPE, "t_ptr": LOGITS_DTYPE, "x_ptr": LOGITS_DTYPE,
    "gs_ptr": LOGITS_DTYPE, "gt_ptr": LOGITS_DTYPE, "gx_ptr": LOGITS_DTYPE,
    "index_ptr": "*i64", "target_ptr": "*i64", "slot_ptr": "*i32",
    "out_ptr": "*fp32", "stats_ptr": "*fp32", "gout_ptr": "*fp32", "g_lp_ptr": "*fp32", "g_ent_ptr": "*fp32",
}
FLOAT_ARGS = ("inv_temp", "beta")
DIVISIBLE_BY_16 = ("n_load", "n_cols", "stride_s", "stride_t", "stride_gs", "stride_gt", "stride_x", "stride_gx")

# (module under megatron_omni.kernels, kernel, constexpr values besides the tile); the ones a training
# step launches.
VARIANTS = [
    ("kl.triton_impl", "_kl_stats_kernel", {"HAS_INDEX": False, "MODE": 0}),
    ("kl.triton_impl", "_kl_stats_kernel", {"HAS_INDEX": True, "MODE": 1}),
    ("kl.triton_impl", "_kl_stats_kernel", {"HAS_INDEX": False, "MODE": 2}),
    ("kl.triton_impl", "_jsd_sums_kernel", {"HAS_INDEX": False}),
    ("kl.triton_impl", "_kl_backward_kernel", {"HAS_SLOTS": False, "MODE": 0, "WRITE_S": True, "WRITE_T": True}),
    ("kl.triton_impl", "_kl_backward_kernel", {"HAS_SLOTS": True, "MODE": 1, "WRITE_S": True, "WRITE_T": False}),
    ("kl.triton_impl", "_kl_backward_kernel", {"HAS_SLOTS": False, "MODE": 2, "WRITE_S": True, "WRITE_T": False}),
    ("logprob_entropy.triton_impl", "_lp_stats_kernel", {"HAS_INDEX": False}),
    ("logprob_entropy.triton_impl", "_lp_backward_kernel", {"HAS_SLOTS": False}),
]


@dataclass
class CompiledVariant:
    kernel: str
    constexprs: dict
    registers: int
    local_bytes: int  # spills
    global_loads: list[str]  # SASS load opcodes, e.g. LDG.E.128 = 128-bit vector loads
    global_stores: list[str]
    seconds: float


def _nvidia_tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def tools_available() -> bool:
    return all(os.access(_nvidia_tool(n), os.X_OK) for n in ("ptxas", "cuobjdump"))


def compile_variant(module: str, kernel: str, constexprs: dict, arch: int) -> CompiledVariant:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from megatron_omni.kernels.common.backend import tile_shape
    from megatron_omni.kernels.common.online_softmax import NEG_START

    fn = getattr(importlib.import_module(f"megatron_omni.kernels.{module}"), kernel)
    tile = tile_shape(152064, interpreted=False)
    values = {"BLOCK_R": tile.rows, "BLOCK_V": tile.cols, **constexprs}
    if "NEG" in fn.arg_names:
        values["NEG"] = NEG_START
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in values:
            signature[name] = "constexpr"
        elif name in POINTER_TYPES:
            signature[name] = POINTER_TYPES[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32" if name in FLOAT_ARGS else "i32"
            if name in DIVISIBLE_BY_16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn, signature, values, attrs), target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": tile.num_warps})
    seconds = time.perf_counter() - start
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([_nvidia_tool("cuobjdump"), "--dump-resource-usage", cubin.name],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([_nvidia_tool("cuobjdump"), "--dump-sass", cubin.name],
                              capture_output=True, text=True, check=True).stdout
    return CompiledVariant(
        kernel=kernel,
        constexprs=constexprs,
        registers=int(re.search(r"REG:(\d+)", usage).group(1)),
        local_bytes=int(re.search(r"LOCAL:(\d+)", usage).group(1)),
        global_loads=sorted(set(re.findall(r"\bLDG\.E[.\w]*", sass))),
        global_stores=sorted(set(re.findall(r"\bSTG\.E[.\w]*", sass))),
        seconds=seconds,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x 10 (90 = Hopper)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = parser.parse_args(argv)
    from megatron_omni.kernels.common.backend import interpreter_requested

    if interpreter_requested():
        raise SystemExit("TRITON_INTERPRET is set: the kernels would be built for the interpreter; unset it")
    if not tools_available():
        raise SystemExit(f"Triton's ptxas / cuobjdump not found beside {_nvidia_tool('')}")
    for module, kernel, constexprs in VARIANTS:
        result = compile_variant(module, kernel, constexprs, args.arch)
        if args.json:
            print(json.dumps(asdict(result)), flush=True)
        else:
            print(f"{kernel:22s} {json.dumps(constexprs):62s} regs={result.registers:3d} spill={result.local_bytes}B "
                  f"loads={','.join(result.global_loads)} stores={','.join(result.global_stores)} "
                  f"({result.seconds:.1f}s)", flush=True)


if __name__ == "__main__":
    main()
