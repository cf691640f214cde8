"""`evidence_masked_kl`: OPPO's Omni-Perception loss term, built on `vocab_parallel_kl`.
`op` (public function), `reference` (its dense definition)."""
