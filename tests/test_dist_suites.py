"""The torchrun suites: every module in tests/dist/ runs inside a `torchrun --nproc-per-node N` world
(CPU processes, gloo), one launch per entry of SUITES, one pytest test per entry (`-k oppo_step-x2`).

An entry may name a parent-side fixture. It returns a Prepared: environment for the ranks (e.g. the
folder their inputs were written to) and a check of what the ranks wrote, run after the launch. An
entry that needs another one's outputs says so through its fixture: oppo_step-x2's fixture,
oppo_reference, is the oppo_step-x1 launch (the single-process reference), so the x2 entry alone
still runs x1 first. Each entry launches at most once per session (`launch`), whoever asks first.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "models"))  # omni_helpers, for the omni_parallel entry's fixture


@dataclass
class Suite:
    module: str  # in tests/dist/
    nproc: int
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's, OMP_NUM_THREADS=1
    fixture: str | None = None  # parent-side: returns a Prepared
    timeout: int = 600

    @property
    def id(self) -> str:
        return f"{Path(self.module).stem.removeprefix('test_')}-x{self.nproc}"

    @property
    def shares_launch(self) -> bool:
        """Without a fixture or environment of its own, an entry runs in one launch with the other such
        entries of its process count that this session selected: each launch costs every rank its
        torch and megatron imports (~10 s a process on 2 cores)."""
        return self.fixture is None and not self.env


@dataclass
class Prepared:
    """What a parent-side fixture hands the launch: environment for the ranks, a check of their outputs."""

    env: dict[str, str] = field(default_factory=dict)
    check: Callable[[], None] = lambda: None


SUITES = [
    # TP / PP / TPxPP / interleaved PP / distributed optimizer / resharded checkpoint vs one process.
    Suite("test_parallel_equivalence.py", 4),
    Suite("test_cpu_compat.py", 2),
    Suite("test_recompute.py", 2),  # decoder recompute at TP=2 / PP=2 and tower recompute vs none
    Suite("test_rollout.py", 4),
    Suite("test_decoder_job.py", 2),
    Suite("test_fault_handling.py", 2),  # NaN steps, SIGTERM (kill -9: tests/training/)
    Suite("test_kernels_tp.py", 2),
    Suite("test_kernels_topk_tp.py", 2),
    # The converted thinker at TP=2 / PP=2 vs transformers; the TP=2 model the ranks save is resharded here.
    Suite("test_omni_parallel.py", 2, fixture="omni_parallel_cases"),
    # One process writes the single-process step; two compare TP=2 and PP=2 with it, and resume.
    Suite("test_oppo_step.py", 1, fixture="oppo_work"),
    Suite("test_oppo_step.py", 2, fixture="oppo_reference"),
    Suite("test_opsd_step.py", 1, fixture="opsd_work"),
    Suite("test_opsd_step.py", 2, fixture="opsd_reference"),
]
BY_ID = {suite.id: suite for suite in SUITES}
assert len(BY_ID) == len(SUITES), "entry ids must be unique"


@pytest.fixture(scope="session")
def launch(torchrun):
    """``launch(request, suite)``: the entry's fixture, its torchrun launch and the fixture's check,
    at most once per session; a failed entry fails everything that asks for it again."""
    outcomes: dict[str, Prepared | str] = {}

    def run(request, suite: Suite) -> Prepared:
        selected = {item.callspec.params["suite"].id for item in request.session.items
                    if getattr(item, "originalname", None) == "test_suite" and item.path == Path(__file__)}
        while suite.id not in outcomes and suite.shares_launch:
            # The entries after a failed one did not run: they go again in a launch of their own.
            batch = [s for s in SUITES if s.shares_launch and s.nproc == suite.nproc and s.id not in outcomes
                     and (s.id in selected or s is suite)]
            results = torchrun([f"tests/dist/{s.module}" for s in batch], suite.nproc, timeout=sum(s.timeout for s in batch))
            for s in batch:
                if f"tests/dist/{s.module}" in results:
                    failure = results[f"tests/dist/{s.module}"]
                    outcomes[s.id] = Prepared() if failure is None else f"{s.id}: {failure}"
        if suite.id not in outcomes:
            outcomes[suite.id] = f"{suite.id} failed earlier in this session"
            prepared = request.getfixturevalue(suite.fixture) if suite.fixture else Prepared()
            (failure,) = torchrun([f"tests/dist/{suite.module}"], suite.nproc, timeout=suite.timeout,
                                  extra_env={**suite.env, **prepared.env}).values()
            if failure is not None:
                pytest.fail(failure)
            prepared.check()
            outcomes[suite.id] = prepared
        if isinstance(outcomes[suite.id], str):
            pytest.fail(outcomes[suite.id])
        return outcomes[suite.id]

    return run


@pytest.mark.parametrize("suite", SUITES, ids=lambda suite: suite.id)
def test_suite(suite, request, launch):
    launch(request, suite)


# --- OPPO and OmniOPSD: the single-process step is the reference of the two-process launch ---

@pytest.fixture(scope="session")
def oppo_work(tmp_path_factory) -> Prepared:
    """$OPPO_WORK, shared by the oppo_step launches: x1 writes reference.pt, x2 reads it (and resumes in resume/)."""
    return Prepared({"OPPO_WORK": str(tmp_path_factory.mktemp("oppo_work"))})


@pytest.fixture(scope="session")
def oppo_reference(request, launch) -> Prepared:
    """$OPPO_WORK with the single-process OPPO step in it: the oppo_step-x1 launch."""
    return launch(request, BY_ID["oppo_step-x1"])


@pytest.fixture(scope="session")
def opsd_work(tmp_path_factory) -> Prepared:
    """$OPSD_WORK, shared by the opsd_step launches: x1 writes reference.pt, x2 reads it (and resumes in resume/)."""
    return Prepared({"OPSD_WORK": str(tmp_path_factory.mktemp("opsd_work"))})


@pytest.fixture(scope="session")
def opsd_reference(request, launch) -> Prepared:
    """$OPSD_WORK with the single-process OmniOPSD step in it: the opsd_step-x1 launch."""
    return launch(request, BY_ID["opsd_step-x1"])


# --- omni_parallel: inputs from transformers before the launch, resharding checks after it ---

@pytest.fixture
def omni_parallel_cases(tmp_path):
    """$OMNI_PARALLEL_DIR: the tiny untied and tied thinkers converted HF -> Megatron, and their
    inputs and transformers logits in cases.pt (see tests/dist/test_omni_parallel.py), and the tiny
    MoE thinker converted. The checks: the randomly initialised TP=2 checkpoint the ranks saved
    (fresh_tp2/) converted to HF reproduces the ranks' logits, and back to Megatron, loaded at TP=1,
    gives the very same tensors; the MoE checkpoint the ranks saved at EP=2 converts back to the
    MoE thinker's HF folder bit for bit."""
    import torch
    from moe_helpers import make_hf_moe_thinker
    from omni_helpers import hf_logits, make_batch, make_hf_thinker, save_hf_folder

    from megatron_omni.convert import convert_hf_to_megatron
    from megatron_omni.convert.world import single_process_world
    from megatron_omni.parallel import set_seed

    with single_process_world():  # TP = PP = 1 in this process, for the conversions and the check
        set_seed(1234)
        models, thinkers = {}, {}
        for name, seed, tied in (("untied", 0, False), ("tied", 1, True)):
            thinkers[name] = make_hf_thinker(seed=seed, tie_word_embeddings=tied)
            hf_dir = save_hf_folder(thinkers[name], tmp_path / f"{name}_hf")
            checkpoint = convert_hf_to_megatron(hf_dir, tmp_path / name, log=lambda _: None)
            cases = []
            for use_audio_in_video in (False, True):
                batch = make_batch(thinkers[name], use_audio_in_video)
                cases.append({"inputs": batch.model_inputs(), "expected": hf_logits(thinkers[name], batch),
                              "valid": batch.attention_mask.bool()})
            models[name] = {"checkpoint": checkpoint, "cases": cases}
        # The MoE thinker the ranks also build (moe_helpers, seed 0), converted: loaded at TP=2 and
        # EP=2 there, saved again at EP=2 and checked against this folder by check_moe_ep2_export.
        moe_hf = save_hf_folder(make_hf_moe_thinker(seed=0), tmp_path / "moe_hf")
        models["moe"] = {"checkpoint": convert_hf_to_megatron(moe_hf, tmp_path / "moe", log=lambda _: None)}
        torch.save(models, tmp_path / "cases.pt")

        def check():
            check_tp2_resharding(tmp_path, thinkers["untied"])
            check_moe_ep2_export(tmp_path, moe_hf)

        yield Prepared({"OMNI_PARALLEL_DIR": str(tmp_path)}, check=check)


