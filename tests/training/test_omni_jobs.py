"""The omni training job, the evaluation tool and the exporter end to end: a short TP=2 SFT run
under torchrun saves a checkpoint; tools/evaluate.py generates from it (resumably) and scores the
answers; tools/convert_megatron_to_hf.py exports it to a transformers thinker with the same logits."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A two-step SFT run at TP=2, its samples loaded by two workers per rank; its folder (toy data in toy/)."""
    root = tmp_path_factory.mktemp("sft_job")
    out = root / "sft"
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "megatron_omni.cli.train", "--config", "examples/configs/toy_omni_sft.yaml", *TINY,
         "parallel.tensor_model_parallel_size=2",
         f"dataset.toy_dir={root / 'toy'}", "dataset.toy_num_clips=6", "train.steps=2",
         "optimizer.lr_warmup_steps=0", "train.global_batch_size=2", "train.micro_batch_size=1", "data.num_workers=2",
         f"output_dir={out}", f"train.save_dir={out / 'ckpt'}", "logging.progress_bar=false"])
    return root


def test_sft_job_then_evaluate_from_checkpoint(sft_run, tmp_path):
    out = sft_run / "sft"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["lm_loss"] > 0 for m in metrics)
    assert (out / "ckpt" / "run_config.yaml").is_file() and (out / "ckpt" / "latest").is_file()

    wheel = write_fixture_lexicon(tmp_path / "wheel")
    test_manifest = sft_run / "toy" / "test.jsonl"
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


def test_sft_checkpoint_exports_with_the_trained_logits(sft_run, tmp_path):
    """The run's save_dir exports directly (omni_model.yaml and hf_assets were written at run start);
    transformers' thinker on the export gives the megatron model's logits."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from megatron_omni.convert import convert_megatron_to_hf, load_model_checkpoint, read_model_config
    from megatron_omni.convert.world import single_process_world
    from megatron_omni.models.omni import build_omni_model
    from megatron_omni.parallel import set_seed

    save_dir = sft_run / "sft" / "ckpt"
    assert (save_dir / "omni_model.yaml").is_file() and (save_dir / "hf_assets" / "tokenizer_config.json").is_file()
    out = convert_megatron_to_hf(save_dir, tmp_path / "hf", log=lambda _: None)  # the latest: iteration 2
    spec = read_model_config(save_dir)
    input_ids = torch.randint(0, spec.model.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    position_ids = torch.arange(12).expand(3, 2, 12)
    with single_process_world(), torch.no_grad():
        set_seed(0)  # megatron's RNG tracker; eval mode draws nothing from it
        model = build_omni_model(spec.to_config(), omni=spec.omni, initialize=False).eval()
        load_model_checkpoint(save_dir, [model])
        expected = model(input_ids=input_ids, position_ids=position_ids)[..., : spec.model.vocab_size]
    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        actual = hf(input_ids=input_ids, position_ids=position_ids, attention_mask=torch.ones_like(input_ids)).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
