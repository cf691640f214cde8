"""Weights & Biases logging in offline mode: what MetricsLogger logs is in the run's own files."""
import json
import sys

import pytest

from megatron_omni.config import ConfigError
from megatron_omni.training.config import LoggingConfig, RunConfig
from megatron_omni.training.metrics import MetricsLogger


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """Nothing outside tmp_path (no $HOME cache or settings), no network, no console output."""
    pytest.importorskip("wandb")
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    return tmp_path


def logging_cfg(**kw) -> LoggingConfig:
    return LoggingConfig(metrics_jsonl=False, tensorboard=False, progress_bar=False, wandb_project="omni-test", **kw)


def run_logger(output_dir, steps, config=None) -> None:
    logger = MetricsLogger(output_dir, logging_cfg(), total_steps=10, start_step=steps[0] - 1, config=config)
    for step in steps:
        logger.log(step, {"loss": 1.0 / step, "lr": 0.1 * step, "note": "text is not a scalar"})
    logger.close()


def read_run(run_dir) -> dict:
    """Id, name, config and history (step -> values) as recorded in an offline run's .wandb file."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal.datastore import DataStore

    (path,) = run_dir.glob("run-*.wandb")
    store = DataStore()
    store.open_for_scan(str(path))
    run, config, history = {}, {}, {}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[record.history.step.num] = items
        elif kind == "run":
            run.update(id=record.run.run_id, name=record.run.display_name)
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return {**run, "config": config, "history": history}


def offline_runs(output_dir) -> list:
    return sorted((output_dir / "wandb").glob("offline-run-*"))


def test_offline_run_records_every_step_and_the_config(wandb_env):
    out = wandb_env / "run"
    run_logger(out, [1, 2, 3], config=RunConfig().to_dict())
    (run_dir,) = offline_runs(out)
    run = read_run(run_dir)
    assert run["id"] == (out / "wandb_run_id").read_text().strip() and run["name"] == "run"
    assert sorted(run["history"]) == [1, 2, 3]
    for step, values in run["history"].items():
        assert values["loss"] == pytest.approx(1.0 / step) and values["lr"] == pytest.approx(0.1 * step)
        assert "note" not in values and "time" not in values
    assert run["config"]["train"]["steps"] == RunConfig().train.steps


def test_resumed_logger_continues_the_same_run(wandb_env):
    out = wandb_env / "run"
    run_logger(out, [1, 2])
    run_logger(out, [3, 4])
    first, second = (read_run(run_dir) for run_dir in offline_runs(out))
    assert first["id"] == second["id"] == (out / "wandb_run_id").read_text().strip()
    assert sorted(first["history"]) == [1, 2] and sorted(second["history"]) == [3, 4]


def test_wandb_dir_and_run_name(wandb_env):
    out = wandb_env / "run"
    logger = MetricsLogger(out, logging_cfg(wandb_dir=str(wandb_env / "elsewhere"), wandb_run_name="trial-7"), 2)
    assert logger.wandb.name == "trial-7" and logger.wandb.offline
    logger.close()
    assert logger.wandb is None and not (out / "wandb").exists()
    assert len(offline_runs(wandb_env / "elsewhere")) == 1


def test_missing_wandb_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    RunConfig.load(None).validate()  # W&B off: no import needed
    cfg = RunConfig.load(None, ["logging.wandb_project=omni"])
    with pytest.raises(ConfigError, match=r"logging.wandb_project='omni' needs the wandb package"):
        cfg.validate()
