#!/usr/bin/env python
"""Score emotion predictions: MER-UniBench (default), MEP-Bench-style diagnostics, MME-Emotion, and
compare results across checkpoints.

Examples
  # score AffectGPT's released OV-MERD+ predictions against the public labels (official reading)
  python tools/evaluate.py --wheel-dir data/emotion_wheel --out-dir results/ \\
      --set ovmerdplus affectgpt_ovmerdplus_predictions.npz ovmerdplus/ovlabel.csv
  # all nine sets: repeat --set DATASET PREDICTIONS LABELS
  # a custom set from a JSONL manifest: --set myset@openset preds.jsonl manifest.jsonl
  python tools/evaluate.py mep --manifest test.jsonl --out-dir OUT --checkpoint CKPT
  python tools/evaluate.py mme-emotion --manifest items.jsonl --out-dir OUT --llm-url URL --llm-model M
  python tools/evaluate.py compare runs/a/eval runs/b/eval --out-dir OUT

DATASET is one of the MER-UniBench keys (mer2023 mer2024 meld iemocapfour cmumosi cmumosei sims
simsv2 ovmerdplus) or NAME@KIND with KIND in discrete/sentiment/openset. LABELS is the released
label file (label-6way.npz, label.npz, label_4way.npz, ovlabel.csv) or a JSONL manifest
(fields id + emo / val / openset). PREDICTIONS is .npz (filenames/fileitems), .csv or .jsonl.

Generation from a model: with --manifest and --checkpoint (or `main(argv, generate=...)`), samples
not yet in the predictions file are generated in batches and appended there, then scored.
See docs/EVALUATION.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from megatron_omni.eval.answers import LLMAnswerParser, tag_answer
from megatron_omni.eval.compare import comparison_charts, comparison_markdown, load_results
from megatron_omni.eval.generation import GenerateFn, generate_predictions
from megatron_omni.eval.labels import load_manifest_labels, load_manifest_records
from megatron_omni.eval.llm_endpoint import ChatEndpoint, EndpointConfig
from megatron_omni.eval.mep_bench import (
    KeywordClaimExtractor,
    LLMClaimExtractor,
    MEPResult,
    cue_utilization,
    faithfulness_of_outputs,
    reasoning_text,
)
from megatron_omni.eval.mer_unibench import DATASETS, KINDS, DatasetResult, results_markdown, results_summary, score_dataset
from megatron_omni.eval.mme_emotion import MMEEmotionScorer, mme_item
from megatron_omni.eval.parsing import READINGS, readings_differ
from megatron_omni.eval.predictions import PredictionsJsonl, load_outputs, load_prediction_values
from megatron_omni.eval.valence import LexiconValence, LLMValence
from megatron_omni.text.lexicon import EmotionWheelLexicon
from megatron_omni.text.modalities import MODALITIES

MODES = ("mer-unibench", "mep", "mme-emotion", "compare")


def _endpoint_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--llm-model", help="model name served by --llm-url")
    parser.add_argument("--llm-cache", help="JSONL cache of LLM replies (default: <out-dir>/llm_cache.jsonl)")


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--checkpoint", help="generate with this model checkpoint (a train.save_dir or converted "
                        "folder); one process at TP=1 / PP=1 unless --override sets the layout under torchrun")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config override for --checkpoint, e.g. parallel.tensor_model_parallel_size=2")
    parser.add_argument("--config", help="the run's YAML config (default: <checkpoint>/run_config.yaml)")


def parse_mer_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="evaluate.py [mer-unibench]", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel-dir", required=True, help="folder with format.csv, synonym.xlsx, wheel1..5.xlsx")
    parser.add_argument("--out-dir", required=True, help="where results.md and results.json are written")
    parser.add_argument("--set", nargs=3, action="append", default=[], metavar=("DATASET", "PREDICTIONS", "LABELS"),
                        dest="sets", help="one data set to score (repeatable)")
    parser.add_argument("--valence", choices=("lexicon", "llm"), default="lexicon",
                        help="word -> sentiment step for the sentiment sets")
    parser.add_argument("--answer-parser", choices=("tags", "llm"), default="tags",
                        help="raw outputs: the <answer> block (tags), or every output through the official "
                             "LLM parsing prompt (llm)")
    parser.add_argument("--lenient-parsing", action="store_true",
                        help="read predictions with the robust parser instead of the official string_to_list")
    _endpoint_args(parser)
    parser.add_argument("--manifest", help="JSONL samples to generate predictions for (needs a generate callable)")
    parser.add_argument("--generate-into", help="predictions JSONL that generation appends to (resumable)")
    _model_args(parser)
    parser.add_argument("--allow-missing", action="store_true",
                        help="score a set whose predictions file is empty or names none of its samples "
                             "(missing predictions count as empty answers); otherwise that is an error")
    parser.add_argument("--last-wins", action="store_true",
                        help="accept a predictions file that names a sample twice, keeping the last prediction")
    return parser.parse_args(argv)


def _endpoint(args: argparse.Namespace, what: str, url: str | None = None, model: str | None = None) -> ChatEndpoint:
    url, model = url or args.llm_url, model or args.llm_model
    if not (url and model):
        raise SystemExit(f"error: {what} needs --llm-url and --llm-model")
    cache = args.llm_cache or str(Path(args.out_dir) / "llm_cache.jsonl")
    return ChatEndpoint(EndpointConfig(url=url, model=model, cache_path=cache))


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


def _model_generate(args: argparse.Namespace, generate: GenerateFn | None) -> tuple[GenerateFn | None, bool]:
    """(generate callable or None, whether this process writes): a --checkpoint builds the model's
    answerer; every rank takes part in generation (TP/PP collectives), rank 0 writes and scores."""
    if generate is None and args.checkpoint:
        import torch.distributed as dist

        from megatron_omni.runs.omni import checkpoint_answerer

        config = args.config or str(Path(args.checkpoint) / "run_config.yaml")
        generate = checkpoint_answerer(config, args.checkpoint, args.manifest, args.override)
        return generate, dist.get_rank() == 0
    return generate, True


def _generate_into(samples: list[dict], generate: GenerateFn, path: str, writes: bool, batch_size: int,
                   extract: Callable[[str], list[str]] | None = None, mask_modality: str | None = None) -> None:
    """Resumable generation into `path` (see generate_predictions); rank 0 repairs and writes."""
    import torch.distributed as dist

    if writes:
        PredictionsJsonl(path)  # repairs a line cut by a crash before other ranks read the file
    if dist.is_initialized():
        dist.barrier()
    desc = f"generate ({mask_modality} masked)" if mask_modality else "generate"
    report = generate_predictions(samples, generate, PredictionsJsonl(path, read_only=not writes), batch_size,
                                  extract, progress=writes, mask_modality=mask_modality, desc=desc)
    if writes:
        unusable = f", skipped as unusable {report.unusable}" if report.unusable else ""
        print(f"{path}: generated {report.generated}, already present {report.skipped}{unusable}", file=sys.stderr)


def main_mer_unibench(argv: list[str], generate: GenerateFn | None = None) -> dict:
    args = parse_mer_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    endpoint = _endpoint(args, "--valence llm / --answer-parser llm") if "llm" in (args.valence, args.answer_parser) else None
    answer_text = LLMAnswerParser(endpoint) if args.answer_parser == "llm" else tag_answer
    reading = "lenient" if args.lenient_parsing else "official"
    read = READINGS[reading]

    if args.manifest:
        generate, writes = _model_generate(args, generate)
        if generate is None:
            raise SystemExit("error: --manifest needs a model-backed generate callable; "
                             "call tools/evaluate.main(argv, generate=...) or score existing predictions")
        if not args.generate_into:
            raise SystemExit("error: --manifest needs --generate-into PREDICTIONS.jsonl")
        _generate_into(load_manifest_records(args.manifest), generate, args.generate_into, writes, args.batch_size,
                       lambda text: read(answer_text(text)))
        if not writes:
            return {}

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
        values = load_prediction_values(predictions_path, answer_text, last_wins=args.last_wins)
        predictions = {sample: read(value) for sample, value in values.items()}
        if not args.allow_missing:
            check_predictions_match(name, predictions_path, predictions, labels_path, labels)
        differ = sum(1 for sample in labels if sample in values and readings_differ(values[sample]))
        results.append(replace(score_dataset(title, kind, labels, predictions, lexicon, valence),
                               parsed_differently=differ))

    summary = {**results_summary(results), "reading": reading, "answer_parser": args.answer_parser}
    (out_dir / "results.md").write_text(results_markdown(results), encoding="utf-8")
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(results_markdown(results))
    return summary


def main_mep(argv: list[str], generate: GenerateFn | None = None, encoder=None) -> dict:
    parser = argparse.ArgumentParser(prog="evaluate.py mep", description="MEP-Bench-style utilization and "
                                     "faithfulness (docs/EVALUATION.md) from a checkpoint or from output files")
    parser.add_argument("--manifest", required=True, help="JSONL samples with id and extracted_clues")
    parser.add_argument("--out-dir", required=True, help="where mep.md, mep.json (and generated outputs) go")
    parser.add_argument("--outputs", help="normal outputs (id, output); default <out-dir>/mep_outputs.jsonl")
    for modality in MODALITIES:
        parser.add_argument(f"--{modality}-masked", help=f"outputs with the {modality} input masked; "
                            f"default <out-dir>/mep_outputs_{modality}_masked.jsonl")
    parser.add_argument("--claims", choices=("keyword", "llm"), default="keyword",
                        help="claim extraction: the offline cue vocabularies or the LLM endpoint")
    _endpoint_args(parser)
    parser.add_argument("--embedding-model", help="sentence-transformers folder (default: offline all-MiniLM-L6-v2)")
    parser.add_argument("--threshold", type=float, default=0.6, help="cosine at which a cue / claim matches")
    parser.add_argument("--workers", type=int, default=4, help="concurrent LLM requests")
    _model_args(parser)
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    paths = {None: args.outputs or str(out_dir / "mep_outputs.jsonl"),
             **{m: getattr(args, f"{m}_masked") or str(out_dir / f"mep_outputs_{m}_masked.jsonl") for m in MODALITIES}}
    samples = load_manifest_records(args.manifest)
    generate, writes = _model_generate(args, generate)
    if generate is not None:
        for mask, path in paths.items():
            _generate_into(samples, generate, path, writes, args.batch_size, mask_modality=mask)
        if not writes:
            return {}
    missing = [p for p in paths.values() if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"error: mep: no outputs file {missing[0]}; give --checkpoint to generate it or the "
                         f"--outputs / --visual-masked / --audio-masked files")
    outputs = {mask: load_outputs(path) for mask, path in paths.items()}
    extractor = (LLMClaimExtractor(_endpoint(args, "mep --claims llm")) if args.claims == "llm"
                 else KeywordClaimExtractor())
    if args.claims == "llm":  # every LLM call up front, concurrently and with progress; scoring then hits the cache
        reasonings = sorted({reasoning_text(o) for group in outputs.values() for o in group.values()})
        with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
            list(tqdm(pool.map(extractor, reasonings), total=len(reasonings), desc="claims", unit="text"))
    if encoder is None:
        from megatron_omni.text.embeddings import shared_encoder

        encoder = shared_encoder(args.embedding_model)
    answered = [s for s in samples if str(s["id"]) in outputs[None]]
    if not answered:
        raise SystemExit(f"error: mep: none of the samples of {args.manifest} has an output in {paths[None]}")
    utilization = cue_utilization([outputs[None][str(s["id"])] for s in answered], answered, extractor, encoder,
                                  args.threshold)
    faithfulness = faithfulness_of_outputs({m: [outputs[m].get(str(s["id"])) for s in samples] for m in MODALITIES},
                                           extractor)
    result = MEPResult(utilization, faithfulness)
    summary = {**result.summary(), "samples": len(samples), "answered": len(answered), "claims": args.claims}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mep.md").write_text(result.markdown(), encoding="utf-8")
    (out_dir / "mep.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(result.markdown())
    return summary


def main_mme_emotion(argv: list[str], generate: GenerateFn | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="evaluate.py mme-emotion", description="MME-Emotion Rec-S / Rea-S / "
                                     "CoT-S with the official step-extraction and judging prompts")
    parser.add_argument("--manifest", required=True, help="JSONL items: id, task, answer (the label), optional "
                        "audio_clue, frames (JPEG paths) and response (else from --responses)")
    parser.add_argument("--out-dir", required=True, help="where mme_emotion.md and mme_emotion.json go")
    parser.add_argument("--responses", help="model outputs (id, output); default <out-dir>/mme_responses.jsonl, "
                        "generated there with --checkpoint")
    _endpoint_args(parser)
    parser.add_argument("--judge-url", help="judging endpoint (default: --llm-url)")
    parser.add_argument("--judge-model", help="judging model (default: --llm-model)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent items")
    _model_args(parser)
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    responses_path = args.responses or str(out_dir / "mme_responses.jsonl")
    records = load_manifest_records(args.manifest)
    generate, writes = _model_generate(args, generate)
    if generate is not None:
        _generate_into([r for r in records if "response" not in r], generate, responses_path, writes, args.batch_size)
        if not writes:
            return {}
    needs_file = any("response" not in r for r in records)
    responses = load_outputs(responses_path) if needs_file and Path(responses_path).is_file() else {}
    items = []
    for index, record in enumerate(records):
        sample = str(record["id"])
        if "response" not in record and sample not in responses:
            continue  # not answered (skipped as unusable, or no responses yet): reported below
        items.append(mme_item({**record, "response": record.get("response", responses.get(sample))},
                              f"{args.manifest}, item {index}"))
    if not items:
        raise SystemExit(f"error: mme-emotion: no item of {args.manifest} has a response (none in the manifest, "
                         f"{responses_path} {'empty' if Path(responses_path).is_file() else 'absent'}); "
                         f"give --responses or --checkpoint")
    step_endpoint = _endpoint(args, "mme-emotion")
    judge_endpoint = _endpoint(args, "mme-emotion", args.judge_url, args.judge_model)
    result = MMEEmotionScorer(step_endpoint, judge_endpoint, workers=args.workers).score(items, progress=True)
    summary = {**result.summary(), "items": len(records), "without_response": len(records) - len(items)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "mme_emotion.md").write_text(result.markdown(), encoding="utf-8")
    (out_dir / "mme_emotion.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(result.markdown())
    return summary


def main_compare(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="evaluate.py compare", description="one Markdown table across "
                                     "checkpoints and a PNG bar chart per data set")
    parser.add_argument("results", nargs="+", help="results.json files (or folders holding one)")
    parser.add_argument("--out-dir", required=True, help="where compare.md and compare_<set>.png go")
    parser.add_argument("--names", nargs="+", help="one label per results file (default: its folder's name)")
    args = parser.parse_args(argv)
    if args.names and len(args.names) != len(args.results):
        raise SystemExit(f"error: compare: {len(args.names)} --names for {len(args.results)} results")
    runs = [load_results(path) for path in args.results]
    if args.names:
        runs = [(name, summary) for name, (_, summary) in zip(args.names, runs)]
    table = comparison_markdown(runs)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(table, encoding="utf-8")
    charts = comparison_charts(runs, out_dir)
    print(table)
    return {"table": table, "charts": [str(p) for p in charts]}


def main(argv: list[str] | None = None, generate: GenerateFn | None = None, encoder=None) -> dict:
    """`generate(samples, mask_modality=None) -> list[str | None]` replaces --checkpoint (tests,
    other model back ends); `encoder` replaces the MEP sentence encoder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    mode = argv.pop(0) if argv and argv[0] in MODES else "mer-unibench"
    if mode == "mep":
        return main_mep(argv, generate, encoder)
    if mode == "mme-emotion":
        return main_mme_emotion(argv, generate)
    if mode == "compare":
        return main_compare(argv)
    return main_mer_unibench(argv, generate)


if __name__ == "__main__":
    main()
