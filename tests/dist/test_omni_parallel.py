"""The converted thinker at TP=2 and at PP=2 reproduces transformers' logits; a randomly
initialised TP=2 model is saved for the resharding checks.

Runs under torchrun with 2 processes (tests/test_dist_suites.py: omni_parallel-x2), whose
parent-side fixture, omni_parallel_cases, writes the inputs beside the checkpoints in $OMNI_PARALLEL_DIR:
    cases.pt  {name: {"checkpoint": path, "cases": [{"inputs", "expected", "valid"}]}}
and, after the launch, checks fresh_tp2/ (a model-only checkpoint) and fresh_tp2_logits.pt.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_omni.convert import load_model_checkpoint, read_model_config, save_model_checkpoint
from megatron_omni.models.omni import build_omni_model
from megatron_omni.parallel import destroy_parallel, init_distributed, initialize_parallel, set_seed

WORK = Path(os.environ.get("OMNI_PARALLEL_DIR", "/nonexistent"))
MODELS = ("untied", "tied")


@pytest.fixture(scope="module", autouse=True)
def world():
    if not (WORK / "cases.pt").is_file():
        pytest.skip("launched by tests/test_dist_suites.py (omni_parallel-x2), which prepares $OMNI_PARALLEL_DIR")
    init_distributed()
    yield
    destroy_parallel()


@pytest.fixture(scope="module")
def models() -> dict:
    return torch.load(WORK / "cases.pt", weights_only=False)


def build(checkpoint: Path, tp: int, pp: int, initialize: bool = False):
    initialize_parallel(tp, pp)
    set_seed(1234)
    spec = read_model_config(checkpoint)
    model = build_omni_model(
        spec.to_config(tp, pp),
        parallel_state.is_pipeline_first_stage(),
        parallel_state.is_pipeline_last_stage(),
        omni=spec.omni,
        initialize=initialize,
    )
    return model.eval(), spec


def full_vocab(logits: torch.Tensor) -> torch.Tensor:
    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)


def assert_matches(logits: torch.Tensor, case: dict) -> None:
    vocab, valid = case["expected"].shape[-1], case["valid"]
    torch.testing.assert_close(logits[..., :vocab][valid], case["expected"][valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_tp2_matches_transformers(models, name):
    model, _ = build(models[name]["checkpoint"], tp=2, pp=1)
    load_model_checkpoint(models[name]["checkpoint"], [model])
    for case in models[name]["cases"]:
        with torch.no_grad():
            logits = full_vocab(model(**case["inputs"]))
            gathered = model(**case["inputs"], runtime_gather_output=True)
        assert_matches(logits, case)
        # The 128-token vocabulary is padded to 256 rows at TP=2, all on rank 1's shard; the
        # padded columns are masked whether the output layer gathers the shards or not.
        assert torch.equal(gathered, logits)
        assert bool((logits[..., case["expected"].shape[-1]:] == torch.finfo(logits.dtype).min).all())


@pytest.mark.parametrize("name", MODELS)
def test_pp2_matches_transformers(models, name):
    """One decoder layer per stage; hidden states travel through megatron's pipeline schedule."""
    model, _ = build(models[name]["checkpoint"], tp=1, pp=2)
    load_model_checkpoint(models[name]["checkpoint"], [model])
    assert (model.visual is not None) == parallel_state.is_pipeline_first_stage()

    def forward_step(data_iterator, chunk):
        return chunk(**next(data_iterator)), lambda output, non_loss_data=False: output

    for case in models[name]["cases"]:
        batch, seq = case["inputs"]["input_ids"].shape
        collected = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter([case["inputs"]]),
            model=model,
            num_microbatches=1,
            seq_length=seq,
            micro_batch_size=batch,
            forward_only=True,
            collect_non_loss_data=True,
        )
        if parallel_state.is_pipeline_last_stage():
            assert_matches(collected[0], case)


def test_save_randomly_initialised_tp2_model(models):
    """Weights drawn at TP=2 (vocabulary padded to 256 rows); resharded by omni_parallel_cases' check."""
    model, spec = build(models["untied"]["checkpoint"], tp=2, pp=1, initialize=True)
    save_model_checkpoint(WORK / "fresh_tp2", [model], spec)
    with torch.no_grad():
        logits = full_vocab(model(**models["untied"]["cases"][0]["inputs"]))
    if dist.get_rank() == 0:
        torch.save(logits, WORK / "fresh_tp2_logits.pt")
