"""The toy set's own emotion wheel: the released file format, every toy label mapped, deterministic bytes,
and the demo's choice between it and a real lexicon."""
from __future__ import annotations

import csv
from pathlib import Path

import openpyxl
import pytest

from megatron_omni.data.manifest import load_manifest
from megatron_omni.data.toy import EMOTIONS
from megatron_omni.data.toy_wheel import TOY_WHEEL_DIRNAME, WHEEL_ENV, find_wheel_dir, write_toy_emotion_wheel
from megatron_omni.eval.valence import LEVEL1_VALENCE, LexiconValence
from megatron_omni.text.lexicon import LEVELS, EmotionWheelLexicon
from megatron_omni.text.lexicon_files import LexiconError

LEXICON_FILES = ["format.csv", "synonym.xlsx", *(f"wheel{n}.xlsx" for n in range(1, 6))]
TOY_WORDS = [word for profile in EMOTIONS.values() for word in profile.words]


@pytest.fixture(scope="module")
def toy_wheel(tmp_path_factory) -> Path:
    return write_toy_emotion_wheel(tmp_path_factory.mktemp("wheel") / TOY_WHEEL_DIRNAME)


@pytest.fixture(scope="module")
def lexicon(toy_wheel) -> EmotionWheelLexicon:
    return EmotionWheelLexicon.from_dir(toy_wheel)


def _header(path: Path) -> list[str]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return next(csv.reader(handle))
    workbook = openpyxl.load_workbook(path, read_only=True)
    try:
        return [str(cell) for cell in next(workbook.worksheets[0].iter_rows(values_only=True, max_row=1))]
    finally:
        workbook.close()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


RELEASED_PLACEMENT = {  # word -> (level1, level2) on wheel1..wheel5; None: the released lexicon cannot place it
    "happy": (("happy", "joyful"), ("happy", "content"), ("joyful", "cheerful"),
              ("joy", "acceptance"), ("powerful", "proud")),
    "joyful": (("happy", "accepted"), ("happy", "accepted"), ("joyful", "cheerful"),
               ("joy", "acceptance"), ("powerful", "proud")),
    "cheerful": (("happy", "accepted"), ("happy", "accepted"), ("joyful", "cheerful"), None, ("powerful", "proud")),
    "sad": (("sad", "depressed"), ("sad", "depressed"), ("sad", "depressed"),
            ("sad", "disappointed"), ("sad", "depressed")),
    "miserable": (("sad", "depressed"), ("sad", "despair"), ("sad", "ashamed"), ("sad", "bored"), ("sad", "depressed")),
    "depressed": (("sad", "depressed"), ("sad", "depressed"), ("sad", "depressed"),
                  ("sad", "disappointed"), ("sad", "depressed")),
    "angry": (("mad", "anger"), ("angry", "aggressive"), ("mad", "angry"), ("anger", "aggressive"), ("mad", "angry")),
    "furious": (("mad", "anger"), ("angry", "aggressive"), ("mad", "angry"), ("anger", "aggressive"), ("mad", "angry")),
    "annoyed": (("mad", "frustrated"), ("angry", "aggressive"), ("mad", "angry"),
                ("anger", "irritated"), ("mad", "angry")),
    "surprised": (("surprised", "amazed"), ("surprised", "amazed"), ("powerful", "aware"), ("fear", "surprised"), None),
    "astonished": (("surprised", "amazed"), ("surprised", "amazed"), ("scared", "confused"),
                   ("genius", "in awe"), ("scared", "rejected")),
    "amazed": (("surprised", "amazed"), ("surprised", "amazed"), ("powerful", "aware"), ("genius", "in awe"), None),
    "worried": (("scared", "anxious"), ("fearful", "anxious"), ("scared", "anxious"),
                ("fear", "worried"), ("scared", "anxious")),
    "anxious": (("scared", "anxious"), ("fearful", "anxious"), ("scared", "anxious"),
                ("fear", "worried"), ("scared", "anxious")),
    "nervous": (("scared", "anxious"), ("fearful", "anxious"), ("scared", "anxious"),
                ("fear", "worried"), ("scared", "anxious")),
    "calm": (("happy", "peaceful"), ("happy", "peaceful"), ("peaceful", "content"),
             ("joy", "calm"), ("peaceful", "content")),
    "relaxed": (None, None, ("peaceful", "content"), ("joy", "calm"), ("peaceful", "thoughtful")),
    "peaceful": (("happy", "peaceful"), ("happy", "peaceful"), ("peaceful", "content"),
                 ("joy", "calm"), ("peaceful", "content")),
}


def placement(lexicon, word: str) -> tuple:
    return tuple(None if lexicon.map_word(word, wheel) is None else
                 (lexicon.map_word(word, wheel), lexicon.map_word(word, wheel, "level2")) for wheel in lexicon.wheel_names)


def test_every_toy_label_sits_where_the_released_lexicon_places_it(lexicon):
    """So rewards and F_s on the toy answers equal the released lexicon's."""
    assert lexicon.wheel_names == ("wheel1", "wheel2", "wheel3", "wheel4", "wheel5")
    assert sorted(RELEASED_PLACEMENT) == sorted(TOY_WORDS)
    for word in TOY_WORDS:
        assert placement(lexicon, word) == RELEASED_PLACEMENT[word], word


