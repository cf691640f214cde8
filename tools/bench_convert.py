"""Peak memory and time of both checkpoint conversions on a synthetic multi-GB thinker.

    python tools/bench_convert.py [--hidden-size 1536 --ffn-hidden-size 6144 --layers 28 --vocab 32000]
                                  [--dtype bf16] [--shard-size 500MB] [--keep DIR]

A widened tiny Qwen2.5-Omni thinker (the towers stay tiny) is written to a temporary folder as HF
safetensors shards, tensor by tensor, with random weights; then HF -> Megatron and Megatron -> HF
(output shards of the same size) each run in a fresh child process. Printed per direction: peak
resident memory above the child's level at the start of the conversion (its imports done;
/proc/self/clear_refs and VmHWM, with MALLOC_MMAP_THRESHOLD_=65536 so freed buffers leave the
resident set), the child's whole peak, the wall time, and the bound

    1.5 x (largest shard + largest layer)

where the shard is the largest source safetensors file for HF -> Megatron and the largest output
shard (--shard-size) for Megatron -> HF, and a layer is a decoder / tower layer or a top-level
tensor (the embedding). The temporary folder is removed unless --keep names one.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A CPU job by design: accelerators are hidden before torch is imported.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import torch  # noqa: E402

from megatron_omni.convert.dist_streaming import layer_groups  # noqa: E402
from megatron_omni.convert.hf_checkpoint import ShardWriter, parse_size  # noqa: E402
from megatron_omni.convert.hf_config import TORCH_DTYPES, to_hf_thinker_config  # noqa: E402
from megatron_omni.convert.mapping import OmniParamMap  # noqa: E402
from megatron_omni.convert.model_config_file import OmniModelConfig  # noqa: E402
from megatron_omni.models.config import ModelConfig  # noqa: E402
from megatron_omni.models.decoder import padded_vocab_size  # noqa: E402
from megatron_omni.models.omni_config import AudioEncoderConfig, OmniConfig, OmniTokenIds, VisionEncoderConfig  # noqa: E402

BOUND_FACTOR = 1.5


def widened_config(hidden: int, ffn: int, layers: int, vocab: int, dtype: str) -> OmniModelConfig:
    """The decoder at the given size; tiny towers (2 layers) projecting into it."""
    heads = hidden // 128 if hidden >= 512 else 4
    model = ModelConfig(vocab_size=vocab, hidden_size=hidden, ffn_hidden_size=ffn, num_layers=layers,
                        num_attention_heads=heads, num_query_groups=max(1, heads // 4), mrope_section=[16, 24, 24]
                        if hidden // heads == 128 else [2, 3, 3], tie_word_embeddings=False, add_qkv_bias=True,
                        max_position_embeddings=4096)
    omni = OmniConfig(
        vision=VisionEncoderConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                                   fullatt_block_indexes=[1]),
        audio=AudioEncoderConfig(encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
                                 output_dim=hidden),
        tokens=OmniTokenIds(audio=vocab - 8, image=vocab - 7, video=vocab - 6, audio_start=vocab - 5,
                            audio_end=vocab - 4, user=vocab - 3, vision_start=vocab - 2, vision_end=vocab - 1),
    )
    return OmniModelConfig(model=model, omni=omni, params_dtype=dtype)


def write_synthetic_checkpoint(folder: Path, cfg: OmniModelConfig, shard_bytes: int) -> dict:
    """A HF thinker folder of random weights, written a tensor at a time; returns its sizes."""
    folder.mkdir(parents=True)
    param_map = OmniParamMap(cfg, padded_vocab_size(cfg.model, 1))
    dtype = TORCH_DTYPES[cfg.params_dtype]
    gen = torch.Generator().manual_seed(0)
    writer = ShardWriter(folder, shard_bytes, log=lambda _: None)
    for key, shape in param_map.hf_shapes().items():
        writer.add(key, (torch.randn(shape, generator=gen) * 0.02).to(dtype))
    writer.close()
    to_hf_thinker_config(cfg).save_pretrained(folder)
    return {"total_bytes": sum(p.stat().st_size for p in folder.glob("*.safetensors")),
            "largest_file_bytes": max(p.stat().st_size for p in folder.glob("*.safetensors")),
            "largest_layer_bytes": largest_layer_bytes(param_map, dtype)}


def largest_layer_bytes(param_map: OmniParamMap, dtype: torch.dtype) -> int:
    shapes = param_map.hf_shapes()
    sizes = {key: torch.Size(shape).numel() * dtype.itemsize for key, shape in shapes.items()}
    return max(sum(sizes[k] for k in keys) for keys in layer_groups(shapes).values())


def bound_bytes(shard_bytes: int, layer_bytes: int) -> float:
    return BOUND_FACTOR * (shard_bytes + layer_bytes)


def measure(steps: list[tuple[str, Path, Path]], shard_size: str) -> list[dict]:
    """Run conversions (direction, source, target) one after the other in one fresh child
    process; the peak memory and time of each."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, __file__, "--child", shard_size, *[str(part) for step in steps for part in step]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(shard_size: str, *steps: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import PeakMemory, status_kb

    from megatron_omni.convert import convert_hf_to_megatron, convert_megatron_to_hf

    figures = []
    for direction, source, target in zip(steps[::3], steps[1::3], steps[2::3]):
        peak = PeakMemory()
        peak.reset()
        start = time.perf_counter()
        if direction == "hf_to_megatron":
            convert_hf_to_megatron(source, target, log=lambda _: None)
        else:
            convert_megatron_to_hf(source, target, max_shard_size=shard_size, log=lambda _: None)
        figures.append({"peak_above_start_bytes": peak.peak_mb() * 2**20, "peak_rss_bytes": status_kb("VmHWM") * 1024,
                        "seconds": time.perf_counter() - start})
    print(json.dumps(figures))


