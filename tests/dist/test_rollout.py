"""The rollout engine (its own KV cache in megatron's attention modules): prompts of different lengths decoded in one
batch against a no-cache greedy loop per prompt, stop tokens, suppressed tokens, and the same
samples at TP=2, PP=2 and TP=2xPP=2 as in one process, whatever else is in the batch. Runs under
`torchrun --nproc-per-node 4` (tests/test_dist_suites.py: rollout-x4)."""
import dataclasses

import pytest
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_omni.data.text_corpus import EOS, VOCAB_SIZE
from megatron_omni.generation.generator import Generator, GPTAdapter, Prompt, SamplingConfig
from megatron_omni.generation.sampling import VocabShard, choose_tokens, row_keys
from megatron_omni.models.decoder import build_decoder, text_position_ids
from megatron_omni.parallel import init_distributed, initialize_parallel, set_seed
from megatron_omni.training.config import RunConfig
from megatron_omni.training.model_setup import build_model_chunks

TEXTS = [b"the woman smiles and", b"a man", b"they shout at each other in the rain"]
MAX_NEW = 12
SAMPLING = SamplingConfig(max_new_tokens=MAX_NEW, temperature=0.9, top_k=20, top_p=0.9, stop_token_ids=[EOS])


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


def generator(cfg, model, suppressed=()):
    return Generator(GPTAdapter(model), vocab_size=VOCAB_SIZE, hidden_size=cfg.model.hidden_size, pad_token_id=EOS,
                     suppressed_token_ids=suppressed)


def positions(length):
    return text_position_ids(torch.zeros(1, length, dtype=torch.long), mrope=True)


def prompts(texts=TEXTS, seeds=(5, 6, 7)):
    return [Prompt(torch.tensor(list(t)), positions(len(t) + MAX_NEW)[:, 0], seed) for t, seed in zip(texts, seeds)]


@torch.no_grad()
def greedy_loop(model, text: bytes, stops=()) -> tuple[list[int], torch.Tensor]:
    """The no-cache oracle: full forwards, argmax, until a stop token; and its log-probs."""
    model.eval()
    tokens = torch.tensor([list(text)])
    for _ in range(MAX_NEW):
        logits = model(tokens, positions(tokens.shape[1]), None)[:, -1, :VOCAB_SIZE]
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
        if tokens[0, -1].item() in stops:
            break
    return tokens[0, len(text):].tolist(), completion_logprobs(model, text, tokens[0, len(text):].tolist())


@torch.no_grad()
def completion_logprobs(model, text: bytes, completion: list[int]) -> torch.Tensor:
    """log softmax over the real vocabulary at temperature 1 of each completion token (full forward)."""
    model.eval()
    tokens = torch.tensor([list(text) + completion])
    full = torch.log_softmax(model(tokens, positions(tokens.shape[1]), None)[0, :, :VOCAB_SIZE].float(), -1)
    return full[len(text) - 1 : -1].gather(1, tokens[0, len(text):, None]).squeeze(1)


