import openpyxl
import pytest
from wheel_fixture import EXPECTED_LEVEL1, EXPECTED_LEVEL2, UNMAPPABLE, write_fixture_lexicon

from megatron_omni.text.lexicon import EmotionWheelLexicon
from megatron_omni.text.lexicon_files import LexiconError
from megatron_omni.text.wordlists import parse_emotion_words


@pytest.mark.parametrize("level, expected", [("level1", EXPECTED_LEVEL1), ("level2", EXPECTED_LEVEL2)])
def test_fixture_mapping_matches_hand_derivation(fixture_lexicon, level, expected):
    assert fixture_lexicon.wheel_names == ("wheel1", "wheel2")
    words = set(EXPECTED_LEVEL1["wheel1"]) | set(UNMAPPABLE)
    for wheel in fixture_lexicon.wheel_names:
        got = {w: fixture_lexicon.map_word(w, wheel, level) for w in words}
        assert {w: c for w, c in got.items() if c is not None} == expected[wheel]


def test_mapping_normalises_case_and_spaces(fixture_lexicon):
    assert fixture_lexicon.map_word("  THRILLING ", "wheel1") == "happy"
    assert fixture_lexicon.map_words(["Upset", "upset", "pleased", "alone"], "wheel1") == {"sad"}
    assert fixture_lexicon.map_words([], "wheel2") == set()


def test_unknown_wheel_or_level_is_a_clear_error(fixture_lexicon):
    with pytest.raises(KeyError, match="wheel9"):
        fixture_lexicon.map_word("upset", "wheel9")
    with pytest.raises(KeyError, match="level3"):
        fixture_lexicon.map_word("upset", "wheel1", "level3")


@pytest.mark.parametrize("text, words", [
    ("[Happy, sad]", ["happy", "sad"]),
    ("['happy', 'sad', 'happy']", ["happy", "sad"]),
    ('["Worried" ;  "very   tense"]', ["worried", "very tense"]),
    ("happy；sad，angry、calm", ["happy", "sad", "angry", "calm"]),
    ("[[joy]], [ relief. ]", ["joy", "relief"]),
    ("", []),
    ("[]", []),
    (None, []),
    (float("nan"), []),
    (["Happy", "happy, Sad"], ["happy", "sad"]),
    ("don’t care", ["don’t care"]),
])
def test_parse_emotion_words(text, words):
    assert parse_emotion_words(text) == words


def test_missing_file_and_bad_synonym_word_are_named(tmp_path):
    folder = write_fixture_lexicon(tmp_path / "lex")
    (folder / "format.csv").unlink()
    with pytest.raises(LexiconError, match="format.csv"):
        EmotionWheelLexicon.from_dir(folder)
    folder = write_fixture_lexicon(tmp_path / "lex2")
    workbook = openpyxl.load_workbook(folder / "synonym.xlsx")
    workbook.active["C3"] = "not-a-wheel-word"
    workbook.save(folder / "synonym.xlsx")
    with pytest.raises(LexiconError, match=r"synonym.xlsx, row 3, column 'word_run2'"):
        EmotionWheelLexicon.from_dir(folder)


def test_wheel_file_without_level_columns_is_named(tmp_path):
    folder = write_fixture_lexicon(tmp_path / "lex")
    workbook = openpyxl.Workbook()
    workbook.active.append(("top", "middle", "leaf"))
    workbook.save(folder / "wheel2.xlsx")
    with pytest.raises(LexiconError, match=r"wheel2.xlsx: header row lacks"):
        EmotionWheelLexicon.from_dir(folder)


def test_released_lexicon_covers_five_wheels(real_lexicon):
    assert real_lexicon.wheel_names == tuple(f"wheel{i}" for i in range(1, 6))
    # 'happiness' is a word form of 'happy', a level-1 word of wheel 1
    assert real_lexicon.map_word("happiness", "wheel1") == "happy"
    assert real_lexicon.map_word("neutral", "wheel1") is None
