"""The omni training job and the evaluation tool end to end: a short SFT run under torchrun
saves a checkpoint; tools/evaluate.py generates from it (resumably) and scores the answers."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "eval"))
from wheel_fixture import write_fixture_lexicon  # noqa: E402

TINY = ["model.hidden_size=64", "model.ffn_hidden_size=128", "model.mrope_section=[2, 3, 3]",
        "omni.vision.out_hidden_size=64", "omni.audio.output_dim=64"]


def run(cmd, **env):
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1", **env),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_sft_job_then_evaluate_from_checkpoint(tmp_path):
    out = tmp_path / "sft"
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
         "-m", "megatron_omni.cli.train", "--config", "examples/configs/toy_omni_sft.yaml", *TINY,
         f"dataset.toy_dir={tmp_path / 'toy'}", "dataset.toy_num_clips=6", "train.steps=2",
         "optimizer.lr_warmup_steps=0", "train.global_batch_size=2", "train.micro_batch_size=1",
         f"output_dir={out}", f"train.save_dir={out / 'ckpt'}", "logging.progress_bar=false"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["lm_loss"] > 0 for m in metrics)
    assert (out / "ckpt" / "run_config.yaml").is_file() and (out / "ckpt" / "latest").is_file()

    wheel = write_fixture_lexicon(tmp_path / "wheel")
    test_manifest = tmp_path / "toy" / "test.jsonl"
    preds, results = tmp_path / "preds.jsonl", tmp_path / "results"
    cmd = [sys.executable, "tools/evaluate.py", "--wheel-dir", str(wheel), "--out-dir", str(results),
           "--manifest", str(test_manifest), "--generate-into", str(preds), "--checkpoint", str(out / "ckpt"),
           "--set", "toy@openset", str(preds), str(test_manifest)]
    first = run(cmd, **{"MASTER_PORT": "29611"})
    ids = {json.loads(line)["id"] for line in test_manifest.read_text().splitlines()}
    assert {json.loads(line)["id"] for line in preds.read_text().splitlines()} == ids
    assert f"generated {len(ids)}, already present 0" in first.stderr
    (scored,) = json.loads((results / "results.json").read_text())["datasets"]
    assert scored["dataset"] == "toy" and scored["samples"] == len(ids) and scored["missing_predictions"] == 0
    again = run(cmd, **{"MASTER_PORT": "29612"})
    assert f"generated 0, already present {len(ids)}" in again.stderr

    # The same generation at TP=2 (two processes) gives the same answers; only rank 0 writes.
    tp2_preds = tmp_path / "preds_tp2.jsonl"
    tp2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *cmd[1:]]
    tp2[tp2.index(str(preds), tp2.index("--generate-into"))] = str(tp2_preds)
    run([*tp2, "--override", "parallel.tensor_model_parallel_size=2"])
    answers = {json.loads(line)["id"]: json.loads(line)["output"] for line in preds.read_text().splitlines()}
    tp2_answers = [json.loads(line) for line in tp2_preds.read_text().splitlines()]
    assert len(tp2_answers) == len(ids)
    assert {r["id"]: r["output"] for r in tp2_answers} == answers
