"""OmniOPSD under torchrun (tests/dist/test_opsd_step.py): loss vs the dense definition at TP=2, zero loss without the
privileged context, one step at TP=2 and PP=2 equals the single-process step, exact resume."""


def test_opsd_step_and_resume(torchrun, tmp_path):
    env = {"OPSD_WORK": str(tmp_path)}
    torchrun("tests/dist/test_opsd_step.py", nproc=1, extra_env=env)
    torchrun("tests/dist/test_opsd_step.py", nproc=2, extra_env=env)
