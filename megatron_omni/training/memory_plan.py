"""Per-GPU peak memory of a run, by component, from its config alone (tools/plan_memory.py).

Pure arithmetic: nothing is built except the towers on the meta device (their parameter counts).
The worst pipeline stage is planned: the first holds the embedding, the towers and the most
in-flight micro-batches under 1F1B; the last the output layer, the logits, the loss path's buffers
and the scoring stores. Both are planned and the larger total kept (at TP = 1 the last stage's
[T, V] logits outweigh the first stage's towers). With PP = 1 they are one stage.

The peak is the persistent state (weights, gradients, optimizer states, frozen copies kept on the
device) plus the largest of the step's phases:
  rollout   the engine's KV cache of the rows decoded together (a rank's prompts, or
            sampling.max_decode_rows of them, x G) and a decode step's last-token logits
  scoring   one no-grad micro-batch forward (reference / masked / up-front teacher) and the
            stores kept until the losses read them
  training  activations of the in-flight micro-batches, the loss path's logit-sized buffers, the
            stores of the micro-batches whose loss has not run yet, the interleaved teacher
The stores are those of docs/PERFORMANCE.md "Scoring stores": OPPO's masked-modality logits only
at each modality's evidence rows ([n_evidence, V/TP], model dtype), the reference log-probs only at
completion tokens (fp32), OmniOPSD's teacher logits at completion rows ([n, V/TP], model dtype).

Activations per layer and micro-batch, in elements of the model dtype, for T = b*s tokens, hidden
h, FFN f (SwiGLU: fc1 gives 2f), a heads, g query groups of d channels, TP t, no sequence
parallelism (Korthikanti et al.'s sbh(34 + 5as/h), re-derived for RMSNorm, GQA and SwiGLU):
  T*4h                       replicated: both norms' inputs, the QKV and fc1 inputs
  T*(2h + 2gd + 2h + 3f)/t   sharded: q and the attention output, k and v, megatron's local core
                             attention's head-expanded k and v (GQA), fc1's output and fc2's input
  a/t * s * T                the softmax probabilities (local spec; Transformer Engine's fused
                             attention keeps only its output and row statistics)
Selective recompute drops the probabilities and the expanded k, v (core attention runs again);
full recompute keeps a unit's input (T*h) and, in the backward, one unit's full activations.
Attention widths are a*d (q) and g*d (k, v), so a head width other than h / a (Qwen3) counts.
Sequence parallelism divides the replicated terms (and the stage input) by t.

A MoE layer (Qwen3-Omni) replaces the dense MLP: its experts' parameters are split over EP x TP
ranks (expert TP = TP), their Adam states over the expert-data-parallel group DP / EP, so a fully
sharded expert state is the same per GPU at any EP; its activations (derived, not measured) are,
per token, k x 3f/t for the top-k experts' fc1 output and fc2 input, k x 2h whole for the permuted
expert inputs and the outputs the combine weighs (the dispatcher hands each rank about T x k
routed tokens when the load is balanced), and 2E for the router's logits and probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from megatron_omni.config import ConfigError
from megatron_omni.models.config import ModelConfig, PrecisionConfig, RecomputeConfig
from megatron_omni.models.decoder import padded_vocab_size
from megatron_omni.parallel.config import ParallelConfig

_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Logit-sized [T, V/TP] buffers live at the peak of each loss path, the logits included, in fp32
# units: measured on CPU (fp32) toy runs at vocabulary 32000 (tests/training/test_memory_plan.py),
# not derived. SFT: megatron's cross entropy works in place on the logits; OmniOPSD: the fused KL
# kernels' fp32 softmax beside the logits and their gradient; OPPO: log-prob / entropy and the
# evidence KL kernels' buffers on top. On a GPU the logits themselves are in the model dtype.
LOSS_LOGIT_BUFFERS = {"sft": 1.5, "oppo": 3.5, "opsd": 2.25}


class PlannedRun(Protocol):
    """What the planner reads of an omni run's config (runs.config.OmniTrainConfig)."""

    algorithm: str
    model: ModelConfig
    parallel: ParallelConfig
    precision: PrecisionConfig
    recompute: RecomputeConfig