def run_benchmark(root: Path, cfg: OmniModelConfig, shard_size: str, child_per_direction: bool = True) -> dict:
    """Write the synthetic checkpoint under ``root`` and convert it both ways, each direction in a
    child process of its own (or both in one: the second then starts with warm imports)."""
    shard_bytes = parse_size(shard_size)
    sizes = write_synthetic_checkpoint(root / "hf", cfg, shard_bytes)
    steps = [("hf_to_megatron", root / "hf", root / "megatron"), ("megatron_to_hf", root / "megatron", root / "back")]
    if child_per_direction:
        to_megatron, to_hf = (measure([step], shard_size)[0] for step in steps)
    else:
        to_megatron, to_hf = measure(steps, shard_size)
    to_megatron["bound_bytes"] = bound_bytes(sizes["largest_file_bytes"], sizes["largest_layer_bytes"])
    to_hf["bound_bytes"] = bound_bytes(shard_bytes, sizes["largest_layer_bytes"])
    return {**sizes, "hf_to_megatron": to_megatron, "megatron_to_hf": to_hf}


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=1536)
    parser.add_argument("--ffn-hidden-size", type=int, default=6144)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--shard-size", default="500MB", help="source and output shard size (default 500MB)")
    parser.add_argument("--keep", help="write here and keep it (default: a temporary folder, removed)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    cfg = widened_config(args.hidden_size, args.ffn_hidden_size, args.layers, args.vocab, args.dtype)
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        result = run_benchmark(root, cfg, args.shard_size)
    gb = 1e9
    print(f"synthetic thinker: {result['total_bytes'] / gb:.2f} GB in shards of {args.shard_size}, largest file "
          f"{result['largest_file_bytes'] / gb:.3f} GB, largest layer {result['largest_layer_bytes'] / gb:.3f} GB")
    for direction in ("hf_to_megatron", "megatron_to_hf"):
        r = result[direction]
        print(f"{direction:15s} peak above start {r['peak_above_start_bytes'] / gb:.3f} GB "
              f"(bound {r['bound_bytes'] / gb:.3f} GB), whole process {r['peak_rss_bytes'] / gb:.3f} GB, "
              f"{r['seconds']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


# The converters start dist_checkpointing helper processes that re-import this module.
if __name__ == "__main__":
    sys.exit(main())
