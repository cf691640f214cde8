"""Rollout generation with megatron's static KV cache: against a no-cache greedy loop, and the
same samples at TP=2, PP=2 and TP=2xPP=2 as in one process. Runs under `torchrun --nproc-per-node 4`
(tests/test_dist_suites.py: rollout-x4)."""
import pytest
import torch
import torch.distributed as dist

from megatron_omni.data.text_corpus import EOS, VOCAB_SIZE
from megatron_omni.generation.generator import Generator, GPTAdapter, SamplingConfig
from megatron_omni.models.decoder import build_decoder, text_position_ids
from megatron_omni.parallel import init_distributed, initialize_parallel, set_seed
from megatron_omni.training.config import RunConfig
from megatron_omni.training.model_setup import build_model_chunks

PROMPT = torch.tensor([list(b"the woman smiles and")])
MAX_NEW = 12


@pytest.fixture(scope="module", autouse=True)
def world():
    init_distributed()
    yield


def build(tp=1, pp=1):
    cfg = RunConfig()
    cfg.model.vocab_size = 512
    cfg.parallel.tensor_model_parallel_size = tp
    cfg.parallel.pipeline_model_parallel_size = pp
    initialize_parallel(tp, pp)
    set_seed(cfg.train.seed)
    (model,) = build_model_chunks(cfg, build_decoder, wrap_ddp=False)
    return cfg, model


def generator(cfg, model):
    return Generator(GPTAdapter(model), vocab_size=VOCAB_SIZE, hidden_size=cfg.model.hidden_size, pad_token_id=EOS)


def positions(length):
    return text_position_ids(torch.zeros(1, length, dtype=torch.long), mrope=True)


def sampled(tp, pp, group=4):
    cfg, model = build(tp, pp)
    sampling = SamplingConfig(max_new_tokens=MAX_NEW, temperature=0.9, top_k=20, top_p=0.9, stop_token_ids=[EOS])
    return generator(cfg, model).generate(PROMPT, positions(PROMPT.shape[1] + MAX_NEW), group, sampling, seed=5)


@torch.no_grad()
def test_kv_cache_greedy_equals_full_forward_loop():
    cfg, model = build()
    out = generator(cfg, model).generate(
        PROMPT, positions(PROMPT.shape[1] + MAX_NEW), 2, SamplingConfig(max_new_tokens=MAX_NEW, greedy=True), seed=0
    )
    model.eval()
    tokens = PROMPT.clone()
    for _ in range(MAX_NEW):
        logits = model(tokens, positions(tokens.shape[1]), None)[:, -1, :VOCAB_SIZE]
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.tokens[0], tokens[0]) and torch.equal(out.tokens[1], tokens[0])
    full = torch.log_softmax(model(tokens, positions(tokens.shape[1]), None)[0, :, :VOCAB_SIZE].float(), -1)
    expected = full[PROMPT.shape[1] - 1 : -1].gather(1, tokens[0, PROMPT.shape[1] :, None]).squeeze(1)
    torch.testing.assert_close(out.logprobs[0], expected, atol=1e-5, rtol=1e-5)
    assert out.completion_mask[:, PROMPT.shape[1] :].all() and not out.completion_mask[:, : PROMPT.shape[1]].any()


def test_sampling_is_layout_independent():
    reference = sampled(1, 1)
    assert len({tuple(t.tolist()) for t in reference.tokens}) > 1, "the group should not collapse to one sample"
    for tp, pp in [(2, 1), (1, 2), (2, 2)]:
        out = sampled(tp, pp)
        assert torch.equal(out.tokens, reference.tokens), (tp, pp)
        assert torch.equal(out.completion_mask, reference.completion_mask)
        torch.testing.assert_close(out.logprobs, reference.logprobs, atol=1e-5, rtol=1e-5)
    assert dist.get_world_size() == 4


def test_stop_token_ends_a_completion():
    cfg, model = build()
    # Every token is a stop token: each completion is exactly one token long.
    out = generator(cfg, model).generate(
        PROMPT, positions(PROMPT.shape[1] + MAX_NEW), 3,
        SamplingConfig(max_new_tokens=MAX_NEW, stop_token_ids=list(range(VOCAB_SIZE))), seed=1,
    )
    assert out.tokens.shape[1] == PROMPT.shape[1] + 1 and out.completion_mask.sum() == 3


@torch.no_grad()
def test_suppressed_tokens_are_never_generated():
    cfg, model = build()
    sampling = SamplingConfig(max_new_tokens=MAX_NEW, temperature=5.0, top_k=0)  # near-uniform sampling
    free = generator(cfg, model).generate(PROMPT, positions(PROMPT.shape[1] + MAX_NEW), 8, sampling, seed=2)
    common = free.tokens[:, PROMPT.shape[1]:].flatten().mode().values.item()  # a token it does pick
    suppressed = list(range(0, VOCAB_SIZE, 2)) + [common]
    out = Generator(GPTAdapter(model), vocab_size=VOCAB_SIZE, hidden_size=cfg.model.hidden_size, pad_token_id=EOS,
                    suppressed_token_ids=suppressed).generate(PROMPT, positions(PROMPT.shape[1] + MAX_NEW), 8, sampling, seed=2)
    generated = out.tokens[:, PROMPT.shape[1]:][out.completion_mask[:, PROMPT.shape[1]:].bool()]
    assert generated.numel() > 0 and not torch.isin(generated, torch.tensor(suppressed)).any()
    greedy = Generator(GPTAdapter(model), vocab_size=VOCAB_SIZE, hidden_size=cfg.model.hidden_size, pad_token_id=EOS,
                       suppressed_token_ids=suppressed).generate(
        PROMPT, positions(PROMPT.shape[1] + MAX_NEW), 1, SamplingConfig(max_new_tokens=MAX_NEW, greedy=True), seed=0)
    assert not torch.isin(greedy.tokens[0, PROMPT.shape[1]:], torch.tensor(suppressed)).any()
