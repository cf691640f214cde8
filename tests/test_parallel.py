"""Launch the megatron-core multi-process suites under torchrun (CPU processes, gloo)."""


def test_parallel_equivalence_suite(torchrun):
    torchrun("tests/dist/test_parallel_equivalence.py", nproc=4)


def test_cpu_compat_suite(torchrun):
    torchrun("tests/dist/test_cpu_compat.py", nproc=2)


def test_rollout_suite(torchrun):
    torchrun("tests/dist/test_rollout.py", nproc=4)
