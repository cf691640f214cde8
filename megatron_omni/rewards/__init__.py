"""Rewards for RL on emotion reasoning: OPPO's Omni-Perception Reward and its parts.

- `omni_perception`: `OmniPerceptionReward.compute(completions, samples)` -> every term + total.
- `completion_format`: the `<think>...</think> <answer>...</answer>` format, its reward and parser.
- `emotion_wheel_f1`: R_ew through the benchmark's emotion-wheel lexicon.
- `sentences`, `embeddings`, `cue_recovery`: sentence spans, cached sentence embeddings, cue scores
  and the visual/audio/neutral evidence classification.
"""