@torch.no_grad()
def test_batched_greedy_equals_no_cache_loop_per_prompt():
    cfg, model = build()
    gen = generator(cfg, model)
    greedy = SamplingConfig(max_new_tokens=MAX_NEW, greedy=True)
    out = gen.generate(prompts(), 2, greedy)
    for i, text in enumerate(TEXTS):
        expected, logprobs = greedy_loop(model, text)
        alone = gen.generate(prompts([text]), 1, greedy)
        assert out.completions[i] == [expected, expected] and alone.completions[0] == [expected], i
        for row in out.logprobs[i] + alone.logprobs[0]:
            assert row.dtype == torch.float32 and row.device.type == "cpu"
            torch.testing.assert_close(row, logprobs, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_engine_forwards_run_without_the_cpu_mode_and_with_the_linears_bit_equal():
    """The engine's decode forwards run outside the CPU compatibility layer's TorchFunctionMode,
    and its direct calls of megatron's linear layers give the logits of their own forward bit for
    bit, at TP=1 and TP=2 (the row-parallel all-reduce)."""
    from megatron_omni.generation.generator import _direct_linears

    for tp in (1, 2):
        cfg, model = build(tp)
        model.eval()
        tokens = torch.tensor([list(TEXTS[2])])
        logits = model(tokens, positions(tokens.shape[1]), None)
        with _direct_linears(model):
            assert torch.equal(model(tokens, positions(tokens.shape[1]), None), logits), tp
        assert "forward" not in vars(model.decoder.layers[0].mlp.linear_fc1)  # megatron's forward is back
    assert torch.overrides._get_current_function_mode() is not None  # the layer's mode, outside the engine
    modes = []
    hook = model.register_forward_pre_hook(lambda *_: modes.append(torch.overrides._get_current_function_mode()))
    try:
        generator(cfg, model).generate(prompts(), 2, SAMPLING)
    finally:
        hook.remove()
    assert len(modes) > len(TEXTS) and set(modes) == {None}, modes


@torch.no_grad()
def test_completions_end_at_their_first_stop_token():
    """With stop tokens each completion is the stop-free one cut after its first stop token: the
    rows that finish early leave the batch (it compacts) without changing the others."""
    cfg, model = build()
    gen = generator(cfg, model)
    free = gen.generate(prompts(), 4, SamplingConfig(max_new_tokens=MAX_NEW, temperature=0.9, top_k=20, top_p=0.9))
    stops = [free.completions[0][0][2], free.completions[1][1][5], free.completions[2][3][8]]
    out = gen.generate(prompts(), 4, SamplingConfig(max_new_tokens=MAX_NEW, temperature=0.9, top_k=20, top_p=0.9,
                                                    stop_token_ids=stops))
    lengths = set()
    for rows, free_rows, logprobs, free_logprobs in zip(out.completions, free.completions, out.logprobs, free.logprobs):
        for row, free_row, logprob, free_logprob in zip(rows, free_rows, logprobs, free_logprobs):
            cut = next((t + 1 for t, token in enumerate(free_row) if token in stops), MAX_NEW)
            assert row == free_row[:cut]
            torch.testing.assert_close(logprob, free_logprob[:cut], atol=1e-5, rtol=1e-5)
            lengths.add(cut)
    assert len(lengths) > 2 and min(lengths) < MAX_NEW / 2, lengths


def sampled(tp, pp):
    cfg, model = build(tp, pp)
    return generator(cfg, model).generate(prompts(), 4, SAMPLING)


def test_sampling_is_layout_batch_and_resume_independent():
    reference = sampled(1, 1)
    assert len({tuple(c) for c in reference.completions[0]}) > 1, "the group should not collapse to one sample"
    _, model = build()
    for text, completions, logprobs in zip(TEXTS, reference.completions, reference.logprobs):
        for completion, logprob in zip(completions, logprobs):
            assert completion[-1] == EOS or len(completion) == MAX_NEW
            # Temperature 1, unfiltered: the trainer's log-probs of the same tokens.
            torch.testing.assert_close(logprob, completion_logprobs(model, text, completion), atol=1e-5, rtol=1e-5)
    # A resumed run: a fresh generator, other global RNG state, the prompt in another batch.
    torch.manual_seed(123)
    torch.rand(10)
    cfg, model = build()
    resumed = generator(cfg, model).generate(prompts(TEXTS[1:2], seeds=(6,)), 4, SAMPLING)
    assert resumed.completions[0] == reference.completions[1]
    # A bound on the rows decoded together (4: one prompt per decode; 8: two prompts, then one):
    # the same completions and log-probs.
    for rows in (4, 8):
        split = generator(cfg, model).generate(prompts(), 4, dataclasses.replace(SAMPLING, max_decode_rows=rows))
        assert split.completions == reference.completions, rows
        for got, want in zip(split.logprobs, reference.logprobs):
            for row, expected in zip(got, want):
                torch.testing.assert_close(row, expected, atol=1e-5, rtol=1e-5)
    for tp, pp in [(2, 1), (1, 2), (2, 2)]:
        out = sampled(tp, pp)
        assert out.completions == reference.completions, (tp, pp)
        for rows, expected in zip(out.logprobs, reference.logprobs):
            for row, want in zip(rows, expected):
                torch.testing.assert_close(row, want, atol=1e-5, rtol=1e-5)
    assert dist.get_world_size() == 4


@pytest.mark.parametrize("cfg", [
    SamplingConfig(temperature=0.7, top_k=5, top_p=0.8),
    SamplingConfig(temperature=1.3, top_k=0, top_p=0.6),  # top-p alone gathers the sorted shard values
    SamplingConfig(temperature=1.0, top_k=0, top_p=1.0),
    SamplingConfig(greedy=True),
], ids=["topk-topp", "topp", "plain", "greedy"])
def test_vocab_parallel_choice_equals_one_rank(cfg):
    """TP=2 shards (the last one with padding columns) choose what one rank chooses from the full row."""
    initialize_parallel(2, 1)
    group, rank = parallel_state.get_tensor_model_parallel_group(), parallel_state.get_tensor_model_parallel_rank()
    vocab, padded = 37, 40
    logits = torch.randn(64, padded, generator=torch.Generator().manual_seed(3)) * 3
    logits[:8, 5] = logits[:8, 25] = logits[:8].max() + 1  # equal maxima on both shards: the lower id wins
    keys, suppressed = row_keys(list(range(64)), "cpu"), torch.tensor([7, 30])
    one = choose_tokens(logits, VocabShard(0, padded, vocab), cfg, keys, 4, suppressed)
    width = padded // 2
    two = choose_tokens(logits[:, rank * width : (rank + 1) * width], VocabShard(rank * width, width, vocab, group),
                        cfg, keys, 4, suppressed)
    assert torch.equal(two[0], one[0])
    torch.testing.assert_close(two[1], one[1], atol=1e-6, rtol=1e-6)  # the normaliser sums in another order
    assert not torch.isin(one[0], suppressed).any() and int(one[0].max()) < vocab
    torch.testing.assert_close(one[1], torch.log_softmax(logits[:, :vocab], -1).gather(1, one[0][:, None])[:, 0])
    if cfg.greedy:
        assert (one[0][:8] == 5).all()


@torch.no_grad()
def test_suppressed_tokens_are_never_generated():
    cfg, model = build()
    sampling = SamplingConfig(max_new_tokens=MAX_NEW, temperature=5.0, top_k=0)  # near-uniform sampling
    free = generator(cfg, model).generate(prompts(), 8, sampling)
    picked = torch.tensor([t for rows in free.completions for row in rows for t in row])
    common = picked.mode().values.item()  # a token it does pick
    suppressed = list(range(0, VOCAB_SIZE, 2)) + [common]
    for mode in (sampling, SamplingConfig(max_new_tokens=MAX_NEW, greedy=True)):
        out = generator(cfg, model, suppressed).generate(prompts(), 8, mode)
        generated = torch.tensor([t for rows in out.completions for row in rows for t in row])
        assert generated.numel() > 0 and not torch.isin(generated, torch.tensor(suppressed)).any()


@torch.no_grad()
def test_evaluation_answers_split_over_data_parallel_ranks_equal_one_at_a_time():
    """OmniAnswerer at DP=4: a call's samples decoded together, a quarter on each rank and
    gathered, equal each sample answered alone (one rank's replica, the others idle), masked or not."""
    from pathlib import Path

    from megatron_omni.config import load_config
    from megatron_omni.runs.config import OmniTrainConfig
    from megatron_omni.runs.omni import answerer_for, prepare_model, resolve_dataset

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "examples/configs/toy_oppo.yaml", [
        "parallel.tensor_model_parallel_size=1", "init_from=null", f"dataset.toy_dir={repo / 'data_toy'}",
        "model.num_layers=2", "evaluation.max_new_tokens=8"], cls=OmniTrainConfig)
    resolve_dataset(cfg)
    tokenizer, processor, chunks = prepare_model(cfg, wrap_ddp=False)
    assert parallel_state.get_data_parallel_world_size() == 4
    for name, param in chunks[0].named_parameters():  # a freshly initialised decoder answers every prompt alike
        if name.startswith("language_model.decoder") and param.dim() == 2:
            param.data.mul_(8.0)
    answerer = answerer_for(cfg, chunks, tokenizer, processor, cfg.dataset.test_manifest)
    records = [s.to_record() for s in answerer.prompts.samples[:5]]
    for masked in (None, "audio"):
        together = answerer(records, mask_modality=masked)
        alone = [answerer([record], mask_modality=masked)[0] for record in records]
        assert together == alone and all(isinstance(text, str) for text in together), masked
    assert len(set(together)) > 1
    # The skip share is judged over every replica's samples: each rank counts all of them.
    assert (answerer.source.total_seen, answerer.source.total_skipped) == (2 * 2 * len(records), 0)


