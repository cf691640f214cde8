"""metrics.jsonl across a crash: a last line cut short is dropped when the resumed run reopens it."""
import json

from megatron_omni.training.config import LoggingConfig
from megatron_omni.training.metrics import MetricsLogger, read_metrics


def test_resumed_logger_drops_a_partial_last_line(tmp_path):
    cfg = LoggingConfig(tensorboard=False, progress_bar=False)
    logger = MetricsLogger(tmp_path, cfg, total_steps=4)
    for step in (1, 2):
        logger.log(step, {"loss": float(step)})
    logger.close()
    path = tmp_path / "metrics.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"step": 3, "time": 17.5, "lo')  # the crash cut step 3's record

    resumed = MetricsLogger(tmp_path, cfg, total_steps=4, start_step=2)
    resumed.log(3, {"loss": 3.0})
    resumed.close()
    assert path.read_bytes().startswith(whole)
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert len([json.loads(line) for line in path.read_text().splitlines()]) == 3