def test_the_placement_table_is_the_released_lexicons(shared_data):
    released = EmotionWheelLexicon.from_dir(shared_data / "emotion_wheel")
    for word in TOY_WORDS:
        assert placement(released, word) == RELEASED_PLACEMENT[word], word


def test_level_one_keeps_the_main_emotions_apart(lexicon):
    for wheel in lexicon.wheel_names:
        family = {name: lexicon.map_word(profile.words[0], wheel) for name, profile in EMOTIONS.items()}
        assert len({family[name] for name in ("happy", "sad", "angry", "worried")}) == 4, (wheel, family)
        assert set(family.values()) - {None} <= set(LEVEL1_VALENCE), family  # the released wheels' class names


def test_inflections_and_synonyms_map_like_their_word(lexicon):
    for form, word in [("happiness", "happy"), ("glad", "happy"), ("sadder", "sad"), ("upset", "sad"),
                       ("fury", "furious"), ("irate", "angry"), ("astonishment", "astonished"),
                       ("anxiety", "anxious"), ("jittery", "nervous"), ("calmly", "calm"), ("tranquil", "peaceful")]:
        for wheel in lexicon.wheel_names:
            for level in LEVELS:
                assert lexicon.map_word(form, wheel, level) == lexicon.map_word(word, wheel, level), (form, word, wheel)


def test_valence_follows_the_level_one_classes(lexicon):
    valence = LexiconValence(lexicon)
    assert valence([["happy", "joyful"], ["sad"], ["furious"], ["calm"]]) == [1, -1, -1, 1]


def test_files_have_the_released_names_and_columns(toy_wheel):
    assert sorted(p.name for p in toy_wheel.iterdir()) == sorted([*LEXICON_FILES, "README.txt"])
    assert _header(toy_wheel / "format.csv") == ["name", "format"]
    assert _header(toy_wheel / "synonym.xlsx") == [f"{kind}_run{run}" for run in range(1, 9) for kind in ("word", "synonym")]
    for number in range(1, 6):
        assert _header(toy_wheel / f"wheel{number}.xlsx") == ["level1", "level2", "level3"]
    readme = (toy_wheel / "README.txt").read_text()
    assert "NOT the released MER emotion-wheel lexicon" in readme
    assert "MERTools" in readme and "MER2025/MER2025_Track23/emotion_wheel/" in readme


def test_headers_match_the_released_files(toy_wheel, shared_data):
    released = shared_data / "emotion_wheel"
    if not (released / "format.csv").is_file():
        pytest.skip(f"the released MER emotion-wheel lexicon is not at {released}")
    for name in LEXICON_FILES:
        assert _header(toy_wheel / name) == _header(released / name), name


def test_same_bytes_every_time(tmp_path, toy_wheel):
    again = write_toy_emotion_wheel(tmp_path / "again")
    assert _files(again) == _files(toy_wheel)
    (again / "wheel6.xlsx").write_bytes((again / "wheel1.xlsx").read_bytes())  # a stale wheel is not kept
    (again / "format.csv").write_text("name,format\n")
    write_toy_emotion_wheel(again)
    assert _files(again) == _files(toy_wheel)


def test_the_toy_set_carries_its_wheel(toy_set):
    assert toy_set.wheel_dir == toy_set.root / TOY_WHEEL_DIRNAME
    lexicon = EmotionWheelLexicon.from_dir(toy_set.wheel_dir)
    for sample in load_manifest(toy_set.train_manifest) + load_manifest(toy_set.test_manifest):
        for wheel in lexicon.wheel_names:  # every sample's labels are scorable on every wheel
            assert len(lexicon.map_words(sample.openset, wheel)) >= 1, (sample.id, wheel)
            assert len(lexicon.map_words(sample.openset, wheel, "level2")) >= 1, (sample.id, wheel)


def _lexicon_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "format.csv").write_text("name,format\n")
    return path


def _no_toy() -> Path:
    raise AssertionError("the toy set must not be written when a lexicon is given")


def test_demo_prefers_the_given_folder_then_the_environment(tmp_path, monkeypatch):
    given, from_env = _lexicon_dir(tmp_path / "given"), _lexicon_dir(tmp_path / "env")
    monkeypatch.setenv(WHEEL_ENV, str(from_env))
    assert find_wheel_dir(str(given), _no_toy) == (given.resolve(), False)
    assert find_wheel_dir(None, _no_toy) == (from_env.resolve(), False)


def test_demo_falls_back_to_the_toy_wheel(tmp_path, monkeypatch):
    monkeypatch.delenv(WHEEL_ENV, raising=False)
    toy = tmp_path / "data_toy" / TOY_WHEEL_DIRNAME
    assert find_wheel_dir(None, lambda: toy) == (toy, True)
    monkeypatch.setenv(WHEEL_ENV, "")  # set but empty: not given
    assert find_wheel_dir(None, lambda: toy) == (toy, True)


def test_demo_refuses_a_named_folder_without_format_csv(tmp_path, monkeypatch):
    monkeypatch.delenv(WHEEL_ENV, raising=False)
    empty = tmp_path / "not_a_lexicon"
    empty.mkdir()
    with pytest.raises(LexiconError, match=r"--wheel-dir .*not_a_lexicon: no format\.csv"):
        find_wheel_dir(str(empty), _no_toy)
    monkeypatch.setenv(WHEEL_ENV, str(tmp_path / "missing"))
    with pytest.raises(LexiconError, match=rf"\${WHEEL_ENV} .*missing: no format\.csv"):
        find_wheel_dir(None, _no_toy)