def build_moe(tp=1, pp=1, ep=1):
    """A MoE decoder (4 experts, top-2) whose experts split over ``ep`` ranks (at TP > 1 for
    generation only: megatron's MoE layer trains at TP > 1 only with sequence parallelism)."""
    cfg = RunConfig()
    cfg.model.vocab_size = 512
    cfg.model.family = "qwen3_omni_moe"
    cfg.model.num_moe_experts, cfg.model.moe_ffn_hidden_size, cfg.model.moe_router_topk = 4, 64, 2
    cfg.model.moe_norm_topk_prob, cfg.model.moe_aux_loss_coeff = True, 0.0
    cfg.parallel.tensor_model_parallel_size = tp
    cfg.parallel.pipeline_model_parallel_size = pp
    cfg.parallel.expert_model_parallel_size = ep
    initialize_parallel(tp, pp, expert_model_parallel_size=ep)
    set_seed(cfg.train.seed)
    (model,) = build_model_chunks(cfg, build_decoder, wrap_ddp=False)
    return cfg, model


@torch.no_grad()
def test_expert_parallel_ranks_decode_in_step():
    """EP=2, EP=2 x PP=2 and EP=2 x TP=2: the data-parallel ranks of an expert group hold different
    numbers of prompts (one rank none) of different lengths, whose rows stop at different steps (a
    stop token every seventh id); every rank gets what it samples alone at EP=1."""
    sampling = dataclasses.replace(SAMPLING, stop_token_ids=[EOS, *range(0, 256, 7)])
    mine = [[0, 1, 2], [1], [], [2, 0]]  # prompts of each data-parallel rank at DP=4 (at DP=2: the first and third)
    for tp, pp, ep in [(1, 1, 2), (1, 2, 2), (2, 1, 2)]:
        cfg, model = build_moe(tp, pp, ep)
        dp_size, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
        chosen = mine[dp_rank * 4 // dp_size]
        texts, seeds = [TEXTS[i] for i in chosen], [5 + i for i in chosen]
        out = generator(cfg, model).generate(prompts(texts, seeds), 3, sampling)
        cfg, model = build_moe()
        alone = generator(cfg, model).generate(prompts(texts, seeds), 3, sampling)
        assert out.completions == alone.completions, (tp, pp, ep, dp_rank)
        for rows, expected in zip(out.logprobs, alone.logprobs):
            for row, want in zip(rows, expected):
                torch.testing.assert_close(row, want, atol=1e-5, rtol=1e-5)
        lengths = [None] * dist.get_world_size()
        dist.all_gather_object(lengths, [len(c) for rows in out.completions for c in rows])
        assert len({n for part in lengths for n in part}) > 2 and [] in lengths, lengths
