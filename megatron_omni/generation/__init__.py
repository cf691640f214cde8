"""Generation on the megatron model: the sampling engine (all prompts of a step in one decode on
its own KV cache; greedy or temperature / top-k / top-p by vocab-parallel Gumbel-max; stop tokens;
per-token log-probs) and the omni prompts' sampling path. The RL rollout phase that uses it is
`megatron_omni.algorithms.rollouts`; evaluation's answers are `megatron_omni.eval.model_answers`."""
