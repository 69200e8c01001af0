"""``llmembed``: the command line mirror of the Python API (extract, train, tune, finetune, evaluate, predict, cache).

Every option that sets a library argument is generated from its dataclass (`llmembed_hf.training_args`,
`ExtractionConfig`, `SearchSpace`) with transformers' `HfArgumentParser` machinery, so it has the library's default
and help text and nothing is typed twice. Options of the command itself (``--model``, ``--output-dir``, ...) are
declared here.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .features import ExtractionConfig
from .intent_slot.training_args import IntentSlotArguments, IntentSlotDataArguments
from .training_args import DataArguments, FinetuneArguments, HeadArguments, HeadTrainingArguments, OutputArguments
from .tuning import METRICS as TUNING_METRIC_NAMES
from .tuning import TUNING_VALIDATION_FRACTION, SearchSpace

PRESET_HELP = "a backbone preset's name (small, paper, ...), or an LLMEmbedConfig's config.json (or its folder)"
#: Data fields a command that reads one split (extract, evaluate) takes; ``--split`` names the split.
ONE_SPLIT_FIELDS = ("dataset", "text_column", "label_column", "text_pair_column")


# ----------------------------------------------------------------------------------------------------------------------
# Options generated from dataclasses
# ----------------------------------------------------------------------------------------------------------------------


def add_dataclass_options(
    parser: argparse.ArgumentParser, dataclass_type: type, only: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (), candidates: bool = False,
) -> None:
    """Add one ``--field-name`` option per field of ``dataclass_type`` (``only`` those, none of ``exclude``).

    ``candidates``: every option takes one or more values (a search space's candidate lists).
    """
    hints = typing.get_type_hints(dataclass_type)
    group = parser.add_argument_group(dataclass_type.__name__)
    for field in dataclasses.fields(dataclass_type):
        if not field.init or field.name in exclude or (only is not None and field.name not in only):
            continue
        if candidates:
            kind = typing.get_args(hints[field.name])[0]
            group.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, nargs="+", metavar="VALUE",
                               type=string_to_bool if kind is bool else kind, default=field.default_factory(),
                               help="candidate values")
            continue
        field = copy.copy(field)
        field.type = hints[field.name]
        HfArgumentParser._parse_dataclass_field(group, field)


def from_options(dataclass_type: type, args: argparse.Namespace, **values: Any) -> Any:
    """An instance of ``dataclass_type`` from the parsed options it generated (others keep their defaults)."""
    names = {f.name for f in dataclasses.fields(dataclass_type) if f.init}
    return dataclass_type(**{name: getattr(args, name) for name in names if hasattr(args, name)}, **values)


# ----------------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------------


def _load_model(name: str):
    """A saved head (folder or Hub id) or a fresh head of a named preset, with its backbones loaded."""
    from . import PRESETS, LLMEmbedForSequenceClassification

    if name in PRESETS and not Path(name).exists():  # a saved head in a folder named like a preset wins
        return LLMEmbedForSequenceClassification.from_preset(name)
    return LLMEmbedForSequenceClassification.from_pretrained(name).load_backbones()


def _pair_column(model: Any, args: argparse.Namespace) -> str | None:
    """The column of the second texts a saved head reads: ``--text-pair-column`` ('auto': text_pair) for a head of
    pairs; never any for a head of single texts."""
    from .data import TEXT_PAIR_COLUMN

    if model.config.pair_encoding is None or args.text_pair_column in (None, "none"):
        return None
    return TEXT_PAIR_COLUMN if args.text_pair_column == "auto" else args.text_pair_column


def cmd_extract(args: argparse.Namespace) -> dict[str, Any]:
    from accelerate import PartialState

    from .data import check_columns, check_text_pairs, load_split
    from .features import extract_features

    model = _load_model(args.model)
    dataset = load_split(args.dataset, args.split)
    pair_column = _pair_column(model, args)
    check_columns(dataset, args.split, args.text_column, None, pair_column)
    if pair_column is not None:
        check_text_pairs(dataset[pair_column], args.split, pair_column)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    features = extract_features(model, dataset, text_column=args.text_column, text_pair_column=pair_column,
                                config=from_options(ExtractionConfig, args))
    if args.output and PartialState().is_main_process:
        features.save_to_disk(args.output)
    return {"rows": len(features), "feature_size": model.config.feature_size, "output": args.output}


def _timings(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in timings.items()}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .trainer import train_head

    data = from_options(DataArguments, args)
    _, report = train_head(
        data, from_options(OutputArguments, args), preset=args.preset, training=from_options(HeadTrainingArguments, args),
        head=from_options(HeadArguments, args), extraction=from_options(ExtractionConfig, args),
        push_to_hub=args.push_to_hub,
    )
    return {"output_dir": args.output_dir, "num_train": report.num_train,
            "validation": report.validation_metrics, data.eval_split or "eval": report.eval_metrics,
            "timings_s": _timings(report.timings)}


def cmd_tune(args: argparse.Namespace) -> dict[str, Any]:
    from .tuning import tune_head

    report = tune_head(
        from_options(DataArguments, args), args.output_dir, preset=args.preset, trials=args.trials,
        search_space=from_options(SearchSpace, args), metric=args.metric, seed=args.seed,
        weight_decay=args.weight_decay, extraction=from_options(ExtractionConfig, args),
    )
    return {"output_dir": args.output_dir, "trials": len(report.trials), "num_train": report.num_train,
            "num_validation": report.num_validation, "metric": report.metric, "best": report.best,
            "train_command": report.train_command,
            "results": [str(Path(args.output_dir) / f"tuning_results.{ext}") for ext in ("json", "md")],
            "timings_s": _timings(report.timings)}


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from .data import load_labelled
    from .features import extract_features
    from .lexical import lexical_inputs
    from .metrics import COMPUTE_METRICS, problem_type_of
    from .trainer import check_pairs_match, predict_logits

    model = _load_model(args.model)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    problem_type = problem_type_of(model.config)
    split, _ = load_labelled(args.dataset, args.split, args.text_column, args.label_column, names,
                             max_samples=args.max_samples, problem_type=problem_type,
                             text_pair_column=_pair_column(model, args))
    check_pairs_match(model.config, split.pairs is not None)
    features = extract_features(model, split.texts, config=from_options(ExtractionConfig, args),
                                text_pairs=split.pairs)
    # inference logits: the temperature, the lexical view and the tuned thresholds applied, as the pipeline scores
    lexical = lexical_inputs(split.texts) if model.lexical_view is not None else None
    logits = predict_logits(model, features, lexical=lexical)
    metrics = COMPUTE_METRICS[problem_type]((logits, np.asarray(split.labels)))
    return {"split": args.split, "rows": len(split.texts), **metrics}


def cmd_finetune(args: argparse.Namespace) -> dict[str, Any]:
    from .finetuning import finetune

    data = from_options(DataArguments, args)
    hub_kwargs = {"private": args.private or None, "revision": args.revision, "create_pr": args.create_pr}
    _, _, report = finetune(
        args.backbone, data, from_options(OutputArguments, args), from_options(FinetuneArguments, args),
        score_top_level=args.score_top_level, push_to_hub=args.push_to_hub, hub_kwargs=hub_kwargs,
    )
    return {"output_dir": args.output_dir, "method": report.method, "backbone": report.backbone["model_id"],
            "num_train": report.num_train, "parameters": report.parameters,
            "validation": report.validation_metrics, data.eval_split or "eval": report.eval_metrics,
            "timings_s": _timings(report.timings)}


def cmd_finetune_intent_slot(args: argparse.Namespace) -> dict[str, Any]:
    from .intent_slot import finetune_intent_slot

    data = from_options(IntentSlotDataArguments, args)
    _, report = finetune_intent_slot(args.backbone, data, from_options(OutputArguments, args),
                                     from_options(IntentSlotArguments, args), push_to_hub=args.push_to_hub)
    metrics = {"validation": report.validation_metrics}
    if data.eval_split is not None:
        metrics[data.eval_split] = report.eval_metrics
    return {"output_dir": args.output_dir, "num_train": report.num_train, "best_epoch": report.best_epoch,
            "metrics": metrics, "parameters": report.parameters, "timings_s": _timings(report.timings),
            "peak_memory_mb": report.peak_memory_mb}


def _jsonl_row(path: Path, number: int, line: str, args: argparse.Namespace) -> dict[str, Any]:
    example = f'{{"{args.text_column}": "a text"}}'
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{number} is not valid JSON ({error.msg}); write one object per line, e.g. "
                         f"{example}.") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{number} is a JSON {type(row).__name__}, not an object; write one object per line, "
                         f"e.g. {example}.")
    if args.text_column not in row:
        raise ValueError(f"{path}:{number} has no {args.text_column!r} field (fields: {sorted(row)}).")
    return row


def _read_inputs(args: argparse.Namespace, pairs: bool = False) -> tuple[list[str], list[str] | None]:
    """The texts to classify (``--text``, then ``--input``), and for a head of pairs their second texts
    (``--text-pair``, JSONL field ``--text-pair-column``)."""
    texts, text_pairs = list(args.text or []), list(args.text_pair or [])
    if text_pairs and not pairs:
        raise ValueError("--text-pair is for heads trained on text pairs; this head classifies single texts.")
    if pairs and len(text_pairs) != len(texts):
        raise ValueError(f"this head classifies text pairs: give each --text a --text-pair (got {len(texts)} --text "
                         f"and {len(text_pairs)} --text-pair).")
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise FileNotFoundError(f"--input {path} does not exist.")
        if pairs and path.suffix != ".jsonl":
            raise ValueError(f"--input {path}: this head classifies text pairs, so give a .jsonl file with "
                             f'{{"{args.text_column}": ..., "{args.text_pair_column}": ...}} per line.')
        # split on "\n" only (read_text already turned "\r\n" into it): JSON text may hold U+2028, U+0085, ...
        # unescaped (predict --output writes them so), which str.splitlines() would cut a row at
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                texts.append(line)
                continue
            row = _jsonl_row(path, number, line, args)
            texts.append(row[args.text_column])
            if pairs:
                if not isinstance(row.get(args.text_pair_column), str):
                    raise ValueError(f"{path}:{number} has no {args.text_pair_column!r} text (fields: {sorted(row)}); "
                                     "this head classifies text pairs, so every row needs the second text.")
                text_pairs.append(row[args.text_pair_column])
    if not texts:
        raise ValueError("nothing to classify: pass --text TEXT (repeatable) or --input FILE (.txt lines or .jsonl).")
    return texts, text_pairs if pairs else None


def cmd_predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    from transformers import AutoConfig, pipeline

    pairs = getattr(AutoConfig.from_pretrained(args.model[0]), "pair_encoding", None) is not None
    texts, text_pairs = _read_inputs(args, pairs)
    inputs = texts if text_pairs is None else [{"text": t, "text_pair": p} for t, p in zip(texts, text_pairs)]
    echoed = [{"text": t} for t in texts] if text_pairs is None else inputs
    if len(args.model) > 1:  # several heads: each distinct view, and each backbone's pass, once for all of them
        from .multi_head import MultiHeadClassifier

        classifier = MultiHeadClassifier(args.model)
        if args.device:
            for head in classifier.heads:
                head.to(args.device)
        predictions = classifier(texts, batch_size=args.batch_size, text_pairs=text_pairs)
        results = [{**e, "predictions": p} for e, p in zip(echoed, predictions)]
    else:
        from .multi_head import prediction_of

        classifier = pipeline("text-classification", model=args.model[0], device=args.device)
        # every label's score (a multi-label head's labels are those reaching 0.5), else the top label's
        every_label = {"top_k": None} if classifier.model.config.problem_type == "multi_label_classification" else {}
        outputs = classifier(inputs, batch_size=args.batch_size, **every_label)
        results = [{**e, **prediction_of(classifier.model.config, scores)} for e, scores in zip(echoed, outputs)]
    if args.output:
        Path(args.output).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    return results


def cmd_cache(args: argparse.Namespace) -> dict[str, Any]:
    from .feature_store import cache_info, cache_prune

    if args.action == "info":
        return cache_info(args.store)
    return cache_prune(args.store, older_than_days=args.older_than_days, backbone=args.backbone,
                       dry_run=args.dry_run)


# ----------------------------------------------------------------------------------------------------------------------
# The parser
# ----------------------------------------------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it is None or the help already says what it is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmembed", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, help: str, **kwargs: Any) -> argparse.ArgumentParser:  # noqa: A002
        p = sub.add_parser(name, help=help, formatter_class=HelpFormatter, **kwargs)
        p.set_defaults(func=func)
        return p

    def output_dir(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--output-dir", "--output_dir", dest="output_dir", required=True, help=f"folder for {what}")

    def push(p: argparse.ArgumentParser) -> None:
        p.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", metavar="REPO",
                       help="upload the finished folder to this Hub repo")

    p = command("extract", cmd_extract, "extract and cache pooled features of one split")
    p.add_argument("--model", default="small", help="a preset name (small, paper, ...) or a saved head (a folder of "
                   "that name wins over the preset)")
    add_dataclass_options(p, DataArguments, only=("dataset", "text_column", "text_pair_column"))
    p.add_argument("--split", default="train", help="split to extract")
    p.add_argument("--max-samples", type=int, help="only the first N rows")
    p.add_argument("--output", help="also save the features as a datasets folder here")
    add_dataclass_options(p, ExtractionConfig)

    p = command("train", cmd_train, "extract (cached), train a head with Trainer, write a Hub-style folder")
    add_dataclass_options(p, DataArguments)
    p.add_argument("--preset", default="small", help=PRESET_HELP)
    add_dataclass_options(p, OutputArguments)
    add_dataclass_options(p, HeadArguments)
    add_dataclass_options(p, HeadTrainingArguments)
    add_dataclass_options(p, ExtractionConfig)
    push(p)

    p = command(
        "tune", cmd_tune, "search the head's hyper-parameters on cached features, scored on validation data",
        description="Extract features once (cached), then train TRIALS heads with different hyper-parameters and "
        "score each on --validation-split, else on a part carved from the training subset (the test split is never "
        "read). Trial 0 is the preset's defaults (when they lie in the grid); the others are distinct points of the "
        "grid of candidate values, drawn with --seed. Writes tuning_results.json and tuning_results.md to "
        "--output-dir; stdout is one JSON object with the best trial and the `llmembed train` command that trains it.",
    )
    add_dataclass_options(p, DataArguments, exclude=("eval_split", "max_eval_samples"))
    p.set_defaults(validation_fraction=TUNING_VALIDATION_FRACTION)
    p.add_argument("--preset", default="small", help=PRESET_HELP)
    output_dir(p, "tuning_results.json and tuning_results.md")
    p.add_argument("--trials", type=int, default=20, help="number of heads to train and compare")
    p.add_argument("--metric", default=None, choices=list(TUNING_METRIC_NAMES),
                   help="validation score that picks the best trial (default: accuracy; multi-label: macro_f1; "
                        "regression: spearman)")
    add_dataclass_options(p, HeadTrainingArguments, only=("weight_decay", "seed"))
    add_dataclass_options(p, SearchSpace, candidates=True)
    add_dataclass_options(p, ExtractionConfig)

    p = command("finetune", cmd_finetune, "fine-tune a backbone (LoRA or full) with Trainer; saves only what was "
                "trained")
    p.add_argument("--backbone", required=True,
                   help="a preset backbone name (minilm, mpnet, smollm2, ...), a local model folder or a Hub id")
    add_dataclass_options(p, DataArguments)
    add_dataclass_options(p, OutputArguments)
    add_dataclass_options(p, FinetuneArguments)
    p.add_argument("--score-top-level", action="store_true",
                   help="also score the eval split on the classes' top-level groups (20 Newsgroups as 7 classes)")
    push(p)
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--revision", help="with --push-to-hub: branch to commit to (default: main)")
    p.add_argument("--create-pr", action="store_true", help="with --push-to-hub: open a pull request instead")

    p = command("finetune-intent-slot", cmd_finetune_intent_slot,
                "train one backbone for intent detection + slot filling (frozen, LoRA or full)")
    p.add_argument("--backbone", required=True, help="a preset backbone name (minilm, ...), a local folder or a Hub id")
    add_dataclass_options(p, IntentSlotDataArguments)
    add_dataclass_options(p, OutputArguments)
    add_dataclass_options(p, IntentSlotArguments)
    push(p)

    p = command("evaluate", cmd_evaluate, "score a saved head on a labelled split (accuracy and macro-F1; multi-label: "
                "micro/macro/example-based F1 and subset accuracy; regression: Pearson, Spearman, MSE)")
    p.add_argument("--model", required=True, help="a saved head folder or Hub id")
    add_dataclass_options(p, DataArguments, only=ONE_SPLIT_FIELDS)
    p.add_argument("--split", default="test", help="split to score")
    p.add_argument("--max-samples", type=int, help="seeded random subset of N rows")
    add_dataclass_options(p, ExtractionConfig)

    p = command("predict", cmd_predict, "classify texts with pipeline('text-classification'); JSONL out: text, label "
                "and score; multi-label: the labels that apply and every label's score; regression: the score")
    p.add_argument("--model", required=True, action="append",
                   help="a saved head folder or Hub id; repeat it for several heads, which then share their backbones' "
                        "passes (each row gets every head's label and score)")
    p.add_argument("--text", action="append", help="a text to classify (repeatable)")
    p.add_argument("--text-pair", action="append", help="a head of text pairs: the second text of the pair of the "
                   "--text at the same position (repeatable)")
    p.add_argument("--input", help="a .txt file (one text per line) or .jsonl file (see --text-column)")
    p.add_argument("--text-column", default="text", help="JSONL field holding the text")
    p.add_argument("--text-pair-column", default="text_pair", help="a head of text pairs: JSONL field holding the "
                   "second text")
    p.add_argument("--output", help="write the JSONL rows here; always printed too")
    p.add_argument("--batch-size", type=int, default=16, help="pipeline batch size")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: pipeline's choice)")
    p = command("cache", cmd_cache, "the feature store: size per backbone (info), or remove backbones' vectors "
                "(prune)")
    p.add_argument("action", choices=["info", "prune"])
    p.add_argument("--store", help="the store's folder (default: <llmembed cache>/features)")
    p.add_argument("--older-than-days", type=float, help="prune: backbones not used for this many days")
    p.add_argument("--backbone", help="prune: one backbone (fingerprint prefix, name or model id; 'legacy' for "
                   "caches of earlier versions)")
    p.add_argument("--dry-run", action="store_true", help="prune: only list what would be removed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Progress bars and Trainer's log lines go to stderr, so stdout is one JSON document (or JSON lines).
        with contextlib.redirect_stdout(sys.stderr):
            result = args.func(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as error:
        print(f"llmembed {args.command}: error: {error}", file=sys.stderr)
        return 2
    if isinstance(result, list):
        for row in result:
            print(json.dumps(row, ensure_ascii=False))
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
