"""`vocab_parallel_kl`: forward / reverse KL and generalised JSD per token over the full,
TP-sharded vocabulary. `op` (public function, autograd), `stats` (per-token statistics, merge,
loss), `triton_impl` / `chunked` (the two backends' primitives), `reference` (`kl_reference`)."""