def check_moe_ep2_export(work: Path, source: Path) -> None:
    """The MoE checkpoint the EP=2 ranks saved (two experts each) -> HF: the source folder's bits."""
    from omni_helpers import assert_bit_identical, read_folder

    from megatron_omni.convert import convert_megatron_to_hf

    out = convert_megatron_to_hf(work / "moe_ep2", work / "moe_ep2_hf", log=lambda _: None)
    assert_bit_identical(read_folder(out), read_folder(source))


def check_tp2_resharding(work: Path, hf_model) -> None:
    import torch
    from omni_helpers import assert_close_on_valid, hf_logits, make_batch
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    from megatron_omni.convert import convert_hf_to_megatron, convert_megatron_to_hf

    # Megatron TP=2 -> HF: transformers reproduces the logits of the TP=2 model.
    hf_dir = convert_megatron_to_hf(work / "fresh_tp2", work / "fresh_hf", log=lambda _: None)
    reloaded = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(hf_dir).eval()
    batch = make_batch(hf_model, use_audio_in_video=False)
    assert_close_on_valid(torch.load(work / "fresh_tp2_logits.pt"), hf_logits(reloaded, batch), batch)

    # HF -> Megatron, loaded at TP=1: every tensor equals the TP=2 checkpoint loaded at TP=1.
    convert_hf_to_megatron(hf_dir, work / "back_tp1", log=lambda _: None)
    original, round_trip = _tp1_state(work / "fresh_tp2"), _tp1_state(work / "back_tp1")
    assert sorted(original) == sorted(round_trip)
    for key, tensor in original.items():
        assert torch.equal(round_trip[key], tensor), key


def _tp1_state(checkpoint: Path) -> dict:
    from megatron_omni.convert import load_model_checkpoint, read_model_config
    from megatron_omni.models.omni import build_omni_model

    spec = read_model_config(checkpoint)
    model = build_omni_model(spec.to_config(), omni=spec.omni, initialize=False)
    load_model_checkpoint(checkpoint, [model])
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
