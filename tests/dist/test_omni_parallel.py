"""The converted thinker at TP=2 and at PP=2 reproduces transformers' logits; a randomly
initialised TP=2 model is saved for the resharding checks; the Qwen3-Omni MoE thinker reproduces
transformers' logits at TP=2, EP=2 (also with a different number of tokens on each rank) and PP=2,
where both stages' MoE layers keep the padding out of the load-balancing loss.

Runs under torchrun with 2 processes (tests/test_dist_suites.py: omni_parallel-x2), whose
parent-side fixture, omni_parallel_cases, writes the inputs beside the checkpoints in $OMNI_PARALLEL_DIR:
    cases.pt  {name: {"checkpoint": path, "cases": [{"inputs", "expected", "valid"}]}}
and, after the launch, checks fresh_tp2/ (a model-only checkpoint) and fresh_tp2_logits.pt.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_omni.convert import load_model_checkpoint, read_model_config, save_model_checkpoint
from megatron_omni.models.omni import build_omni_model
from megatron_omni.parallel import destroy_parallel, init_distributed, initialize_parallel, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))  # the transformers oracles
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


# ----------------------------------------------------------------------------- Qwen3-Omni MoE thinker
# transformers' tiny MoE thinker is built on every rank from its seed (moe_helpers), its weights
# copied into this rank's shard of OmniModel; no checkpoint involved.


@pytest.fixture(scope="module")
def moe_thinker():
    from moe_helpers import make_hf_moe_thinker
    from omni_helpers import hf_logits, make_batch

    hf_model = make_hf_moe_thinker(seed=0)
    batches = [make_batch(hf_model, use_audio_in_video) for use_audio_in_video in (False, True)]
    return hf_model, [(batch, hf_logits(hf_model, batch)) for batch in batches]


def build_moe(hf_model, tp: int, pp: int, ep: int):
    from moe_helpers import load_megatron_state, megatron_state, moe_model_sections

    from megatron_omni.models.config import PrecisionConfig
    from megatron_omni.models.decoder import padded_vocab_size
    from megatron_omni.parallel.config import ParallelConfig
    from megatron_omni.training.config import RunConfig

    initialize_parallel(tp, pp, expert_model_parallel_size=ep)
    set_seed(1234)
    model_cfg, omni = moe_model_sections()
    cfg = RunConfig(model=model_cfg, precision=PrecisionConfig(transformer_engine=False),
                    parallel=ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                            expert_model_parallel_size=ep))
    model = build_omni_model(cfg, parallel_state.is_pipeline_first_stage(), parallel_state.is_pipeline_last_stage(),
                             omni=omni)  # initialised: megatron marks the TP shards as it draws them
    load_megatron_state(model, megatron_state(hf_model, padded_vocab_size(model_cfg, tp)))
    return model.eval()


def assert_moe_matches(logits: torch.Tensor, batch, expected: torch.Tensor) -> None:
    from omni_helpers import assert_close_on_valid

    assert_close_on_valid(logits, expected, batch, atol=1e-4)


@pytest.mark.parametrize("tp, ep", [(2, 1), (1, 2)], ids=["tp2", "ep2"])
def test_moe_thinker_matches_transformers(moe_thinker, tp, ep):
    """TP=2: attention and every expert sharded, all experts on each rank. EP=2: two experts per
    rank, the tokens of both ranks (the same batch here) gathered by megatron's dispatcher."""
    hf_model, cases = moe_thinker
    model = build_moe(hf_model, tp=tp, pp=1, ep=ep)
    experts = model.language_model.decoder.layers[0].mlp.experts.local_experts
    assert len(experts) == 4 // ep
    for batch, expected in cases:
        with torch.no_grad():
            assert_moe_matches(full_vocab(model(**batch.model_inputs())), batch, expected)


def test_moe_ep2_ranks_with_different_token_counts(moe_thinker):
    """The two ranks of the expert group run batches of different sizes (rank 0 two samples,
    rank 1 one shorter sample: 2 x 46 against 1 x 36 tokens), as data-parallel replicas do; each
    gets transformers' logits of its own batch."""
    from omni_helpers import hf_logits, make_batch

    hf_model, _ = moe_thinker
    model = build_moe(hf_model, tp=1, pp=1, ep=2)
    rank = dist.get_rank()
    batch = make_batch(hf_model, seed=rank, frames=(200, 160) if rank == 0 else (120,))
    counts = [None, None]
    dist.all_gather_object(counts, batch.input_ids.numel())
    assert counts[0] != counts[1]
    with torch.no_grad():
        assert_moe_matches(model(**batch.model_inputs()), batch, hf_logits(hf_model, batch))


