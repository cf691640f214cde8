"""Which samples an SFT data set shows with their rationale (sft.privileged_fraction)."""
from types import SimpleNamespace

from megatron_omni.data.dataset import OmniDataset


def test_privileged_share_is_a_fixed_subset_by_sample_id():
    samples = [SimpleNamespace(id=f"clip_{i:04d}") for i in range(400)]

    def chosen(share):
        return {s.id for s in samples if OmniDataset(samples, None, privileged=share).is_privileged(s)}

    assert chosen(0.0) == set() and len(chosen(1.0)) == 400 and len(chosen(True)) == 400
    half = chosen(0.5)
    assert 160 < len(half) < 240
    assert half == chosen(0.5)  # the same in every epoch and on every rank
    assert chosen(0.25) <= half  # a larger share only adds samples
