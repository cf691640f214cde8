"""Evaluation: MER-UniBench scoring, MEP-Bench-style perception diagnostics, MME-Emotion judging.

Modules (import what you need; nothing heavy is imported here):
- `metrics`: HIT, weighted F1, open-set F_s, benchmark mean.
- `valence`: predicted words -> sentiment (lexicon default, LLM option).
- `parsing`: the official (default) and the lenient reading of a prediction as emotion words.
- `labels`, `predictions`: label loaders, prediction readers, the resumable predictions JSONL.
- `generation`: batched, resumable generation through a `generate` callable.
- `model_answers`: greedy answers of a megatron model on a manifest, scored with the reward terms.
- `mer_unibench`: the nine data sets and the results table.
- `answers`, `llm_endpoint`: the answer text (`<answer>` block, or the official LLM parsing step),
  OpenAI-compatible client with retries and cache.
- `mep_bench`, `mme_emotion`: perception diagnostics; step-judged scoring with MME-Emotion's official prompts.
- `compare`: one table and bar charts across the results of several checkpoints.
The emotion-wheel lexicon and word parsing are in `megatron_omni.text`. See docs/EVALUATION.md.
"""
