"""Shared by the torchrun suites: full (unsharded) tensors of a parallel model, comparison, and a
stand-in reward for the RL steps."""
import tempfile

import torch
import torch.distributed as dist

from megatron_omni.parallel.param_init import gather_full, global_param_name
from megatron_omni.rewards.cue_recovery import EvidenceSentence
from megatron_omni.text.sentences import split_sentences
from megatron_omni.training.model_setup import unwrap


def full_tensors(chunks, attr: str) -> dict[str, torch.Tensor]:
    """name -> full tensor (``attr`` = "grad" or "data") gathered over TP and PP, on every rank."""
    local = {}
    for chunk in chunks:
        model = unwrap(chunk)
        for name, param in model.named_parameters():
            if attr == "grad":
                value = param.main_grad if hasattr(param, "main_grad") else param.grad
                if value is None:
                    continue
            else:
                value = param.data
            local[global_param_name(model, name)] = gather_full(value.detach().float(), param, name)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    merged = {}
    for part in gathered:
        merged.update(part)
    # The last stage's output layer of a tied model is a copy of the embedding (same grad sum).
    if _tied(chunks):
        for key in [k for k in merged if k.endswith("output_layer.weight")]:
            merged.pop(key)
    return merged


def _tied(chunks) -> bool:
    model = unwrap(chunks[0])
    lm = getattr(model, "language_model", model)
    return bool(getattr(lm, "share_embeddings_and_output_weights", False))


def assert_close_rel(actual: dict, expected: dict, rtol: float):
    assert set(actual) == set(expected), set(actual) ^ set(expected)
    for name, ref in expected.items():
        err = (actual[name] - ref).norm() / ref.norm().clamp(min=1e-30)
        assert err <= rtol, f"{name}: relative error {err:.3e}"


def shared_tmpdir() -> str:
    """A temporary folder made by rank 0 and known to every rank."""
    holder = [tempfile.mkdtemp() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class LetterReward:
    """A small deterministic stand-in with the reward module's interface (the RL equivalence tests
    are about parallelism; the real reward is covered in tests/rewards): rewards completions for
    the letter 'a'; sentences alternate visual / audio evidence."""

    def compute(self, completions, samples):
        total = torch.tensor([t.count("a") / max(1, len(t)) for t in completions])
        return {"total": total, "ew": total, "format": torch.zeros_like(total)}

    def evidence_sentences(self, completion, sample):
        kinds = ("visual", "audio", "neutral")
        return [EvidenceSentence(s.start, s.end, kinds[i % 3]) for i, s in enumerate(split_sentences(completion))]
