"""The GPU check: every CUDA path of the project on one GPU, in one command, with its figures.

    python tools/gpu_check.py                           # on a CUDA machine with the project installed
    python tools/gpu_check.py --carry .gpu_carry        # on a bare check machine (see below)
    python tools/gpu_check.py --prepare-carry .gpu_carry   # here, with a package index: make that folder
    python tools/gpu_check.py --parts kernels oppo_7b   # some parts only

Parts, each in its own process with its own time limit, so one failure never hides the others:
  environment  torch, CUDA, the GPU, Triton, megatron-core, Transformer Engine
  gpu_tests    the GPU-marked tests (pytest -m gpu)
  sft          the toy SFT job, 5 steps, bf16, through the training command
  oppo, opsd   the toy OPPO and OmniOPSD jobs, 3 steps each, from the SFT job's checkpoint
  kernels      the fused loss kernels at T=8192, V=152064, forward+backward time, peak memory and
               % of the HBM floor, against eager torch (and Liger-Kernel where it is installed)
  oppo_7b      OPPO steps of a Qwen2.5-7B-shaped model cut to 2 decoder layers: rollout tokens/s,
               trained tokens/s, MFU and peak memory (tools/bench_precision.py)
It prints a table and writes the same figures as JSON (--out-dir/gpu_check.json); the exit status
is 1 when a part failed. Without CUDA it says so and exits 0. It is not part of the test suite.

A bare check machine (the project's torch, transformers and sentence-transformers, but not
megatron-core, decord, lhotse and the other packages below, and no network) gets them from a carry
folder made here by --prepare-carry: the cp312 wheels of CHECK_MACHINE_WHEELS, the toy data set,
and the embedding model's configuration and tokenizer without its weights (its 87 MB do not fit a
64 MiB transfer; the check gives the same architecture random weights, which costs the same GPU
time and changes only the values of the cue-recovery reward). --carry installs the wheels with
``pip --target`` into a scratch folder and puts it, with a copy of the project, on the path of every
part. Transformer Engine cannot travel (a 276 MB wheel whose torch extension is built against the
local torch): there the model runs megatron-core's local layer spec on CUDA and FP8 figures wait for
a machine that has Transformer Engine; the environment part says so instead of failing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
PARTS = ("environment", "gpu_tests", "sft", "oppo", "opsd", "kernels", "oppo_7b")
KERNEL_BENCHES = ("vocab_parallel_kl", "logprob_entropy", "topk_tail_kl", "evidence_masked_kl")
KERNEL_TOKENS, KERNEL_VOCAB = 8192, 152064
# What the project needs beyond a CUDA machine's usual torch / transformers / sentence-transformers
# image, pinned as in requirements.txt (CPython 3.12 wheels, manylinux x86_64).
CHECK_MACHINE_WHEELS = (
    "megatron-core==0.16.1", "decord==0.6.0", "lhotse==1.33.0", "audioread==3.1.0", "soundfile==0.14.0",
    "cytoolz==1.2.0", "intervaltree==3.2.1", "openpyxl==3.1.5", "et_xmlfile==2.0.0",
)
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64", "manylinux2010_x86_64")
EMBEDDING_FILES_WITHOUT_WEIGHTS = ("config.json", "config_sentence_transformers.json", "modules.json",
                                   "sentence_bert_config.json", "special_tokens_map.json", "tokenizer.json",
                                   "tokenizer_config.json", "vocab.txt", "1_Pooling")


def prepare_carry(folder: Path) -> None:
    """Wheels, the toy data set and the weightless embedding model for a bare check machine."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", *platforms, "-d", str(folder / "wheels"),
                    *CHECK_MACHINE_WHEELS], check=True)
    from megatron_omni.data.toy import make_toy_dataset
    from megatron_omni.text.embeddings import default_model_path

    make_toy_dataset(folder / "data_toy")
    source, target = Path(default_model_path()), folder / "embedding_model"
    target.mkdir(exist_ok=True)
    for name in EMBEDDING_FILES_WITHOUT_WEIGHTS:
        copy = shutil.copytree if (source / name).is_dir() else shutil.copy2
        copy(source / name, target / name, **({"dirs_exist_ok": True} if copy is shutil.copytree else {}))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"[gpu_check] carry folder {folder}: {size / 2**20:.1f} MiB (a transfer holds at most 64 MiB)")


