#!/usr/bin/env python
"""Score emotion predictions on MER-UniBench and write a results table (Markdown + JSON).

Examples
  # score AffectGPT's released OV-MERD+ predictions against the public labels
  python tools/evaluate.py --wheel-dir data/emotion_wheel --out-dir results/ \\
      --set ovmerdplus affectgpt_ovmerdplus_predictions.npz ovmerdplus/ovlabel.csv
  # all nine sets: repeat --set DATASET PREDICTIONS LABELS
  # a custom set from a JSONL manifest: --set myset@openset preds.jsonl manifest.jsonl

DATASET is one of the MER-UniBench keys (mer2023 mer2024 meld iemocapfour cmumosi cmumosei sims
simsv2 ovmerdplus) or NAME@KIND with KIND in discrete/sentiment/openset. LABELS is the released
label file (label-6way.npz, label.npz, label_4way.npz, ovlabel.csv) or a JSONL manifest
(fields id + emo / val / openset). PREDICTIONS is .npz (filenames/fileitems), .csv or .jsonl.

Generation from a model: with --manifest and --checkpoint (or `main(argv, generate=...)`), samples
not yet in --generate-into are generated in batches and appended there, then scored.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from megatron_omni.eval.answers import AnswerWordExtractor
from megatron_omni.eval.generation import GenerateFn, generate_predictions
from megatron_omni.eval.labels import load_manifest_labels, load_manifest_records
from megatron_omni.eval.llm_endpoint import ChatEndpoint, EndpointConfig
from megatron_omni.eval.mer_unibench import DATASETS, KINDS, DatasetResult, results_markdown, results_summary, score_dataset
from megatron_omni.eval.predictions import PredictionsJsonl, load_predictions
from megatron_omni.eval.valence import LexiconValence, LLMValence
from megatron_omni.text.lexicon import EmotionWheelLexicon


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel-dir", required=True, help="folder with format.csv, synonym.xlsx, wheel1..5.xlsx")
    parser.add_argument("--out-dir", required=True, help="where results.md and results.json are written")
    parser.add_argument("--set", nargs=3, action="append", default=[], metavar=("DATASET", "PREDICTIONS", "LABELS"),
                        dest="sets", help="one data set to score (repeatable)")
    parser.add_argument("--valence", choices=("lexicon", "llm"), default="lexicon",
                        help="word -> sentiment step for the sentiment sets")
    parser.add_argument("--answer-parser", choices=("tags", "llm"), default="tags",
                        help="raw outputs without <answer>: read as a word list (tags) or ask the LLM")
    parser.add_argument("--llm-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--llm-model", help="model name served by --llm-url")
    parser.add_argument("--llm-cache", help="JSONL cache of LLM replies (default: <out-dir>/llm_cache.jsonl)")
    parser.add_argument("--manifest", help="JSONL samples to generate predictions for (needs a generate callable)")
    parser.add_argument("--generate-into", help="predictions JSONL that generation appends to (resumable)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--checkpoint", help="generate with this model checkpoint (a train.save_dir or converted "
                        "folder); one process at TP=1 / PP=1 unless --override sets the layout under torchrun")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config override for --checkpoint, e.g. parallel.tensor_model_parallel_size=2")
    parser.add_argument("--config", help="the run's YAML config (default: <checkpoint>/run_config.yaml)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score a set whose predictions file is empty or names none of its samples "
                             "(missing predictions count as empty answers); otherwise that is an error")
    parser.add_argument("--last-wins", action="store_true",
                        help="accept a predictions file that names a sample twice, keeping the last prediction")
    return parser.parse_args(argv)


def _endpoint(args: argparse.Namespace) -> ChatEndpoint:
    if not (args.llm_url and args.llm_model):
        raise SystemExit("error: --valence llm / --answer-parser llm need --llm-url and --llm-model")
    cache = args.llm_cache or str(Path(args.out_dir) / "llm_cache.jsonl")
    return ChatEndpoint(EndpointConfig(url=args.llm_url, model=args.llm_model, cache_path=cache))


def _dataset_kind(name: str) -> tuple[str, str, object]:
    """(title, kind, released-label loader or None) of a --set DATASET argument."""
    if "@" in name:
        title, kind = name.split("@", 1)
        if kind not in KINDS:
            raise SystemExit(f"error: --set {name}: kind must be one of {KINDS}")
        return title, kind, None
    if name.lower() not in DATASETS:
        raise SystemExit(f"error: --set {name}: unknown data set; known: {sorted(DATASETS)} (or NAME@KIND)")
    spec = DATASETS[name.lower()]
    return spec.title, spec.kind, spec.load_labels


def check_predictions_match(name: str, predictions_path: str, predictions: dict, labels_path: str, labels) -> None:
    """An empty predictions file, or one naming none of the labelled samples, scores 0 without
    saying why (a wrong file or a different naming): an error unless --allow-missing."""
    if not predictions:
        raise SystemExit(f"error: --set {name}: {predictions_path} holds no predictions "
                         f"(--allow-missing scores it anyway)")
    if not any(sample in predictions for sample in labels):
        raise SystemExit(f"error: --set {name}: none of the {len(predictions)} predictions in {predictions_path} "
                         f"names one of the {len(labels)} samples of {labels_path} (e.g. prediction "
                         f"{next(iter(predictions))!r}, label {next(iter(labels), None)!r}; --allow-missing scores it anyway)")


def main(argv: list[str] | None = None, generate: GenerateFn | None = None) -> dict:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    needs_llm = args.valence == "llm" or args.answer_parser == "llm"
    endpoint = _endpoint(args) if needs_llm else None
    extractor = AnswerWordExtractor(endpoint if args.answer_parser == "llm" else None)

    writes = True
    if args.manifest:
        if generate is None and args.checkpoint:
            import torch.distributed as dist

            from megatron_omni.runs.omni import checkpoint_answerer

            config = args.config or str(Path(args.checkpoint) / "run_config.yaml")
            generate = checkpoint_answerer(config, args.checkpoint, args.manifest, args.override)
            # Every rank takes part in generation (TP/PP collectives); rank 0 writes and scores.
            writes = dist.get_rank() == 0
            if writes:
                PredictionsJsonl(args.generate_into)  # repairs a line cut by a crash before others read
            dist.barrier()
        if generate is None:
            raise SystemExit("error: --manifest needs a model-backed generate callable; "
                             "call tools/evaluate.main(argv, generate=...) or score existing predictions")
        if not args.generate_into:
            raise SystemExit("error: --manifest needs --generate-into PREDICTIONS.jsonl")
        report = generate_predictions(load_manifest_records(args.manifest), generate,
                                      PredictionsJsonl(args.generate_into, read_only=not writes), args.batch_size,
                                      extractor, progress=writes)
        if not writes:
            return {}
        unusable = f", skipped as unusable {report.unusable}" if report.unusable else ""
        print(f"generated {report.generated}, already present {report.skipped}{unusable}", file=sys.stderr)

    if not args.sets:
        raise SystemExit("error: nothing to score; give at least one --set DATASET PREDICTIONS LABELS")
    lexicon = EmotionWheelLexicon.from_dir(args.wheel_dir)
    valence = LLMValence(endpoint) if args.valence == "llm" else LexiconValence(lexicon)
    results: list[DatasetResult] = []
    for name, predictions_path, labels_path in tqdm(args.sets, desc="MER-UniBench", unit="set"):
        title, kind, load_released = _dataset_kind(name)
        if labels_path.endswith(".jsonl"):
            labels = load_manifest_labels(labels_path, kind)
        elif load_released is not None:
            labels = load_released(Path(labels_path))
        else:
            raise SystemExit(f"error: --set {name}: a custom data set needs JSONL manifest labels")
        predictions = load_predictions(predictions_path, extractor, last_wins=args.last_wins)
        if not args.allow_missing:
            check_predictions_match(name, predictions_path, predictions, labels_path, labels)
        results.append(score_dataset(title, kind, labels, predictions, lexicon, valence))

    summary = results_summary(results)
    (out_dir / "results.md").write_text(results_markdown(results), encoding="utf-8")
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(results_markdown(results))
    return summary


if __name__ == "__main__":
    main()
