"""Run configuration loading and validation: the documented messages."""
from functools import partial
from pathlib import Path

import pytest

from megatron_omni.config import ConfigError
from megatron_omni.config import load_config as load_any
from megatron_omni.models import config as model_config_module
from megatron_omni.runs.config import OmniTrainConfig
from megatron_omni.training.config import RunConfig

load_config = partial(load_any, cls=RunConfig)
CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_dotted_overrides(tmp_path):
    path = write(tmp_path, "model:\n  num_layers: 8\ntrain:\n  steps: 3\n")
    cfg = load_config(path, ["train.steps=7", "optimizer.lr=1e-5", "model.mrope_section=[4, 2, 2]", "train.save_dir=null"])
    assert cfg.model.num_layers == 8 and cfg.train.steps == 7
    assert cfg.optimizer.lr == pytest.approx(1e-5) and isinstance(cfg.optimizer.lr, float)
    assert cfg.model.mrope_section == [4, 2, 2] and cfg.train.save_dir is None


def test_int_is_accepted_for_float():
    assert load_config(None, ["optimizer.lr=1"]).optimizer.lr == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.num_layer=3", "unknown key model.num_layer"),
        ("modle.num_layers=3", "unknown key modle"),
        ("train.steps=ten", "train.steps: expected int, got str 'ten'"),
        ("train.steps=true", "train.steps: expected an integer, got True"),
        ("logging.tensorboard=3", "logging.tensorboard: expected true/false, got 3"),
        ("logging.wandb_mode=cloud", "logging.wandb_mode: 'cloud' is not one of ['online', 'offline']"),
        ("precision.params_dtype=fp64", "precision.params_dtype: 'fp64' is not one of ['fp32', 'bf16', 'fp16']"),
        ("model.mrope_section=3", "model.mrope_section: expected a list"),
        ("model=3", "model: expected a mapping"),
    ],
)
def test_bad_keys_and_types(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_error_names_the_file(tmp_path):
    path = write(tmp_path, "train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key train\.stepz"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["train.steps"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["parallel.tensor_model_parallel_size=3"],
         "parallel.tensor_model_parallel_size (3) must divide model.num_attention_heads (4) and model.num_query_groups (2)"),
        (["parallel.tensor_model_parallel_size=4"], "must divide model.num_attention_heads (4) and model.num_query_groups (2)"),
        (["parallel.pipeline_model_parallel_size=3"],
         "parallel.pipeline_model_parallel_size (3) must divide model.num_layers (4)"),
        (["parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=4"],
         "pipeline_model_parallel_size (2) x virtual_pipeline_model_parallel_size (4) must divide model.num_layers (4)"),
        (["parallel.virtual_pipeline_model_parallel_size=2"], "needs pipeline_model_parallel_size >= 2"),
        (["parallel.sequence_parallel=true"], "sequence_parallel needs tensor_model_parallel_size >= 2"),
        (["parallel.sequence_parallel=true", "parallel.tensor_model_parallel_size=2", "precision.transformer_engine=false"],
         "parallel.sequence_parallel needs the Transformer Engine layer spec"),
        (["model.num_query_groups=3"], "model.num_attention_heads (4) must be divisible by model.num_query_groups (3)"),
        (["model.mrope_section=[2, 2, 2]"], "model.mrope_section [2, 2, 2] must sum to head_dim / 2 = 8"),
        (["optimizer.lr_warmup_steps=5", "train.steps=5"], "optimizer.lr_warmup_steps (5) must be smaller than train.steps (5)"),
        (["train.global_batch_size=6", "train.micro_batch_size=4"],
         "train.global_batch_size (6) must be a multiple of train.micro_batch_size (4)"),
    ],
)
def test_validation_messages(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides).validate()
    assert message in str(err.value)


def test_world_size_rules():
    cfg = load_config(None, ["parallel.tensor_model_parallel_size=2"])
    with pytest.raises(ConfigError, match=r"world size 3 is not divisible by TP \(2\) x PP \(1\)"):
        cfg.validate(world_size=3)
    cfg = load_config(None, ["train.global_batch_size=8", "train.micro_batch_size=4"])
    with pytest.raises(ConfigError, match=r"multiple of micro_batch_size \(4\) x data-parallel size \(4\)"):
        cfg.validate(world_size=4)
    cfg.validate(world_size=2)


def test_fp8_without_transformer_engine_fails_at_start(monkeypatch):
    monkeypatch.setattr(model_config_module, "transformer_engine_available", lambda: False)
    with pytest.raises(ConfigError, match=r"precision.fp8='e4m3' needs Transformer Engine on a CUDA machine"):
        load_config(None, ["precision.fp8=e4m3"]).validate()


def test_transformer_engine_probe_is_false_without_cuda():
    import torch

    if not torch.cuda.is_available():
        assert model_config_module.transformer_engine_available() is False


def test_defaults_are_valid():
    RunConfig().validate(world_size=1)


@pytest.mark.parametrize("name", ["toy_decoder.yaml", "toy_omni_sft.yaml", "toy_oppo.yaml", "qwen2_5_omni_7b_oppo.yaml",
                                  "toy_omniopsd.yaml", "qwen2_5_omni_7b_omniopsd.yaml", "toy_moe_sft.yaml",
                                  "toy_moe_oppo.yaml", "toy_moe_omniopsd.yaml", "qwen3_omni_30b_a3b_oppo.yaml"])
def test_example_configs_load_and_validate(name):
    path = CONFIGS / name
    # FP8 needs Transformer Engine on CUDA; on CPU the 7B config is checked in bf16.
    cfg = RunConfig.load(path) if name == "toy_decoder.yaml" else \
        OmniTrainConfig.load(path, ["precision.fp8=null", "reward.wheel_dir=lexicon"])
    p = cfg.parallel
    # The smallest world the layout fills: expert parallelism splits the data-parallel ranks.
    world = p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.expert_model_parallel_size
    cfg.validate(world)


def test_example_configs_name_no_path_outside_the_repository():
    """A fresh clone holds everything the example configs point at (or generates it)."""
    import yaml

    def paths(node, key=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from paths(v, f"{key}.{k}" if key else k)
        elif isinstance(node, str) and ("/" in node or node.startswith("..")):
            yield key, node

    for path in sorted(CONFIGS.glob("*.yaml")):
        for key, value in paths(yaml.safe_load(path.read_text())):
            assert not Path(value).is_absolute() and ".." not in Path(value).parts, f"{path.name}: {key}={value}"
