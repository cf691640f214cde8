"""Text and lexicon pieces shared by the data pipeline, rewards and evaluation (this package
imports no other subpackage of the project).

- `lexicon`, `lexicon_files`, `wordlists`: the MER emotion-wheel lexicon and emotion-word parsing.
- `overlap`: per-sample precision/recall of mapped label sets (R_ew and F_s share it).
- `completion`: the `<think>...</think> <answer>...</answer>` format, its parser and format score.
- `sentences`, `embeddings`: sentence spans and cached sentence embeddings.
- `jsonl`: JSONL reading with line numbers in errors.
- `modalities`: the evidence modality names.
"""
