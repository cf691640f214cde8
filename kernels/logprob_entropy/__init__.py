"""`vocab_parallel_logprob_entropy`: per-token log-prob of the sampled token and entropy over the
full, TP-sharded vocabulary. `op`, `stats`, `triton_impl`, `chunked`, `reference` as in `kl`."""
