"""``llmembed``: the command line mirror of the Python API (extract, train, tune, evaluate, predict, ...)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_DATASET_HELP = "a folder of <split>.jsonl[.gz] (+ labels.json), a save_to_disk folder, or a Hub dataset id"


def _load_model(name: str):
    """A saved head (folder or Hub id) or a fresh head of a named preset, with its backbones loaded."""
    from . import PRESETS, LLMEmbedForSequenceClassification

    if name in PRESETS:
        return LLMEmbedForSequenceClassification.from_preset(name)
    return LLMEmbedForSequenceClassification.from_pretrained(name).load_backbones()


def _extraction_config(args: argparse.Namespace):
    from .features import ExtractionConfig

    return ExtractionConfig(max_tokens_per_batch=args.max_tokens_per_batch, dtype=args.feature_dtype)


def cmd_extract(args: argparse.Namespace) -> dict[str, Any]:
    from accelerate import PartialState

    from .data import check_columns, load_split
    from .features import extract_features

    model = _load_model(args.model)
    dataset = load_split(args.dataset, args.split)
    check_columns(dataset, args.split, args.text_column, None)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    features = extract_features(model, dataset, text_column=args.text_column, config=_extraction_config(args))
    if args.output and PartialState().is_main_process:
        features.save_to_disk(args.output)
    return {"rows": len(features), "feature_size": model.config.feature_size, "output": args.output}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .training import HeadTrainingArguments, train_head

    training = HeadTrainingArguments(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
                                     weight_decay=args.weight_decay, seed=args.seed)
    _, report = train_head(
        args.dataset, args.output_dir, preset=args.preset, text_column=args.text_column,
        label_column=args.label_column, train_split=args.train_split, eval_split=args.eval_split,
        validation_split=args.validation_split, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, sigma=args.sigma, training=training,
        extraction=_extraction_config(args), push_to_hub=args.push_to_hub,
    )
    return {"output_dir": args.output_dir, "num_train": report.num_train,
            "validation": report.validation_metrics, args.eval_split or "eval": report.eval_metrics,
            "timings_s": {k: round(v, 1) for k, v in report.timings.items()}}


def cmd_tune(args: argparse.Namespace) -> dict[str, Any]:
    from .tuning import SearchSpace, tune_head

    space = {name: values for name in SEARCH_OPTIONS if (values := getattr(args, name)) is not None}
    report = tune_head(
        args.dataset, args.output_dir, preset=args.preset, trials=args.trials,
        search_space=SearchSpace.from_dict(space), metric=args.metric, text_column=args.text_column,
        label_column=args.label_column, train_split=args.train_split, validation_split=args.validation_split,
        validation_fraction=args.validation_fraction,
        max_train_samples=args.max_train_samples, seed=args.seed, weight_decay=args.weight_decay,
        extraction=_extraction_config(args),
    )
    return {"output_dir": args.output_dir, "trials": len(report.trials), "num_train": report.num_train,
            "num_validation": report.num_validation, "metric": report.metric, "best": report.best,
            "results": [str(Path(args.output_dir) / f"tuning_results.{ext}") for ext in ("json", "md")],
            "timings_s": {k: round(v, 1) for k, v in report.timings.items()}}


def _switch(text: str) -> bool:
    """A command-line boolean: true/false (also yes/no, 1/0), any case."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; write true or false.")
    return value


#: Hyper-parameters ``llmembed tune`` searches, each with a ``--<name>`` option listing its candidate values.
SEARCH_OPTIONS = {"sigma": float, "epochs": int, "learning_rate": float, "dropout": float, "projection_dim": int,
                  "batch_size": int, "concat_encoder_views": _switch}


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_labelled
    from .features import extract_features
    from .training import compute_classification_metrics, predict_logits

    model = _load_model(args.model)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    split, _ = load_labelled(args.dataset, args.split, args.text_column, args.label_column, names,
                             max_samples=args.max_samples)
    features = extract_features(model, split.texts, config=_extraction_config(args))
    metrics = compute_classification_metrics((predict_logits(model, features), split.labels))
    return {"split": args.split, "rows": len(split.texts), **metrics}