def install_carry(folder: Path, site: Path) -> dict:
    """Install the carried wheels and a copy of the project into ``site``; returns the environment
    and paths every part runs with."""
    wheels = sorted((folder / "wheels").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)], check=True)
    # The installed layout: kernels/ becomes megatron_omni.kernels (setup.py's package_dir).
    shutil.copytree(REPO / "megatron_omni", site / "megatron_omni", dirs_exist_ok=True)
    shutil.copytree(REPO / "kernels", site / "megatron_omni" / "kernels", dirs_exist_ok=True)
    embedding = site / "embedding_model"
    if not (embedding / "model.safetensors").is_file():
        shutil.copytree(folder / "embedding_model", embedding, dirs_exist_ok=True)
        from transformers import AutoConfig, AutoModel

        AutoModel.from_config(AutoConfig.from_pretrained(embedding)).save_pretrained(embedding)
    return {"pythonpath": [str(site)], "toy_dir": str(folder / "data_toy"), "embedding_model": str(embedding)}


class Check:
    """Runs the parts as child processes and collects their figures."""

    def __init__(self, args, setup: dict):
        self.args, self.setup = args, setup
        self.out = Path(args.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        paths = [*setup.get("pythonpath", []), str(TOOLS), os.environ.get("PYTHONPATH", "")]
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), PYTHONUNBUFFERED="1",
                        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.toy_dir = setup.get("toy_dir") or str(self.work / "data_toy")
        self.results: dict[str, dict] = {}

    def child(self, name: str, argv: list[str], timeout: float) -> tuple[bool, str]:
        """``python -P argv``: -P keeps the checkout's own folders off the path, so a carried
        install is what runs. The output is kept in out_dir/<name>.log."""
        started = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-P", *argv], cwd=REPO, env=self.env, capture_output=True,
                                  text=True, timeout=timeout)
            ok, output = proc.returncode == 0, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            ok = False
            # A timeout hands back bytes whatever text= asked for.
            partial = "".join(s.decode(errors="replace") if isinstance(s, bytes) else s
                              for s in (exc.stdout or "", exc.stderr or ""))
            output = f"{partial}\n[gpu_check] {name}: stopped after {timeout:.0f} s"
        (self.out / f"{name}.log").write_text(output)
        print(f"[gpu_check] {name}: {'ok' if ok else 'FAILED'} in {time.perf_counter() - started:.0f} s", flush=True)
        return ok, output

    def record(self, part: str, ok: bool, figures: dict | None = None, detail: str = "") -> None:
        self.results[part] = {"status": "pass" if ok else "fail", **(figures or {}),
                              **({"detail": detail} if detail else {})}

    def environment(self) -> None:
        import torch

        from megatron_omni.models.config import transformer_engine_available

        figures = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(),
                   "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}
        for module in ("triton", "megatron.core", "transformers"):
            try:
                figures[module] = __import__(module, fromlist=["__version__"]).__version__
            except ImportError as exc:
                self.record("environment", False, figures, f"{module} is not importable: {exc}")
                return
        te = transformer_engine_available()
        figures["transformer_engine"] = te
        note = "" if te else ("no Transformer Engine: the local layer spec runs on CUDA; "
                              "FP8 figures wait for a machine with Transformer Engine")
        self.record("environment", True, figures, note)

    def gpu_tests(self) -> None:
        ok, output = self.child("gpu_tests", ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"], 240)
        summary = next((line for line in reversed(output.splitlines()) if " in " in line and "=" in line), "")
        self.record("gpu_tests", ok, {"summary": summary.strip("= ")})

    def train_job(self, part: str, config: str, steps: int, extra: list[str]) -> None:
        run = self.work / part
        # One GPU: the toy configs' TP=2 layouts run at TP=1.
        overrides = [f"train.steps={steps}", "precision.params_dtype=bf16", f"output_dir={run}",
                     "parallel.tensor_model_parallel_size=1", "parallel.pipeline_model_parallel_size=1",
                     f"train.save_dir={run}/checkpoints", f"dataset.toy_dir={self.toy_dir}",
                     "logging.progress_bar=false", "logging.tensorboard=false", "evaluation.at_start=false",
                     "evaluation.at_end=false", *extra]
        if self.setup.get("embedding_model"):
            overrides.append(f"reward.embedding_model={self.setup['embedding_model']}")
        ok, output = self.child(part, ["-m", "megatron_omni.cli.train", "--config", f"examples/configs/{config}",
                                       *overrides], 150)
        figures = {}
        metrics = run / "metrics.jsonl"
        if ok and metrics.is_file():
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            loss_key = next((k for k in ("lm_loss", "policy_loss", "distill_kl") if k in rows[-1]), None)
            figures = {"steps": len(rows), "step_time_s": sum(r["step_time_s"] for r in rows[1:]) / max(len(rows) - 1, 1)}
            if loss_key:
                figures[f"last_{loss_key}"] = rows[-1][loss_key]
                ok = ok and all(math.isfinite(r[loss_key]) for r in rows)
            if "rollout_tokens_per_s" in rows[-1]:
                figures["rollout_tokens_per_s"] = rows[-1]["rollout_tokens_per_s"]
            ok = ok and len(rows) == steps
        self.record(part, ok, figures, "" if ok else _tail(output))

    def sft(self) -> None:
        self.train_job("sft", "toy_omni_sft.yaml", 5, ["optimizer.lr_warmup_steps=1"])

    def oppo(self) -> None:
        self.train_job("oppo", "toy_oppo.yaml", 3, [f"init_from={self.work / 'sft' / 'checkpoints'}"])

    def opsd(self) -> None:
        self.train_job("opsd", "toy_omniopsd.yaml", 3, [f"init_from={self.work / 'sft' / 'checkpoints'}"])

    def kernels(self) -> None:
        rows, failures = [], []
        for op in KERNEL_BENCHES:
            path = self.work / f"kernel_{op}.json"
            ok, output = self.child(f"kernel_{op}", [str(TOOLS / f"bench_kernel_{op}.py"), "--device", "cuda",
                                                     "--tokens", str(KERNEL_TOKENS), "--vocab", str(KERNEL_VOCAB),
                                                     "--repeats", "10", "--json", str(path)], 150)
            if ok and path.is_file():
                rows += [{"op": op, **row} for row in json.loads(path.read_text())]
            else:
                failures.append(f"{op}: {_tail(output, 3)}")
        self.record("kernels", not failures, {"rows": rows}, "; ".join(failures))

    def oppo_7b(self) -> None:
        path = self.work / "oppo_7b.json"
        argv = [str(TOOLS / "bench_precision.py"), "--variants", "bf16", "--qwen7b-layers", "2", "--steps", "2",
                "--toy-dir", self.toy_dir, "--json", str(path)]
        if self.setup.get("embedding_model"):
            argv += ["--override", f"reward.embedding_model={self.setup['embedding_model']}"]
        ok, output = self.child("oppo_7b", argv, 240)
        figures = json.loads(path.read_text())["bf16"] if ok and path.is_file() else {}
        self.record("oppo_7b", ok and bool(figures), figures, "" if ok else _tail(output))


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def print_table(results: dict) -> None:
    print("\npart        status  figures")
    for part, result in results.items():
        figures = {k: v for k, v in result.items() if k not in ("status", "detail", "rows")}
        cells = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
        print(f"{part:<11} {result['status']:<7} {cells}")
        if result.get("detail"):
            print("            " + result["detail"].replace("\n", "\n            "))
    kernel_rows = results.get("kernels", {}).get("rows", [])
    if kernel_rows:
        print(f"\nkernels at T={KERNEL_TOKENS}, V={KERNEL_VOCAB}: op | variant | fwd+bwd ms | % HBM floor | "
              "peak extra MB | speed-up vs eager | memory vs eager %")
        for row in kernel_rows:
            if "error" in row:
                print(f"{row['op']} | {row['variant']} | failed: {row['error']}")
                continue
            cells = [row.get(k) for k in ("forward+backward ms", "forward+backward % floor", "peak extra MB",
                                          "speed-up vs eager", "memory vs eager %")]
            print(f"{row['op']} | {row['variant']} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--out-dir", default=os.environ.get("OUT") or "runs/gpu_check",
                        help="gpu_check.json and one log per part (default: $OUT, else runs/gpu_check)")
    parser.add_argument("--carry", type=Path, help="a folder made by --prepare-carry: install it first")
    parser.add_argument("--site", type=Path, default=Path(tempfile.gettempdir()) / "megatron_omni_site",
                        help="where --carry installs the wheels and the project")
    parser.add_argument("--prepare-carry", type=Path, metavar="FOLDER",
                        help="download the wheels and write the toy data set for a bare check machine, then stop")
    args = parser.parse_args(argv)
    if args.prepare_carry:
        prepare_carry(args.prepare_carry)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("[gpu_check] no CUDA device here: nothing to check (the CPU test suite covers this machine)")
        return 0
    started = time.perf_counter()
    setup = install_carry(args.carry, args.site) if args.carry else {}
    if args.carry:
        sys.path[:0] = setup["pythonpath"]
    check = Check(args, setup)
    for part in args.parts:
        getattr(check, part)()
    elapsed = time.perf_counter() - started
    report = {"date": time.strftime("%Y-%m-%d"), "seconds": elapsed, "parts": check.results}
    (check.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    print_table(check.results)
    failed = [p for p, r in check.results.items() if r["status"] != "pass"]
    print(f"\n[gpu_check] {len(check.results) - len(failed)}/{len(check.results)} parts passed in {elapsed:.0f} s; "
          f"figures in {check.out / 'gpu_check.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
