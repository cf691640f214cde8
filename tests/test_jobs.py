"""End-to-end training jobs under torchrun (CPU processes, gloo)."""


def test_decoder_job(torchrun):
    torchrun("tests/dist/test_decoder_job.py", nproc=2)
