"""Launch the megatron-core parallel-equivalence suite once under torchrun (4 CPU processes, gloo)."""


def test_parallel_equivalence_suite(torchrun):
    torchrun("tests/dist/test_parallel_equivalence.py", nproc=4)
