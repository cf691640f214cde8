"""Model-only (or training) Megatron checkpoint, saved at any TP/PP -> Hugging Face thinker folder."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from megatron.core.dist_checkpointing.core import CheckpointingException
from torch.distributed.checkpoint.api import CheckpointException

from megatron_omni.config import ConfigError
from megatron_omni.convert.errors import ConversionError
from megatron_omni.convert.hf_checkpoint import ShardWriter, parse_size
from megatron_omni.convert.hf_config import TORCH_DTYPES, to_hf_thinker_config
from megatron_omni.convert.mapping import OmniParamMap
from megatron_omni.convert.megatron_checkpoint import (
    ASSETS_DIR,
    atomic_output_dir,
    check_output_dir,
    checkpoint_iteration_dir,
    copy_assets,
    load_model_checkpoint,
)
from megatron_omni.convert.model_config_file import model_config_path, read_model_config
from megatron_omni.convert.world import single_process_world
from megatron_omni.models.decoder import padded_vocab_size
from megatron_omni.models.omni import build_omni_model

Log = Callable[[str], None]


def convert_megatron_to_hf(
    checkpoint: str | Path,
    out_dir: str | Path,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    log: Log = print,
) -> Path:
    """Write ``out_dir``: config.json, safetensors shards (+ index), the tokenizer/processor files.

    ``checkpoint`` is a folder written by save_model_checkpoint (or one of its ``iter_*``
    folders); its omni_model.yaml describes the model. Tied embeddings produce no lm_head key.
    """
    out_dir = check_output_dir(out_dir, overwrite)
    try:
        cfg = read_model_config(checkpoint)
        config_file = model_config_path(checkpoint)
    except (ConfigError, FileNotFoundError) as exc:
        raise ConversionError(str(exc)) from None
    iteration = checkpoint_iteration_dir(checkpoint)
    shard_bytes = parse_size(max_shard_size)
    with single_process_world():
        model = build_omni_model(cfg.to_config(), omni=cfg.omni, initialize=False)
        log(f"[convert] loading {iteration}")
        try:
            load_model_checkpoint(iteration, [model])
        except (CheckpointException, CheckpointingException, KeyError, RuntimeError) as exc:
            # torch's CheckpointException carries every rank's traceback; its last line is the cause.
            cause = str(exc).strip().splitlines()[-1]
            raise ConversionError(f"{iteration} does not hold the model {config_file} describes: {cause}") from None
        param_map = OmniParamMap(cfg, padded_vocab_size(cfg.model, 1))
        state = model.state_dict()
        with atomic_output_dir(out_dir, overwrite) as tmp:
            writer = ShardWriter(tmp, shard_bytes, log)
            # megatron builds norm weights in fp32 whatever params_dtype says; HF stores one dtype.
            dtype = TORCH_DTYPES[cfg.params_dtype]
            for mapping in param_map.mappings:
                for key, tensor in zip(mapping.hf, param_map.to_hf(mapping, state[mapping.megatron])):
                    writer.add(key, tensor.to(dtype))
            writer.close()
            to_hf_thinker_config(cfg).save_pretrained(tmp)
            copied = copy_assets(config_file.parent / ASSETS_DIR, tmp)
            log(f"[convert] wrote {out_dir}" + (f" with {', '.join(copied)}" if copied else ""))
    return out_dir
