"""The toy data set's own emotion-wheel lexicon: about two hundred words in the MER release's file format.

    folder = write_toy_emotion_wheel("data_toy/toy_emotion_wheel")
    lexicon = EmotionWheelLexicon.from_dir(folder)

The released MER lexicon (MERTools, ``MER2025/MER2025_Track23/emotion_wheel/``) is not shipped with
the project; this one lets the toy set be scored with nothing outside the repository. It holds the
same files with the same columns: ``format.csv`` (``name,format``: a base word and its inflected
forms), ``synonym.xlsx`` (``word_run1, synonym_run1 ... word_run8, synonym_run8``: a wheel word and
its synonyms, per run) and ``wheel1.xlsx`` .. ``wheel5.xlsx`` (``level1, level2, level3``, a blank
cell repeating the cell above). Every label word of the toy set (``EMOTIONS[...].words``) sits where
the released lexicon places it: the same level-1 and level-2 class on each wheel, and no class where
the released lexicon has none (``tests/data/test_data_toy_wheel.py`` checks it against the released
files). Rewards and F_s of answers made of toy label words are therefore the released lexicon's,
and so are the demo's figures. Level-1 class names are those of the released wheels
(``megatron_omni.eval.valence.LEVEL1_VALENCE`` knows them all). The files are
byte-identical on every call (fixed workbook dates and zip entry times).
"""
from __future__ import annotations

import csv
import datetime
import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

from megatron_omni.text.lexicon_files import LexiconError

TOY_WHEEL_DIRNAME = "toy_emotion_wheel"
# A released MER lexicon for runs and tools that would otherwise score with the toy wheel.
WHEEL_ENV = "MEGATRON_OMNI_WHEEL_DIR"
SYNONYM_RUNS = 8
WHEEL_COLUMNS = ("level1", "level2", "level3")
RELEASED_SOURCE = "MERTools (https://github.com/zeroQiaoba/MERTools), folder MER2025/MER2025_Track23/emotion_wheel/"

Wheel = dict[str, dict[str, tuple[str, ...]]]  # level1 -> level2 -> level3 words

# Five wheels, level1 -> level2 -> level3. Every toy label word (happy/joyful/cheerful, sad/miserable/
# depressed, angry/furious/annoyed, surprised/astonished/amazed, worried/anxious/nervous,
# calm/relaxed/peaceful) sits where the released MER lexicon places it: the same level-1 and level-2
# class on each wheel, and absent from the wheels where the released lexicon cannot place it
# (cheerful on wheel4, relaxed on wheels 1-2, surprised and amazed on wheel5). Rewards and F_s on the
# toy answers are then the released lexicon's. Within a level-1 family, a level-2 class named like a
# label word comes before the class that holds that word, so the word's own row decides its class.
WHEELS: tuple[Wheel, ...] = (
    {  # wheel1
        "happy": {"joyful": ("happy",), "accepted": ("joyful", "cheerful"), "peaceful": ("calm", "peaceful")},
        "sad": {"depressed": ("sad", "miserable", "depressed"), "lonely": ("isolated", "abandoned")},
        "mad": {"anger": ("angry", "furious"), "frustrated": ("annoyed", "irritated")},
        "surprised": {"amazed": ("surprised", "astonished", "amazed"), "startled": ("shocked", "stunned")},
        "scared": {"anxious": ("worried", "anxious", "nervous"), "frightened": ("terrified", "panicked")},
    },
    {  # wheel2
        "happy": {"content": ("happy",), "accepted": ("joyful", "cheerful"), "peaceful": ("calm", "peaceful")},
        "sad": {"depressed": ("sad", "depressed"), "despair": ("miserable", "hopeless")},
        "angry": {"aggressive": ("angry", "furious", "annoyed"), "hateful": ("hostile", "spiteful")},
        "surprised": {"amazed": ("surprised", "astonished", "amazed"), "confused": ("puzzled", "bewildered")},
        "fearful": {"anxious": ("worried", "anxious", "nervous"), "frightened": ("terrified", "panicked")},
    },
    {  # wheel3
        "joyful": {"cheerful": ("happy", "joyful", "cheerful"), "excited": ("energetic", "thrilled")},
        "peaceful": {"content": ("calm", "relaxed", "peaceful"), "thoughtful": ("serene", "pensive")},
        "sad": {"depressed": ("sad", "depressed"), "ashamed": ("miserable", "guilty")},
        "mad": {"angry": ("angry", "furious", "annoyed"), "hostile": ("hateful", "spiteful")},
        "powerful": {"aware": ("surprised", "amazed"), "proud": ("confident", "hopeful")},
        "scared": {"anxious": ("worried", "anxious", "nervous"), "confused": ("astonished", "puzzled")},
    },
    {  # wheel4
        "joy": {"acceptance": ("happy", "joyful"), "calm": ("calm", "relaxed", "peaceful")},
        "sad": {"disappointed": ("sad", "depressed"), "bored": ("miserable", "indifferent")},
        "anger": {"aggressive": ("angry", "furious"), "irritated": ("annoyed", "frustrated")},
        "fear": {"surprised": ("surprised", "startled"), "worried": ("worried", "anxious", "nervous")},
        "genius": {"in awe": ("astonished", "amazed"), "inspired": ("creative", "curious")},
    },
    {  # wheel5
        "powerful": {"proud": ("happy", "joyful", "cheerful"), "confident": ("hopeful", "courageous")},
        "peaceful": {"content": ("calm", "peaceful"), "thoughtful": ("relaxed", "pensive")},
        "sad": {"depressed": ("sad", "miserable", "depressed"), "lonely": ("isolated", "abandoned")},
        "mad": {"angry": ("angry", "furious", "annoyed"), "frustrated": ("irritated", "exasperated")},
        "scared": {"anxious": ("worried", "anxious", "nervous"), "rejected": ("astonished", "inadequate")},
    },
)

