"""Values that used to crash late (torch's, megatron's or a ZeroDivisionError) stop the real
training entry at start with a configuration error naming the key."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CASES = {
    "optimizer.lr=-0.001 optimizer.min_lr=0": "optimizer.lr must be >= 0, got -0.001",
    "optimizer.min_lr=0.1 optimizer.lr=0.01": "optimizer.min_lr (0.1) must lie in [0, optimizer.lr (0.01)]",
    "train.micro_batch_size=0": "train.micro_batch_size must be >= 1, got 0",
    "train.seq_length=0": "train.seq_length must be >= 1, got 0",
    "oppo.grpo.group_size=0": "oppo.grpo.group_size must be >= 2",
    "oppo.sampling.max_new_tokens=0": "oppo.sampling.max_new_tokens must be >= 1, got 0",
    "evaluation.max_new_tokens=0": "evaluation.max_new_tokens must be >= 1, got 0",
    "train.seq_length=96": "oppo.sampling.max_new_tokens (96) must be smaller than train.seq_length (96)",
}
# Every case in one interpreter through the entry's main (argument parsing, torch.distributed,
# toy data, tokenizer, the validation walk): what `python -m megatron_omni.cli.train` runs.
SCRIPT = """
import sys
from megatron_omni.cli.train import main
for overrides in sys.argv[2:]:
    try:
        main(["--config", "examples/configs/toy_oppo.yaml", f"dataset.toy_dir={sys.argv[1]}", "dataset.toy_num_clips=2",
              "parallel.tensor_model_parallel_size=1", "logging.progress_bar=false", *overrides.split()])
        print("RESULT ran")
    except SystemExit as stop:
        print("RESULT", stop)
"""


def test_bad_values_stop_the_training_entry_at_start(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "toy"), *CASES], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", MASTER_PORT="29631"))
    results = [line.removeprefix("RESULT ") for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert len(results) == len(CASES), proc.stdout[-3000:] + proc.stderr[-3000:]
    for result, message in zip(results, CASES.values()):
        assert result.startswith("config error: ") and message in result, (result, message)