@dataclass
class Plan:
    """Bytes per GPU of the worst stage, by component and phase."""

    layout: str
    stage: str = "only"  # which pipeline stage: "only" at PP = 1
    persistent: dict[str, float] = field(default_factory=dict)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    activations_without_recompute: float = 0.0

    @property
    def step_peak(self) -> float:
        """The most the step adds on top of the persistent state (what a pre-step measurement sees)."""
        return max(sum(parts.values()) for parts in self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda name: sum(self.phases[name].values()))

    @property
    def total(self) -> float:
        return sum(self.persistent.values()) + self.step_peak


def decoder_layer_params(m: ModelConfig) -> tuple[int, int]:
    """(dense, expert) parameters of one decoder layer: attention (q/k norms for Qwen3), the two
    norms and the dense SwiGLU MLP or the router; the experts' SwiGLU MLPs apart."""
    h, g, d = m.hidden_size, m.num_query_groups, m.head_dim
    q, kv = m.num_attention_heads * d, g * d
    attention = h * (q + 2 * kv) + (q + 2 * kv if m.add_qkv_bias else 0) + q * h + (2 * d if m.qk_layernorm else 0)
    if not m.num_moe_experts:
        return attention + 2 * h + 3 * h * m.ffn_hidden_size, 0
    return attention + 2 * h + m.num_moe_experts * h, m.num_moe_experts * 3 * h * m.moe_ffn_hidden_size


def decoder_params(m: ModelConfig) -> tuple[int, int]:
    """(total, active per token) parameters of the decoder: the embedding and output layer, every
    layer's dense part, and all experts (total) or the top-k experts a token runs (active)."""
    dense, experts = decoder_layer_params(m)
    tables = m.vocab_size * m.hidden_size * (1 if m.tie_word_embeddings else 2) + m.hidden_size
    active = experts * m.moe_router_topk // m.num_moe_experts if m.num_moe_experts else 0
    return tables + m.num_layers * (dense + experts), tables + m.num_layers * (dense + active)


def tower_params(omni, family: str) -> dict[str, int]:
    """Parameter counts of the model family's vision and audio towers, built on the meta device."""
    import torch

    from megatron_omni.models.encoders import build_audio_encoder, build_vision_encoder

    attn = omni.encoder_attn_implementation
    with torch.device("meta"):
        vision = build_vision_encoder(omni.vision, torch.float32, attn, initialize=False, family=family)
        audio = build_audio_encoder(omni.audio, torch.float32, attn, initialize=False, family=family)
    return {"vision": sum(p.numel() for p in vision.parameters()), "audio": sum(p.numel() for p in audio.parameters())}


def _rl(cfg) -> tuple[int, int, int]:
    """(completions per prompt, prompt tokens at most, completion tokens at most) of an RL run."""
    section = cfg.oppo if cfg.algorithm == "oppo" else cfg.opsd
    group = section.grpo.group_size if cfg.algorithm == "oppo" else section.group_size
    new = section.sampling.max_new_tokens
    return group, cfg.train.seq_length - new, new


