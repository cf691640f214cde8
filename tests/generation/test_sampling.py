"""The Gumbel-max sampler against the distribution it must draw from: softmax(logits / T) over
the top-k set, then the top-p nucleus of it, computed here by sorting the whole row."""
import pytest
import torch

from megatron_omni.generation.sampling import SamplingConfig, VocabShard, choose_tokens, gumbel_noise, row_keys

V = 12
ROWS = 20_000


def reference_probs(logits: torch.Tensor, cfg: SamplingConfig, suppressed: list[int]) -> torch.Tensor:
    z = logits.clone() / cfg.temperature
    z[suppressed] = float("-inf")
    order = torch.argsort(z, descending=True)
    keep = torch.zeros(V, dtype=torch.bool)
    k = cfg.top_k or V
    keep[order[:k]] = True
    probs = torch.softmax(z.masked_fill(~keep, float("-inf")), -1)
    before = torch.cumsum(probs[order], 0) - probs[order]
    keep[order[before >= cfg.top_p]] = False
    return torch.softmax(z.masked_fill(~keep, float("-inf")), -1)


@pytest.mark.parametrize("cfg", [
    SamplingConfig(temperature=1.0, top_k=0, top_p=1.0),
    SamplingConfig(temperature=0.6, top_k=5, top_p=1.0),
    SamplingConfig(temperature=1.4, top_k=0, top_p=0.7),
    SamplingConfig(temperature=0.9, top_k=6, top_p=0.8),
], ids=["plain", "topk", "topp", "topk-topp"])
def test_sampled_frequencies_follow_the_filtered_softmax(cfg):
    logits = torch.randn(V, generator=torch.Generator().manual_seed(0)) * 1.5
    suppressed = [3]
    expected = reference_probs(logits, cfg, suppressed)
    tokens, logprobs = choose_tokens(logits.expand(ROWS, V), VocabShard(0, V, V), cfg, row_keys(list(range(ROWS)), "cpu"),
                                     step=2, suppressed=torch.tensor(suppressed))
    frequencies = torch.bincount(tokens, minlength=V).float() / ROWS
    assert frequencies[expected == 0].sum() == 0  # nothing outside the top-k / top-p set, nothing suppressed
    # Binomial standard error at 20k draws is at most 0.0036: 4 sigma.
    torch.testing.assert_close(frequencies, expected, atol=0.015, rtol=0)
    torch.testing.assert_close(logprobs, torch.log_softmax(logits, -1)[tokens])


def test_noise_is_a_function_of_key_step_and_vocabulary_id():
    keys = row_keys([0, 1, 2**40 + 7], "cpu")
    columns = torch.arange(50, 150)
    noise = gumbel_noise(keys, 3, columns)
    assert torch.equal(noise[:, 10:20], gumbel_noise(keys, 3, columns[10:20]))  # a shard draws its own columns
    assert not torch.equal(noise, gumbel_noise(keys, 4, columns))
    assert len({tuple(row.tolist()) for row in noise}) == 3
    # Gumbel(0, 1): mean 0.5772, variance pi^2 / 6
    many = gumbel_noise(row_keys(list(range(200)), "cpu"), 0, torch.arange(500))
    assert abs(many.mean().item() - 0.5772) < 0.02 and abs(many.var().item() - 1.6449) < 0.05