# Wheel word -> its synonyms (synonym.xlsx). No synonym is itself a wheel word, so every wheel word
# maps through itself alone; the synonyms only add forms that map like their word.
SYNONYMS: dict[str, tuple[str, ...]] = {
    # happy / joy / joyful / powerful
    "happy": ("glad", "pleased"), "joyful": ("joyous", "elated"), "cheerful": ("upbeat", "merry"),
    "joy": ("gladness",), "accepted": ("welcomed",), "acceptance": ("approval",), "content": ("fulfilled",),
    "excited": ("eager", "enthusiastic"), "energetic": ("lively",), "thrilled": ("exhilarated",),
    "powerful": ("strong",), "proud": ("honored",), "confident": ("assured",), "hopeful": ("optimistic",),
    "courageous": ("brave",), "aware": ("alert",), "genius": ("brilliant",), "in awe": ("awestruck",),
    "inspired": ("moved",), "creative": ("inventive",), "curious": ("inquisitive",),
    # peaceful
    "peaceful": ("tranquil", "at peace"), "calm": ("composed", "at ease"), "relaxed": ("laid-back", "easygoing"),
    "serene": ("placid",), "thoughtful": ("contemplative",), "pensive": ("meditative",),
    # sad
    "sad": ("unhappy", "downcast", "upset"), "depressed": ("despondent", "dejected"), "miserable": ("wretched",),
    "despair": ("despondency",), "hopeless": ("despairing",), "ashamed": ("shamefaced",), "guilty": ("at fault",),
    "bored": ("weary",), "indifferent": ("apathetic",), "disappointed": ("let down",),
    "lonely": ("lonesome",), "isolated": ("alone",), "abandoned": ("deserted",),
    # mad / angry / anger
    "mad": ("cross", "fuming"), "angry": ("irate", "indignant"), "furious": ("livid", "raging"),
    "anger": ("wrath", "rage"), "aggressive": ("combative",), "annoyed": ("irked", "bothered"),
    "irritated": ("vexed",), "frustrated": ("fed up",), "exasperated": ("infuriated",), "hostile": ("antagonistic",),
    "hateful": ("resentful",), "spiteful": ("vindictive",),
    # surprised
    "surprised": ("taken aback", "caught off guard"), "amazed": ("astounded", "wonderstruck"),
    "astonished": ("dumbfounded", "flabbergasted"), "startled": ("jolted",), "shocked": ("staggered",),
    "stunned": ("speechless",), "confused": ("perplexed",), "puzzled": ("baffled",), "bewildered": ("disoriented",),
    # scared / fearful / fear
    "scared": ("afraid",), "fearful": ("apprehensive",), "fear": ("dread", "fright"),
    "anxious": ("uneasy", "tense"), "worried": ("troubled", "concerned"), "nervous": ("jittery", "on edge"),
    "frightened": ("alarmed",), "terrified": ("petrified",), "panicked": ("frantic",),
    "rejected": ("spurned",), "inadequate": ("unworthy",),
}

