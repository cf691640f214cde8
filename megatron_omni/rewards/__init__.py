"""Rewards for RL on emotion reasoning: OPPO's Omni-Perception Reward and its parts.

- `omni_perception`: `OmniPerceptionReward.compute(completions, samples)` -> every term + total.
- `emotion_wheel_f1`: R_ew through the benchmark's emotion-wheel lexicon.
- `cue_recovery`: cue scores and the visual/audio/neutral evidence classification.
The format parser, sentence spans and embeddings they build on are in `megatron_omni.text`.
"""