def cmd_finetune(args: argparse.Namespace) -> dict[str, Any]:
    from .finetuning import FinetuneArguments, finetune

    finetuning = FinetuneArguments(
        method=args.method, lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=args.target_modules, epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
        max_length=args.max_length, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, seed=args.seed,
        validation_fraction=args.validation_fraction, fp16=args.fp16, bf16=args.bf16,
    )
    hub_kwargs = {"private": args.private or None, "revision": args.revision, "create_pr": args.create_pr}
    _, _, report = finetune(
        args.backbone, args.dataset, args.output_dir, finetuning, text_column=args.text_column,
        label_column=args.label_column, train_split=args.train_split, eval_split=args.eval_split,
        validation_split=args.validation_split, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, score_top_level=args.score_top_level,
        push_to_hub=args.push_to_hub, hub_kwargs=hub_kwargs,
    )
    return {"output_dir": args.output_dir, "method": args.method, "backbone": report.backbone["model_id"],
            "num_train": report.num_train, "parameters": report.parameters,
            "validation": report.validation_metrics, args.eval_split or "eval": report.eval_metrics,
            "timings_s": {k: round(v, 1) for k, v in report.timings.items()}}


def cmd_finetune_intent_slot(args: argparse.Namespace) -> dict[str, Any]:
    from .intent_slot import IntentSlotArguments, IntentSlotColumns, finetune_intent_slot

    training = IntentSlotArguments(
        mode=args.mode, intent_loss_weight=args.intent_weight, slot_loss_weight=args.slot_weight, epochs=args.epochs,
        learning_rate=args.lr, batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
        lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
        target_modules=args.target_modules.split(",") if args.target_modules else None,
    )
    _, report = finetune_intent_slot(
        args.backbone, args.dataset, args.output_dir, training,
        IntentSlotColumns(args.tokens_column, args.tags_column, args.label_column), train_split=args.train_split,
        validation_split=args.validation_split, eval_split=args.eval_split, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, push_to_hub=args.push_to_hub,
    )
    return {key: report[key] for key in ("output_dir", "num_train", "best_epoch", "metrics", "parameters",
                                         "timings_s", "peak_memory_mb")}


def _read_inputs(args: argparse.Namespace) -> list[str]:
    texts = list(args.text or [])
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise FileNotFoundError(f"--input {path} does not exist.")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                row = json.loads(line)
                if args.text_column not in row:
                    raise ValueError(f"{path}:{number} has no {args.text_column!r} field (fields: {sorted(row)}).")
                texts.append(row[args.text_column])
            else:
                texts.append(line)
    if not texts:
        raise ValueError("nothing to classify: pass --text TEXT (repeatable) or --input FILE (.txt lines or .jsonl).")
    return texts


def cmd_predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    from transformers import pipeline

    texts = _read_inputs(args)
    classifier = pipeline("text-classification", model=args.model, device=args.device)
    results = [{"text": t, **r} for t, r in zip(texts, classifier(texts, batch_size=args.batch_size))]
    if args.output:
        Path(args.output).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    return results


