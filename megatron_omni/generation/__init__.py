"""Generation on the megatron model: the sampling engine (static KV cache, temperature / top-p /
top-k, stop tokens, per-token log-probs) and the omni prompt's sampling path. The RL rollout
phase that uses it is `megatron_omni.algorithms.rollouts`; evaluation's answers are
`megatron_omni.eval.model_answers`."""
