"""Fixtures of the omni-model tests: a one-process megatron world, tiny HF thinkers saved to disk
and their Megatron conversions (built once per session: conversion starts a writer process)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from omni_helpers import make_hf_thinker, save_hf_folder


@pytest.fixture(scope="session")
def megatron_session():
    from megatron_omni.convert.world import single_process_world

    with single_process_world():
        yield


@pytest.fixture
def megatron_world(megatron_session):
    """TP = PP = 1 groups and seeded RNG streams, fresh for each test."""
    from megatron_omni.parallel import initialize_parallel, set_seed

    initialize_parallel(1, 1)
    set_seed(1234)


@dataclass
class ConvertedThinker:
    hf_model: object
    hf_dir: Path
    megatron_dir: Path


def _converted(tmp_path_factory, name: str, **hf_kwargs) -> ConvertedThinker:
    from megatron_omni.convert import convert_hf_to_megatron

    root = tmp_path_factory.mktemp(name)
    hf_model = make_hf_thinker(**hf_kwargs)
    hf_dir = save_hf_folder(hf_model, root / "hf")
    convert_hf_to_megatron(hf_dir, root / "megatron", log=lambda _: None)
    return ConvertedThinker(hf_model, hf_dir, root / "megatron")


@pytest.fixture(scope="session")
def converted_thinker(tmp_path_factory, megatron_session) -> ConvertedThinker:
    """The untied tiny thinker, converted HF -> Megatron."""
    return _converted(tmp_path_factory, "untied", seed=0)


@pytest.fixture(scope="session")
def converted_tied_thinker(tmp_path_factory, megatron_session) -> ConvertedThinker:
    return _converted(tmp_path_factory, "tied", seed=1, tie_word_embeddings=True)


@pytest.fixture
def omni_model(converted_thinker, megatron_world):
    """OmniModel (TP = PP = 1, fp32, eval mode) loaded from the converted untied thinker."""
    from megatron_omni.convert import load_model_checkpoint, read_model_config
    from megatron_omni.models.omni import build_omni_model

    spec = read_model_config(converted_thinker.megatron_dir)
    model = build_omni_model(spec.to_config(), omni=spec.omni, initialize=False)
    load_model_checkpoint(converted_thinker.megatron_dir, [model])
    return model.eval()
