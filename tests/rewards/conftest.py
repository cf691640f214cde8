import sys
from pathlib import Path

import pytest

# The tiny lexicon writer is shared with the evaluation tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from wheel_fixture import write_fixture_lexicon  # noqa: E402

from megatron_omni.text.embeddings import shared_encoder  # noqa: E402


class CountingEncoder:
    """The real sentence encoder, counting encode calls."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.strings = 0

    def encode(self, texts):
        self.calls += 1
        self.strings += len(texts)
        return self.inner.encode(texts)


@pytest.fixture(scope="session")
def fixture_wheel_dir(tmp_path_factory):
    return write_fixture_lexicon(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def encoder():
    return CountingEncoder(shared_encoder())
