"""A deliberately literal re-implementation of the official MER-UniBench open-set evaluation
(MERTools / AffectGPT `wheel.py`), used only as a test oracle.

It follows the official code path step by step: a per-word backward search through the raw
dictionaries, per-call sorting, pandas-free file reading. It shares no code with the library.
"""
from __future__ import annotations

import csv
import glob
import os
import re

import numpy as np
import openpyxl


def official_string_to_list(value):
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list):
        return value
    if value is None or value == "":
        return []
    if value[0] == "[":
        value = value[1:]
    if value and value[-1] == "]":
        value = value[:-1]
    return [item.strip() for item in re.split("['\",]", value) if item.strip() not in ["", ","]]


def _sheet_rows(path):
    book = openpyxl.load_workbook(path, read_only=True)
    rows = list(book.worksheets[0].iter_rows(values_only=True))
    book.close()
    header = list(rows[0])
    return [dict(zip(header, row)) for row in rows[1:]]


def read_wheel_to_map(path):
    store = {}
    level1 = level2 = level3 = ""
    for row in _sheet_rows(path):
        if row["level1"] is not None:
            level1 = row["level1"]
        if row["level2"] is not None:
            level2 = row["level2"]
        if row["level3"] is not None:
            level3 = row["level3"]
        level1, level2, level3 = level1.lower().strip(), level2.lower().strip(), level3.lower().strip()
        store.setdefault(level1, {}).setdefault(level2, []).append(level3)
    return store


def all_wheel_labels(root):
    labels = []
    for path in glob.glob(os.path.join(root, "wheel*.xlsx")):
        for level1, children in read_wheel_to_map(path).items():
            for level2, leaves in children.items():
                labels += [level1, level2] + leaves
    return set(labels)


def read_synonym_run(root, run, wheel_labels):
    mapping = {}
    for row in _sheet_rows(os.path.join(root, "synonym.xlsx")):
        raw = row[f"word_{run}"].strip().lower()
        assert raw in wheel_labels, raw
        mapping.setdefault(raw, []).append(raw)
        for synonym in official_string_to_list(row[f"synonym_{run}"] or ""):
            mapping.setdefault(synonym.strip().lower(), []).append(raw)
    return mapping


def merge_maps(first, second):
    merged = {}
    for key in list(first) + list(second):
        if key in first and key in second:
            merged[key] = list(set(first[key] + second[key]))
        else:
            merged[key] = first.get(key, second.get(key))
    return merged


def read_raw_mapping(root, runs):
    labels = all_wheel_labels(root)
    merged = read_synonym_run(root, runs[0], labels)
    for run in runs[1:]:
        merged = merge_maps(merged, read_synonym_run(root, run, labels))
    return merged


def read_format_mapping(root):
    mapping = {}
    with open(os.path.join(root, "format.csv"), newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            raw = row["name"]
            for item in official_string_to_list(row["format"]):
                mapping.setdefault(item, []).append(raw)
            mapping.setdefault(raw, []).append(raw)
    return mapping


def wheel_cluster(root, wheel, level):
    tree = read_wheel_to_map(os.path.join(root, f"{wheel}.xlsx"))
    result = {}
    for level1 in tree:
        result[level1] = level1 if level == "level1" else sorted(tree[level1])[0]
        for level2 in tree[level1]:
            result[level2] = level1 if level == "level1" else level2
            for level3 in tree[level1][level2]:
                result[level3] = level1 if level == "level1" else level2
    return result


def backward_case3(label, format_mapping, raw_mapping, wheel_map):
    if label not in format_mapping:
        return ""
    candidates = []
    for base in format_mapping[label]:
        for raw in raw_mapping[base]:
            candidates.append(raw)
    for candidate in sorted(candidates):
        if candidate in wheel_map:
            return wheel_map[candidate]
    return ""


def map_list(words, format_mapping, raw_mapping, wheel_map):
    return [m for m in (backward_case3(w, format_mapping, raw_mapping, wheel_map) for w in words) if m != ""]


def overlap_rate(name2gt, name2pred, format_mapping, raw_mapping, wheel_map):
    accuracy, recall = [], []
    for name in name2gt:
        gt = set(map_list([i.lower().strip() for i in official_string_to_list(name2gt[name])],
                          format_mapping, raw_mapping, wheel_map))
        pred = set(map_list([i.lower().strip() for i in official_string_to_list(name2pred[name])],
                            format_mapping, raw_mapping, wheel_map))
        if len(gt) == 0:
            continue
        if len(pred) == 0:
            accuracy.append(0)
            recall.append(0)
        else:
            accuracy.append(len(gt & pred) / len(pred))
            recall.append(len(gt & pred) / len(gt))
    return np.mean(accuracy), np.mean(recall)


def wheel_metric(root, name2gt, name2pred, level, wheels=("wheel1", "wheel2", "wheel3", "wheel4", "wheel5"),
                 runs=tuple(f"run{i}" for i in range(1, 9))):
    """[F, P, R] averaged over wheels, plus the per-wheel (P, R)."""
    format_mapping = read_format_mapping(root)
    raw_mapping = read_raw_mapping(root, list(runs))
    scores, per_wheel = [], {}
    for wheel in wheels:
        precision, recall = overlap_rate(name2gt, name2pred, format_mapping, raw_mapping,
                                         wheel_cluster(root, wheel, level))
        per_wheel[wheel] = (precision, recall)
        scores.append([2 * precision * recall / (precision + recall), precision, recall])
    return np.mean(scores, axis=0).tolist(), per_wheel


def hit_rate(root, name2gt, name2pred, wheels=("wheel1", "wheel2", "wheel3", "wheel4", "wheel5"),
             runs=tuple(f"run{i}" for i in range(1, 9))):
    """The official basic-emotion hit rate, level 1, averaged over wheels."""
    format_mapping = read_format_mapping(root)
    raw_mapping = read_raw_mapping(root, list(runs))
    rates = []
    for wheel in wheels:
        wheel_map = wheel_cluster(root, wheel, "level1")
        hits = []
        for name in name2gt:
            gt = set(map_list([i.lower().strip() for i in official_string_to_list(name2gt[name])],
                              format_mapping, raw_mapping, wheel_map))
            if len(gt) == 0:
                continue
            pred = set(map_list([i.lower().strip() for i in official_string_to_list(name2pred[name])],
                                format_mapping, raw_mapping, wheel_map))
            hits.append(len(pred & gt))
        rates.append(np.mean(hits))
    return float(np.mean(rates))