@pytest.mark.parametrize("tp, ep", [(2, 1), (1, 2)], ids=["tp2", "ep2"])
def test_converted_moe_checkpoint_loads_at_tp2_and_ep2(models, moe_thinker, tp, ep):
    """The converter's MoE checkpoint (one key per layer with an expert axis) loads at TP=2 and at
    EP=2 (each rank its two experts) and gives transformers' logits; the EP=2 model is saved again
    for omni_parallel_cases' check (back to HF, bit for bit)."""
    _, cases = moe_thinker
    checkpoint = models["moe"]["checkpoint"]
    initialize_parallel(tp, 1, expert_model_parallel_size=ep)
    set_seed(1234)
    spec = read_model_config(checkpoint)
    model = build_omni_model(spec.to_config(tp, 1, expert_model_parallel_size=ep), omni=spec.omni, initialize=False)
    load_model_checkpoint(checkpoint, [model])
    model.eval()
    assert len(model.language_model.decoder.layers[0].mlp.experts.local_experts) == 4 // ep
    for batch, expected in cases:
        with torch.no_grad():
            assert_moe_matches(full_vocab(model(**batch.model_inputs())), batch, expected)
    if ep == 2:
        save_model_checkpoint(WORK / "moe_ep2", [model], spec)


def test_moe_thinker_pp2_matches_transformers(moe_thinker):
    """Two decoder layers per stage: DeepStack's two layers and the towers on the first."""
    hf_model, cases = moe_thinker
    model = build_moe(hf_model, tp=1, pp=2, ep=1)

    def forward_step(data_iterator, chunk):
        return chunk(**next(data_iterator)), lambda output, non_loss_data=False: output

    for batch, expected in cases:
        inputs = batch.model_inputs()
        collected = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([inputs]), model=model, num_microbatches=1,
            seq_length=inputs["input_ids"].shape[1], micro_batch_size=inputs["input_ids"].shape[0],
            forward_only=True, collect_non_loss_data=True,
        )
        if parallel_state.is_pipeline_last_stage():
            assert_moe_matches(collected[0], batch, expected)


def test_moe_pp2_load_balancing_loss_leaves_out_padding(moe_thinker):
    """A training-mode forward of the data pipeline's right-padded batch (``pad``, through
    ``model_kwargs()`` as the training forwards) over two stages of two MoE layers: every stage
    takes the padding mask, and the logged loss is transformers' with the attention mask (measured:
    the last stage without the mask moves it by 1.7e-4 relative, 17 times the tolerance)."""
    from omni_helpers import processed_samples
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import load_balancing_loss_func

    from megatron_omni.data.batch import pad
    from megatron_omni.models.moe import router_metrics

    hf_model, [(helper, _), _] = moe_thinker
    with torch.no_grad():
        router_logits = hf_model(**helper.model_inputs(), attention_mask=helper.attention_mask,
                                 output_router_logits=True).router_logits
    per_layer = [float(load_balancing_loss_func((layer,), 4, 2, helper.attention_mask)) for layer in router_logits]
    expected = sum(per_layer) / len(per_layer)
    batch = pad(processed_samples(helper))
    model = build_moe(hf_model, tp=1, pp=2, ep=1).train()

    def forward_step(data_iterator, chunk):
        b = next(data_iterator)
        return chunk(b.tokens, b.position_ids, None, **b.model_kwargs()), lambda output, non_loss_data=False: output

    # The forward-only schedule keeps autograd on, so the routers compute their loss.
    get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter([batch]), model=model, num_microbatches=1,
        seq_length=batch.tokens.shape[1], micro_batch_size=batch.tokens.shape[0], forward_only=True,
        collect_non_loss_data=True,
    )
    assert router_metrics(model.config, num_microbatches=1)["moe_load_balancing_loss"] == pytest.approx(expected, rel=1e-5)