# Base word -> its other forms (format.csv); every base also lists itself.
INFLECTIONS: dict[str, tuple[str, ...]] = {
    "happy": ("happily", "happiness", "happier", "happiest"), "joyful": ("joyfully", "joyfulness"),
    "cheerful": ("cheer", "cheerfully", "cheerfulness"), "glad": ("gladly",),
    "sad": ("sadly", "sadness", "sadder", "saddest"), "miserable": ("misery", "miserably"),
    "depressed": ("depression", "depressing"), "lonely": ("loneliness",),
    "angry": ("angrily", "angrier", "angriest"), "furious": ("fury", "furiously"),
    "annoyed": ("annoy", "annoys", "annoyance", "annoying"), "frustrated": ("frustration", "frustrating"),
    "surprised": ("surprise", "surprises", "surprising", "surprisingly"),
    "astonished": ("astonish", "astonishment", "astonishing"), "amazed": ("amaze", "amazement", "amazing"),
    "excited": ("excitement", "exciting"),
    "worried": ("worry", "worries", "worrying"), "anxious": ("anxiety", "anxiously", "anxiousness"),
    "nervous": ("nervously", "nervousness"), "scared": ("scare", "scary"), "fearful": ("fearfully",),
    "calm": ("calmly", "calmness", "calmer", "calmed"), "relaxed": ("relax", "relaxing", "relaxation"),
    "peaceful": ("peace", "peacefully", "peacefulness"),
}

README = """\
The toy data set's own emotion-wheel lexicon
============================================

These files are NOT the released MER emotion-wheel lexicon. They are a small lexicon written by
megatron_omni.data.toy_wheel for the generated toy data set only: it covers the toy set's label
words (happy, sad, angry, surprised, worried, calm and two close words of each) plus a few
synonyms and inflections, {words} base words in all (the released one has about 1,250), so
that the toy set can be scored with nothing outside the repository. Each toy label word sits where
the released lexicon places it, so answers made of toy label words score as with the released
lexicon; any other word maps differently or not at all. Use the released lexicon for real data
(MER-UniBench and the like).

The files have the released format: format.csv (name, format), synonym.xlsx (word_run1,
synonym_run1 ... word_run8, synonym_run8) and wheel1.xlsx .. wheel5.xlsx (level1, level2, level3;
a blank cell repeats the cell above).

The released lexicon comes from
  {source}
Point --wheel-dir (or MEGATRON_OMNI_WHEEL_DIR, or reward.wheel_dir in a training config) at a
copy of that folder to score with it.
"""

# Fixed workbook dates and zip entry times: the same bytes on every call.
_FIXED_DATETIME = datetime.datetime(2025, 1, 1)
_FIXED_ZIP_TIME = (2025, 1, 1, 0, 0, 0)


def wheel_words() -> list[str]:
    """Every word on any toy wheel (level 1, 2 or 3), sorted."""
    return sorted({word for wheel in WHEELS for top, children in wheel.items()
                   for word in (top, *children, *(leaf for leaves in children.values() for leaf in leaves))})


def base_words() -> list[str]:
    """Every word with a format.csv row: the wheel words and their synonyms, sorted."""
    return sorted(set(wheel_words()) | {synonym for synonyms in SYNONYMS.values() for synonym in synonyms})


