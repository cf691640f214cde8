import functools

import pytest
from wheel_fixture import write_fixture_lexicon

from megatron_omni.text.lexicon import EmotionWheelLexicon


@functools.lru_cache(maxsize=None)
def _load_lexicon(folder: str) -> EmotionWheelLexicon:
    return EmotionWheelLexicon.from_dir(folder)


@pytest.fixture(scope="session")
def fixture_wheel_dir(tmp_path_factory):
    return write_fixture_lexicon(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def fixture_lexicon(fixture_wheel_dir):
    return _load_lexicon(str(fixture_wheel_dir))


@pytest.fixture
def real_lexicon(shared_data):
    """The released MER lexicon (skips without the shared research data)."""
    return _load_lexicon(str(shared_data / "emotion_wheel"))
