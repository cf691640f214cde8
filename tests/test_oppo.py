"""OPPO under torchrun: one step at TP=2 and PP=2 equals the single-process step; exact resume."""


def test_oppo_step_and_resume(torchrun, tmp_path):
    env = {"OPPO_WORK": str(tmp_path)}
    torchrun("tests/dist/test_oppo_step.py", nproc=1, extra_env=env)
    torchrun("tests/dist/test_oppo_step.py", nproc=2, extra_env=env)