def _wheel_rows(wheel: Wheel) -> list[tuple[str | None, str | None, str]]:
    """(level1, level2, level3) rows, Title-case as in the released files; a blank (None) cell
    repeats the cell above."""
    rows: list[tuple[str | None, str | None, str]] = []
    for top, children in wheel.items():
        for index, (middle, leaves) in enumerate(children.items()):
            for position, leaf in enumerate(leaves):
                rows.append((top.title() if index == position == 0 else None,
                             middle.title() if position == 0 else None, leaf.title()))
    return rows


def _save_xlsx(header: tuple[str, ...], rows: list[tuple], path: Path) -> None:
    """One sheet ("Sheet1", as in the released files), saved with fixed dates and entry times."""
    import openpyxl
    from openpyxl.writer.excel import ExcelWriter

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Sheet1"
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    workbook.properties.creator = "megatron_omni.data.toy_wheel"
    workbook.properties.created = workbook.properties.modified = _FIXED_DATETIME
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        ExcelWriter(workbook, archive).save()  # workbook.save() would stamp the current time
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():  # entries otherwise carry the clock time of writing
            info = zipfile.ZipInfo(entry.filename, date_time=_FIXED_ZIP_TIME)
            info.external_attr = 0o644 << 16
            target.writestr(info, source.read(entry), compress_type=zipfile.ZIP_DEFLATED)


def _write_format_csv(path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("name", "format"))
        for base in base_words():
            forms = dict.fromkeys((base, *INFLECTIONS.get(base, ())))
            writer.writerow((base, ",".join(forms)))


def _synonym_rows() -> list[tuple[str, ...]]:
    """One row per wheel word; run k lists it with its synonyms rotated by k (the runs of the
    released file are separate generations in their own order, capitalised in some)."""
    rows = []
    for word in wheel_words():
        synonyms = SYNONYMS[word]
        row: list[str] = []
        for run in range(1, SYNONYM_RUNS + 1):
            shift = run % len(synonyms)
            rotated = synonyms[shift:] + synonyms[:shift]
            row += [word.capitalize() if run % 2 == 0 else word, ", ".join(rotated)]
        rows.append(tuple(row))
    return rows


def write_toy_emotion_wheel(folder: str | Path) -> Path:
    """Write the toy lexicon (format.csv, synonym.xlsx, wheel1-5.xlsx, README.txt) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("wheel*.xlsx"):  # every wheelN.xlsx in the folder is read as a wheel
        stale.unlink()
    _write_format_csv(folder / "format.csv")
    header = tuple(name for run in range(1, SYNONYM_RUNS + 1) for name in (f"word_run{run}", f"synonym_run{run}"))
    _save_xlsx(header, _synonym_rows(), folder / "synonym.xlsx")
    for number, wheel in enumerate(WHEELS, start=1):
        _save_xlsx(WHEEL_COLUMNS, _wheel_rows(wheel), folder / f"wheel{number}.xlsx")
    (folder / "README.txt").write_text(README.format(words=len(base_words()), source=RELEASED_SOURCE))
    return folder


def find_wheel_dir(given: str | None, toy_wheel: Callable[[], Path]) -> tuple[Path, bool]:
    """The emotion-wheel lexicon folder, and whether it is the toy set's own.

    ``given`` (--wheel-dir) wins, then $MEGATRON_OMNI_WHEEL_DIR; a folder named either way must hold
    format.csv. With neither, ``toy_wheel()`` (which writes the toy set) gives the toy set's wheel.
    """
    for source, candidate in (("--wheel-dir", given), (f"${WHEEL_ENV}", os.environ.get(WHEEL_ENV))):
        if candidate:
            folder = Path(candidate).expanduser()
            if not (folder / "format.csv").is_file():
                raise LexiconError(
                    f"{source} {folder}: no format.csv in that folder; the MER emotion-wheel lexicon folder holds "
                    f"format.csv, synonym.xlsx and wheel1.xlsx..wheel5.xlsx (from {RELEASED_SOURCE})"
                )
            return folder.resolve(), False
    return toy_wheel(), True
