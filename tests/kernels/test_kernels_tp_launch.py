"""Runs tests/dist/test_kernels_tp.py and tests/dist/test_kernels_topk_tp.py in a real 2-process gloo world."""


def test_kernels_under_two_process_tensor_parallelism(torchrun):
    torchrun("tests/dist/test_kernels_tp.py", nproc=2)


def test_topk_tail_kl_under_two_process_tensor_parallelism(torchrun):
    torchrun("tests/dist/test_kernels_topk_tp.py", nproc=2)
