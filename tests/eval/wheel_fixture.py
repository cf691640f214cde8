"""A tiny emotion-wheel lexicon in the released file formats, written by the tests.

Hand-derived mapping (level 1 / level 2) that the tests check against:
  word        wheel1            wheel2
  thrilling   happy / joyful    -            (thrilled -> delighted, only on wheel1)
  upset       sad / hurt        anger / annoyed (synonym of disappointed and frustrated:
                                             alphabetical first that the wheel holds)
  alone       sad / lonely      -
  calmly      happy / content   joy / calm
  merriment   happy / joyful    joy / cheerful
  gladness    happy / content   joy / cheerful (glad is on wheel2; wheel1 falls back to happy)
  happiness   happy / content   -            (a level-1 word maps to its first level-2 child)
  pleased     -                 -            (a synonym, but no word form in format.csv)
  unknownbases -                -            (its base word is in no synonym run)
"""
from __future__ import annotations

import csv
from pathlib import Path

import openpyxl

WHEEL1 = [("Happy", "Joyful", "Delighted"), (None, None, "Cheerful"), (None, "Content", "Calm"),
          ("Sad", "Lonely", "Isolated"), (None, "Hurt", "Disappointed")]
WHEEL2 = [("Joy", "Cheerful", "Glad"), (None, "Calm", "Relaxed"), ("Anger", "Annoyed", "Frustrated")]
SYNONYMS = [  # (word_run1, synonym_run1, word_run2, synonym_run2)
    ("delighted", "thrilled, overjoyed", "Cheerful", "merry, jolly"),
    ("isolated", "alone", "calm", "serene"),
    ("disappointed", "upset, let down", "glad", "pleased"),
    ("frustrated", "upset, irritated", "relaxed", "at ease"),
    ("happy", None, "happy", "glad"),
]
FORMATS = [("delighted", "delight,delightful"), ("thrilled", "thrill,thrilling"), ("upset", "upsetting"),
           ("alone", ""), ("calm", "calmness,calmly"), ("merry", "merriment"), ("cheerful", "cheer,cheerfulness"),
           ("unknownbase", "unknownbases"), ("happy", "happiness"), ("glad", "gladness")]

EXPECTED_LEVEL1 = {
    "wheel1": {"thrilling": "happy", "upset": "sad", "alone": "sad", "calmly": "happy", "merriment": "happy",
               "gladness": "happy", "happiness": "happy"},
    "wheel2": {"upset": "anger", "calmly": "joy", "merriment": "joy", "gladness": "joy"},
}
EXPECTED_LEVEL2 = {
    "wheel1": {"thrilling": "joyful", "upset": "hurt", "alone": "lonely", "calmly": "content",
               "merriment": "joyful", "gladness": "content", "happiness": "content"},
    "wheel2": {"upset": "annoyed", "calmly": "calm", "merriment": "cheerful", "gladness": "cheerful"},
}
UNMAPPABLE = ("pleased", "unknownbases", "nonsense")


def _write_xlsx(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    workbook.save(path)


def write_fixture_lexicon(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write_xlsx(folder / "wheel1.xlsx", ("level1", "level2", "level3"), WHEEL1)
    _write_xlsx(folder / "wheel2.xlsx", ("level1", "level2", "level3"), WHEEL2)
    _write_xlsx(folder / "synonym.xlsx", ("word_run1", "synonym_run1", "word_run2", "synonym_run2"), SYNONYMS)
    with open(folder / "format.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "format"])
        writer.writerows(FORMATS)
    return folder
