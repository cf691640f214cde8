"""Sampler and loader: data-parallel shards, epoch shuffles, and exact resumption mid-epoch."""
from __future__ import annotations

import pytest
import torch

from megatron_omni.data.dataset import Collator, OmniDataset
from megatron_omni.data.loader import OmniLoader
from megatron_omni.data.processor import OmniProcessor
from megatron_omni.data.sampler import ResumableBatchSampler
from megatron_omni.data.toy import toy_data_config


def test_data_parallel_shards_cover_each_global_batch_once():
    samplers = [ResumableBatchSampler(40, 8, dp_rank=r, dp_size=2, seed=5) for r in range(2)]
    single = ResumableBatchSampler(40, 8, seed=5)
    for _ in range(12):  # 2.4 epochs
        shards = [s.next_indices() for s in samplers]
        whole = single.next_indices()
        assert len(shards[0]) == len(shards[1]) == 4
        assert shards[0] + shards[1] == whole


def test_each_epoch_is_a_new_permutation():
    sampler = ResumableBatchSampler(12, 4, seed=1)
    epochs = [[i for _ in range(3) for i in sampler.next_indices()] for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(12))
    assert epochs[0] != epochs[1] != epochs[2]
    again = ResumableBatchSampler(12, 4, seed=1)
    assert [i for _ in range(3) for i in again.next_indices()] == epochs[0]


def test_state_is_global_so_the_data_parallel_size_may_change():
    """A run resumed with another DP size continues with the same unseen samples."""
    before = ResumableBatchSampler(40, 8, dp_rank=0, dp_size=4, seed=2)
    for _ in range(3):
        before.next_indices()
    after = [ResumableBatchSampler(40, 8, dp_rank=r, dp_size=2, seed=2) for r in range(2)]
    for sampler in after:
        sampler.load_state_dict(before.state_dict())
    reference = ResumableBatchSampler(40, 8, seed=2)
    reference.load_state_dict(before.state_dict())
    assert after[0].next_indices() + after[1].next_indices() == reference.next_indices()


def test_state_of_another_data_set_is_refused():
    sampler = ResumableBatchSampler(40, 8, seed=2)
    with pytest.raises(ValueError, match="data set or seed changed"):
        sampler.load_state_dict({"consumed_samples": 8, "seed": 2, "num_samples": 41})


@pytest.fixture(scope="module")
def dataset(toy_set, toy_tokenizer):
    return OmniDataset.from_manifest(toy_set.train_manifest, OmniProcessor(toy_tokenizer, toy_data_config()))


def _loader(dataset, workers):
    sampler = ResumableBatchSampler(len(dataset), global_batch_size=4, dp_rank=1, dp_size=2, seed=9)
    collator = Collator(pad_token_id=dataset.processor.token_ids.pad_token_id)
    return OmniLoader(dataset, sampler, micro_batch_size=1, collator=collator, num_workers=workers)


def _signature(steps):
    return [[(b.sample_ids, b.tokens.sum().item(), b.pixel_values_videos.sum().item()) for b in step] for step in steps]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_sees_the_same_batches(dataset, workers):
    """Steps 3-5 after a checkpoint at step 2 equal steps 3-5 of an uninterrupted run (the 9-sample
    set has 2 steps per epoch, so the run crosses epoch boundaries), however far workers prefetched."""
    uninterrupted = _loader(dataset, workers)
    reference = [uninterrupted.next_step() for _ in range(5)]
    interrupted = _loader(dataset, workers)
    for _ in range(2):
        interrupted.next_step()
    state = interrupted.state_dict()
    assert state["consumed_samples"] == 2 * 4
    resumed = _loader(dataset, workers)
    resumed.load_state_dict(state)
    assert _signature([resumed.next_step() for _ in range(3)]) == _signature(reference[2:])
    assert all(len(step) == 2 for step in reference)  # 4 samples / 2 ranks / micro-batch 1


def test_loader_from_config(toy_set, toy_tokenizer):
    processor = OmniProcessor(toy_tokenizer, toy_data_config(packing=True, pad_to_multiple_of=64))
    dataset = OmniDataset.from_manifest(toy_set.train_manifest, processor)
    loader = OmniLoader.from_config(dataset, ResumableBatchSampler(len(dataset), 4, seed=0), micro_batch_size=2)
    step = loader.next_step()
    assert len(step) == 2
    for batch in step:
        assert batch.packed and batch.tokens.shape[0] == 1 and batch.tokens.shape[1] % 64 == 0
        assert torch.equal(batch.cu_seqlens[-1:], torch.tensor([batch.tokens.shape[1]], dtype=torch.int32))