def _decode_rows(cfg, group: int, dp: int) -> int:
    """Rows the rollout engine decodes together: a data-parallel rank's prompts of a step, at most
    ``sampling.max_decode_rows // G`` of them (one at least), x G."""
    section = cfg.oppo if cfg.algorithm == "oppo" else cfg.opsd
    prompts = max(1, cfg.train.global_batch_size // dp)
    bound = section.sampling.max_decode_rows
    return group * (prompts if bound is None else min(prompts, max(1, bound // group)))


def layer_activation_elements(m: ModelConfig, tokens: int, seq: int, tp: int, core_attention: bool,
                              fused_attention: bool, sequence_parallel: bool = False) -> float:
    """Elements one layer keeps for its backward (see the module docstring)."""
    h, g, d, a = m.hidden_size, m.num_query_groups, m.head_dim, m.num_attention_heads
    q = a * d
    attention = 2 * q + 2 * g * d + (0 if fused_attention or not core_attention else 2 * q)
    if m.num_moe_experts:
        # Every token runs top-k experts: the permuted expert inputs and the expert outputs the
        # combine weighs (k x h each, whole on every rank), fc1's output and fc2's input (3f of
        # an expert, sharded over TP), the router's logits and probabilities (2E).
        k = m.moe_router_topk
        mlp_sharded, mlp_whole = k * 3 * m.moe_ffn_hidden_size, k * 2 * h + 2 * m.num_moe_experts
    else:
        mlp_sharded, mlp_whole = 3 * m.ffn_hidden_size, 0
    replicated = 4 * h / (tp if sequence_parallel else 1)
    probs = 0 if fused_attention or not core_attention else a * seq * tokens / tp
    return tokens * (replicated + mlp_whole) + tokens * (attention + mlp_sharded) / tp + probs


def activation_bytes(m: ModelConfig, rc: RecomputeConfig | None, layers: int, tokens: int, seq: int, tp: int,
                     width: int, fused_attention: bool, sequence_parallel: bool = False) -> float:
    """Activations of one micro-batch on a stage of ``layers`` layers (``width`` bytes an element)."""
    full = layer_activation_elements(m, tokens, seq, tp, True, fused_attention, sequence_parallel)
    if rc is None or rc.granularity is None:
        return width * layers * full
    if rc.granularity == "selective":
        return width * layers * layer_activation_elements(m, tokens, seq, tp, False, fused_attention, sequence_parallel)
    unit_input = tokens * m.hidden_size / (tp if sequence_parallel else 1)
    if rc.method == "uniform":
        # Every unit keeps its input; the backward rebuilds one unit's activations at a time.
        return width * (layers / rc.num_layers * unit_input + rc.num_layers * full)
    kept = layers - rc.num_layers  # block: the first num_layers layers are recomputed one at a time
    return width * (rc.num_layers * unit_input + kept * full + (full if rc.num_layers else 0))


def tower_activation_bytes(omni, recompute: bool, placeholders: int, width: int) -> float:
    """Activations of the trainable towers for ``placeholders`` media tokens of a micro-batch, at
    most: all of them one tower's (vision: 4 patches a merged token, audio: 2 frames a token).
    Per block and token: both norms' inputs, q, k, v, the attention output, the MLP's input and
    its gated (vision) or plain (audio) hidden; recompute keeps a block's input and one block."""
    v, a = omni.vision, omni.audio
    out = 0.0
    for frozen, tokens, depth, hidden, ffn, gated in (
        (omni.freeze_vision, 4 * placeholders, v.depth, v.hidden_size, v.intermediate_size, True),
        (omni.freeze_audio, 2 * placeholders, a.encoder_layers, a.d_model, a.encoder_ffn_dim, False),
    ):
        if frozen:
            continue  # no parameter and no input needs a gradient: autograd keeps nothing
        block = tokens * (7 * hidden + (3 if gated else 2) * ffn)
        out = max(out, width * (depth * tokens * hidden + block if recompute else depth * block))
    return out


def plan_memory(cfg: PlannedRun, world_size: int, cpu: bool = False, evidence_fraction: float = 1.0) -> Plan:
    """The plan of ``cfg`` on ``world_size`` GPUs (or CPU processes with ``cpu``). At PP > 1 the first
    and the last pipeline stage are planned and the larger returned, the other's total in a note: a
    middle stage holds the first one's layers and no more micro-batches, without its embedding and towers."""
    pp = cfg.parallel.pipeline_model_parallel_size
    towers = tower_params(cfg.omni, cfg.model.family)
    if pp == 1:
        return _plan_stage(cfg, world_size, cpu, evidence_fraction, towers, rank=0)
    first, last = (_plan_stage(cfg, world_size, cpu, evidence_fraction, towers, rank) for rank in (0, pp - 1))
    worst, other = (first, last) if first.total >= last.total else (last, first)
    worst.notes.insert(0, f"worst stage: the {worst.stage}; the {other.stage} plans {other.total / 2**30:.2f} GiB")
    return worst


def _plan_stage(cfg: PlannedRun, world_size: int, cpu: bool, evidence_fraction: float, towers: dict[str, int],
                rank: int) -> Plan:
    """The plan of pipeline rank ``rank``: the first holds the embedding and the towers, the last the
    output layer, the logits and what is stored from them."""
    m, p, prec, t = cfg.model, cfg.parallel, cfg.precision, cfg.train
    tp, pp, vpp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.virtual_pipeline_model_parallel_size
    ep, sp = p.expert_model_parallel_size, p.sequence_parallel
    dp = max(world_size // (tp * pp), 1)
    # Experts are split over EP x TP ranks (expert TP = TP); their data-parallel group is what is left.
    expert_dp = max(dp // ep, 1)
    width = 4 if cpu else _BYTES[prec.params_dtype]
    mixed = width < 4
    fused_attention = not cpu and prec.transformer_engine
    vocab = padded_vocab_size(m, tp)
    h, layers = m.hidden_size, m.num_layers // pp
    algorithm = cfg.algorithm
    is_first, is_last = rank == 0, rank == pp - 1
    microbatches = t.global_batch_size // (t.micro_batch_size * dp)
    if not microbatches:
        raise ConfigError(f"train.global_batch_size ({t.global_batch_size}) is smaller than train.micro_batch_size "
                          f"({t.micro_batch_size}) x data-parallel size ({dp}): no micro-batch on a rank to plan")
    plan = Plan(layout=f"TP={tp}{' SP' if sp else ''} PP={pp}{f' VPP={vpp}' if vpp else ''}"
                       f"{f' EP={ep}' if m.num_moe_experts else ''} DP={dp}, {algorithm}, "
                       f"{'CPU fp32' if cpu else prec.params_dtype}",
                stage="only" if pp == 1 else "first stage (embedding, towers)" if is_first else
                      "last stage (output layer, logits)")

    # Weights: every stage its layers and their experts, the first the embedding and the towers, the
    # last the final norm and the output layer (a copy of a tied embedding when it is not the first).
    embedding = vocab * h // tp
    dense_layer, expert_layer = decoder_layer_params(m)
    experts = layers * expert_layer // (tp * ep)  # this rank's E / EP experts of each layer, TP-sharded
    stage_params = layers * dense_layer // tp + experts
    frozen_towers = 0
    if is_first:
        stage_params += embedding + sum(towers.values())
        frozen_towers = (towers["vision"] if cfg.omni.freeze_vision else 0) + (towers["audio"] if cfg.omni.freeze_audio else 0)
    if is_last:
        stage_params += h + (embedding if not m.tie_word_embeddings or not is_first else 0)
    trainable = stage_params - frozen_towers
    plan.persistent["weights"] = width * stage_params
    # megatron DDP's contiguous buffer: fp32 main grads (grad_reduce_in_fp32) of trainable parameters.
    plan.persistent["gradients"] = 4 * trainable
    # Adam: two fp32 moments, plus an fp32 master copy of 16-bit weights; sharded by the distributed
    # optimizer over DP (the experts over their expert-data-parallel group).
    per_param = 8 + (4 if mixed else 0)
    if p.use_distributed_optimizer:
        plan.persistent["optimizer states"] = per_param * ((trainable - experts) / dp + experts / expert_dp)
    else:
        plan.persistent["optimizer states"] = per_param * trainable

    frozen_copy, offloaded = 0.0, False
    if algorithm == "oppo" and cfg.oppo.grpo.kl_beta:
        frozen_copy, offloaded = width * stage_params, cfg.oppo.offload_reference
        frozen_name = "reference weights"
    elif algorithm == "opsd" and cfg.opsd.teacher != "student":
        frozen_copy, offloaded = width * stage_params, cfg.opsd.offload_teacher
        frozen_name = "teacher weights"
    if frozen_copy and not offloaded:
        plan.persistent[frozen_name] = frozen_copy

    # Shapes of one micro-batch.
    if algorithm == "sft":
        rows, completion = t.micro_batch_size, 0
    else:
        group, prompt, completion = _rl(cfg)
        rows = t.micro_batch_size * group
    seq = t.seq_length
    tokens = rows * seq
    logits = tokens * vocab / tp  # elements of one micro-batch's [b, s, V/TP]
    hidden = width * tokens * h / (tp if sp else 1)

    # Training: under 1F1B pipeline rank r keeps PP - r micro-batches in flight; interleaved (VPP),
    # (PP - r - 1) x 2 + (VPP - 1) x PP + 1 model chunks (megatron's warm-up count, plus one).
    in_flight = min(pp - rank, microbatches)
    chunk_layers = layers // (vpp or 1)
    if vpp:
        in_flight_chunks = min((pp - rank - 1) * 2 + (vpp - 1) * pp + 1, microbatches * vpp)
    else:
        in_flight_chunks = in_flight
    act = in_flight_chunks * activation_bytes(m, cfg.recompute, chunk_layers, tokens, seq, tp, width, fused_attention,
                                              sp)
    plan.activations_without_recompute = in_flight_chunks * activation_bytes(m, None, chunk_layers, tokens, seq, tp,
                                                                             width, fused_attention, sp)
    training = {"activations": act + in_flight * hidden}  # + the stage's input / embedding output
    if is_last:
        training["logits + loss buffers"] = logits * (width + 4 * (LOSS_LOGIT_BUFFERS[algorithm] - 1))
    if is_first:
        tower_act = tower_activation_bytes(cfg.omni, cfg.recompute.towers, rows * (seq if algorithm == "sft" else prompt),
                                           width)
        if tower_act:
            training["tower activations"] = tower_act * in_flight
    phases: dict[str, dict[str, float]] = {"training": training}
    if algorithm in ("oppo", "opsd"):
        group, prompt, completion = _rl(cfg)
        kv = cfg.model.num_query_groups // tp * m.head_dim
        decode_rows = _decode_rows(cfg, group, dp)
        # The engine's cache: rows x slots x layers x (k, v) x kv heads x head_dim. Its prefill and
        # decode steps take the last token's logits only (megatron's static inference context), in
        # the model dtype, and sampling.choose_tokens makes up to three fp32 copies of them.
        phases["rollout"] = {"KV cache": width * decode_rows * (prompt + completion) * layers * 2 * kv}
        if is_last:
            phases["rollout"]["decode-step logits"] = (width + 3 * 4) * decode_rows * vocab / tp
        completion_rows = rows * completion
        # What is scored or stored from the logits lives on the last stage.
        scoring: dict[str, float] = {}
        if frozen_copy and offloaded:
            scoring[f"{frozen_name} (on the device to score)"] = frozen_copy
        if algorithm == "oppo":
            stores = 0.0
            if cfg.oppo.grpo.kl_beta:
                stores += 4 * completion_rows * microbatches  # reference log-probs at completion tokens, fp32
            if cfg.oppo.perception_loss:
                stores += 2 * width * evidence_fraction * completion_rows * vocab / tp * microbatches
            if is_last:
                scoring = {"forward logits": logits * (width + 4), "stores": stores, **scoring}
                training["stores (micro-batches not yet trained)"] = stores
        else:
            teacher_rows = width * completion_rows * vocab / tp
            if pp > 1 or cfg.opsd.offload_teacher:  # the teacher scores every micro-batch up front
                if is_last:
                    scoring = {"forward logits": logits * width, "teacher rows": teacher_rows * microbatches,
                               **scoring}
                    training["teacher rows (micro-batches not yet trained)"] = teacher_rows * microbatches
            else:
                # Interleaved: each micro-batch's teacher forward (no grad) runs before its student
                # forward and keeps only its completion rows.
                phases["teacher forward"] = {"forward logits": logits * width, "teacher rows": teacher_rows}
                training["teacher rows"] = teacher_rows
        if scoring:
            phases["scoring"] = scoring
    plan.phases = phases
    if offloaded:
        plan.notes.append(f"{frozen_name} ({frozen_copy / 2**30:.1f} GiB) live on the CPU between their forwards")
    plan.notes.append(f"activations without recompute: {plan.activations_without_recompute / 2**30:.2f} GiB")
    if m.num_moe_experts:
        total, active = decoder_params(m)
        plan.notes.append(f"decoder parameters: {total / 1e9:.2f} B, {active / 1e9:.2f} B active per token "
                          f"(top-{m.moe_router_topk} of {m.num_moe_experts} experts); experts on this GPU: "
                          f"{experts / 1e9:.2f} B ({m.num_moe_experts // ep} per layer, 1/{tp} of each), "
                          f"their optimizer states sharded over {expert_dp} expert-data-parallel rank(s)")
    return plan


def format_plan(plan: Plan, gpu_bytes: float | None = None) -> str:
    gib = 2**30
    lines = [f"memory plan, {plan.layout} (GiB per GPU, worst pipeline stage)"]
    for name, value in plan.persistent.items():
        lines.append(f"  {name:<48}{value / gib:9.2f}")
    for phase, parts in plan.phases.items():
        mark = "  <- peak" if phase == plan.peak_phase else ""
        lines.append(f"  {phase} phase{'':<{42 - len(phase)}}{sum(parts.values()) / gib:9.2f}{mark}")
        for name, value in parts.items():
            lines.append(f"    {name:<46}{value / gib:9.2f}")
    lines.append(f"  {'peak (persistent + ' + plan.peak_phase + ')':<48}{plan.total / gib:9.2f}")
    if gpu_bytes:
        lines.append(f"  {'= GB (10^9 bytes), of ' + f'{gpu_bytes / 1e9:.0f} GB':<48}{plan.total / 1e9:9.2f}")
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)
