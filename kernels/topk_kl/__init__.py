"""`topk_tail_kl`: KL / JSD over the teacher's top-k tokens plus one tail bucket, TP-sharded.
`op` (public function, autograd), `stats` (block layout, exact merge into the support, category
loss), `chunked` (per-shard torch primitives; there is no Triton kernel), `reference`."""
