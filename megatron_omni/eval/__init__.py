"""Evaluation: MER-UniBench scoring, MEP-Bench-style perception diagnostics, MME-Emotion judging.

Modules (import what you need; nothing heavy is imported here):
- `lexicon`, `lexicon_files`, `wordlists`: the emotion-wheel lexicon and prediction-string parsing.
- `metrics`: HIT, weighted F1, open-set F_s, benchmark mean.
- `valence`: predicted words -> sentiment (lexicon default, LLM option).
- `labels`, `predictions`, `jsonl`: label loaders, prediction readers, the resumable predictions JSONL.
- `generation`: batched, resumable generation through a `generate` callable.
- `mer_unibench`: the nine data sets and the results table.
- `answers`, `llm_endpoint`: `<answer>` parsing, OpenAI-compatible client with retries and cache.
- `mep_bench`, `mme_emotion`: perception diagnostics and step-judged scoring.
See docs/EVALUATION.md.
"""