def build_parser() -> argparse.ArgumentParser:
    from .training import HeadTrainingArguments  # the package is imported already: this costs nothing

    head = HeadTrainingArguments()  # `llmembed train` defaults to the library's
    parser = argparse.ArgumentParser(prog="llmembed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def data_options(p: argparse.ArgumentParser, label: bool = True) -> None:
        p.add_argument("--dataset", required=True, help=DEFAULT_DATASET_HELP)
        p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
        if label:
            p.add_argument("--label-column", default="label", help="column holding the label (default: label)")

    def split_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--train-split", default="train", help="training split (default: train)")
        p.add_argument("--validation-split",
                       help="split for choosing the best epoch (default: 10%% of the training subset)")
        p.add_argument("--eval-split", default="test", help="split scored at the end (default: test; 'none' to skip)")
        p.add_argument("--max-train-samples", type=int, help="seeded random subset of the training split")
        p.add_argument("--max-eval-samples", type=int, help="seeded random subset of the evaluation split")

    def extraction_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--feature-dtype", default="float32", choices=["float32", "float16"],
                       help="storage dtype of cached features (default: float32)")
        p.add_argument("--max-tokens-per-batch", type=int, default=None,
                       help="padded-token budget of one extraction batch (bounds memory; default: 1024 on CPU, "
                            "8192 on GPUs)")

    p = sub.add_parser("extract", help="extract and cache pooled features of one split")
    p.add_argument("--model", default="small", help="a preset name (small, paper) or a saved head (default: small)")
    data_options(p, label=False)
    p.add_argument("--split", default="train", help="split to extract (default: train)")
    p.add_argument("--max-samples", type=int, help="only the first N rows")
    p.add_argument("--output", help="also save the features as a datasets folder here")
    extraction_options(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train", help="extract (cached), train a head with Trainer, write a Hub-style folder")
    data_options(p)
    p.add_argument("--preset", default="small", help="backbone preset (default: small)")
    p.add_argument("--output-dir", required=True, help="folder for the trained head, tokenizer, code and card")
    split_options(p)
    p.add_argument("--epochs", type=int, default=head.epochs, help=f"training epochs (default: {head.epochs})")
    p.add_argument("--lr", type=float, default=head.learning_rate,
                   help=f"learning rate (default: {head.learning_rate:g})")
    p.add_argument("--batch-size", type=int, default=head.batch_size,
                   help=f"training batch size (default: {head.batch_size})")
    p.add_argument("--weight-decay", type=float, default=head.weight_decay,
                   help=f"AdamW weight decay (default: {head.weight_decay:g})")
    p.add_argument("--sigma", type=float, help="power-normalisation scale (default: the preset's)")
    p.add_argument("--seed", type=int, default=head.seed,
                   help=f"seed of subsetting, splitting and training (default: {head.seed})")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the finished folder to this Hub repo")
    extraction_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "tune", help="search the head's hyper-parameters on cached features, scored on validation data",
        description="Extract features once (cached), then train TRIALS heads with different hyper-parameters and "
        "score each on --validation-split, else on a part carved from the training subset (the test split is never "
        "read). Trial 0 "
        "is the preset's defaults (when they lie in the grid); the others are distinct points of the grid of "
        "candidate values below, drawn with "
        "--seed. Writes tuning_results.json and tuning_results.md to --output-dir; stdout is one JSON object with "
        "the best trial.",
    )
    data_options(p)
    p.add_argument("--preset", default="small", help="backbone preset (default: small)")
    p.add_argument("--output-dir", required=True, help="folder for tuning_results.json and tuning_results.md")
    p.add_argument("--trials", type=int, default=20, help="number of heads to train and compare (default: 20)")
    p.add_argument("--metric", default="accuracy", choices=["accuracy", "macro_f1"],
                   help="validation score that picks the best trial (default: accuracy)")
    p.add_argument("--train-split", default="train", help="split to subset and carve validation from (default: train)")
    p.add_argument("--max-train-samples", type=int, help="seeded random subset of the training split")
    p.add_argument("--validation-split", help="the dataset's own split to score trials on (default: carve one)")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="fraction of the training subset held out to score trials when there is no "
                        "--validation-split (default: 0.2)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay of every trial (default: 0)")
    p.add_argument("--seed", type=int, default=42, help="seed of subsetting, splitting, sampling and training "
                   "(default: 42)")
    from .tuning import SearchSpace

    for name, kind in SEARCH_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, nargs="+", metavar="VALUE",
                       help=f"candidate values (default: {' '.join(map(str, getattr(SearchSpace(), name)))})")
    extraction_options(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("finetune", help="fine-tune a backbone (LoRA or full) with Trainer; saves only what was trained")
    p.add_argument("--method", default="lora", choices=["lora", "full"],
                   help="lora: train PEFT LoRA adapters and the classifier head; full: train every weight "
                        "(default: lora)")
    p.add_argument("--backbone", required=True,
                   help="a preset backbone name (minilm, mpnet, smollm2, ...), a local model folder or a Hub id")
    data_options(p)
    p.add_argument("--output-dir", required=True, help="folder for the adapter or model, tokenizer, card and report")
    split_options(p)
    p.add_argument("--validation-fraction", type=float, default=0.1,
                   help="fraction of the training subset held out to choose the best epoch when there is no "
                        "--validation-split (default: 0.1)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default: 3)")
    p.add_argument("--lr", type=float, help="learning rate (default: 5e-4 for lora, 5e-5 for full)")
    p.add_argument("--batch-size", type=int, default=16, help="training batch size (default: 16)")
    p.add_argument("--max-length", type=int, default=256, help="truncate texts to this many tokens (default: 256)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0)")
    p.add_argument("--warmup-ratio", type=float, default=0.0, help="linear warm-up fraction of the steps (default: 0)")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default: 8)")
    p.add_argument("--lora-alpha", type=int, default=16, help="LoRA scaling alpha (default: 16)")
    p.add_argument("--lora-dropout", type=float, default=0.1, help="dropout on the LoRA input (default: 0.1)")
    p.add_argument("--target-modules",
                   help="comma-separated module names to adapt, e.g. q_proj,v_proj (default: PEFT's per architecture)")
    p.add_argument("--fp16", action="store_true", help="fp16 mixed precision (CUDA GPUs only)")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPUs; slow on most CPUs)")
    p.add_argument("--score-top-level", action="store_true",
                   help="also score the eval split on the classes' top-level groups (20 Newsgroups as 7 classes)")
    p.add_argument("--seed", type=int, default=42, help="seed of subsetting, splitting and training (default: 42)")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the finished folder to this Hub repo")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--revision", help="with --push-to-hub: branch to commit to (default: main)")
    p.add_argument("--create-pr", action="store_true", help="with --push-to-hub: open a pull request instead")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("finetune-intent-slot",
                       help="train one backbone for intent detection + slot filling (frozen, LoRA or full)")
    p.add_argument("--backbone", required=True, help="a preset backbone name (minilm, ...), a local folder or a Hub id")
    p.add_argument("--dataset", required=True, help=DEFAULT_DATASET_HELP + " (+ slot_labels.json)")
    p.add_argument("--tokens-column", default="tokens", help="column of word lists (default: tokens)")
    p.add_argument("--tags-column", default="ner_tags", help="column of BIO tag ids, one per word (default: ner_tags)")
    p.add_argument("--label-column", default="label", help="column of the intent (default: label)")
    p.add_argument("--output-dir", required=True, help="folder for the model, tokenizer, code, card and report")
    split_options(p)
    p.add_argument("--mode", default="lora", choices=["frozen", "lora", "full"],
                   help="frozen: train the heads only; lora: LoRA adapters + heads; full: everything (default: lora)")
    p.add_argument("--intent-weight", type=float, default=1.0, help="intent loss weight; 0 trains slots alone")
    p.add_argument("--slot-weight", type=float, default=1.0, help="slot loss weight; 0 trains the intent alone")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default: 5)")
    p.add_argument("--lr", type=float, help="learning rate (default: 5e-3 frozen, 3e-3 lora, 1e-4 full)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size (default: 32)")
    p.add_argument("--max-length", type=int, default=64, help="truncate utterances to this many tokens (default: 64)")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default: 8; alpha is twice the rank)")
    p.add_argument("--target-modules", help="comma-separated modules to adapt (default: PEFT's per architecture)")
    p.add_argument("--seed", type=int, default=42, help="seed of subsetting and training (default: 42)")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the finished folder to this Hub repo")
    p.set_defaults(func=cmd_finetune_intent_slot)

    p = sub.add_parser("evaluate", help="accuracy and macro-F1 of a saved head on a labelled split")
    p.add_argument("--model", required=True, help="a saved head folder or Hub id")
    data_options(p)
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--max-samples", type=int, help="seeded random subset of N rows")
    extraction_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify texts with pipeline('text-classification'); JSONL out")
    p.add_argument("--model", required=True, help="a saved head folder or Hub id")
    p.add_argument("--text", action="append", help="a text to classify (repeatable)")
    p.add_argument("--input", help="a .txt file (one text per line) or .jsonl file (see --text-column)")
    p.add_argument("--text-column", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--output", help="write JSONL (text, label, score) here; always printed too")
    p.add_argument("--batch-size", type=int, default=16, help="pipeline batch size (default: 16)")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda:0 (default: pipeline's choice)")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "eval_split", None) == "none":
        args.eval_split = None
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
