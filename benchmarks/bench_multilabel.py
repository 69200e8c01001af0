"""Multi-label accuracy on GoEmotions: the fused head against TF-IDF one-vs-rest logistic regression.

The fused head is what ``llmembed train`` makes of a multi-label data set (`train_head`: BCE, the epoch chosen on
the official validation split, ``threshold_folds`` more heads each trained without one fold of the training rows,
kept beside the head when that lowers the validation loss (the model's logits are then the mean of all of them;
the rows say "where kept", the output names the seeds that kept them), each label's decision threshold tuned on the
validation split and the training rows' out-of-fold scores), once per seed; its test scores are at the tuned
thresholds, and, for reference, at thresholds tuned on the validation split alone and at 0.5, and those of its head
alone (the model without the fold heads, from the same training). Without ``--lexical-view`` the model is trained
with ``lexical_view=False`` (as every run before 2026-12-03 10:00 UTC, when the lexical view became the default); with
it, the model also blends its lexical view (`HeadTrainingArguments.lexical_view`), the rows of the same model without
it follow, and the other LLMEmbed rows are without it. The anchor is TF-IDF 1-2-grams (sublinear tf,
min_df=2) with one logistic regression per label on the same training rows, its thresholds tuned on the same
validation split: one threshold per label (the head's procedure, `metrics.fit_thresholds`) and one shared threshold
(the best of a 0.01 grid by validation macro-F1). Everything is scored on the test split, which nothing else
reads; the table gives mean ± standard deviation over the seeds (a seed draws the ``--max-train`` subset, the head's
initial weights and its training order).

    python benchmarks/bench_multilabel.py --preset small --seeds 42 43 44
    python benchmarks/bench_multilabel.py --preset small --max-train 5000 --json goemotions.json
    python benchmarks/bench_multilabel.py --preset small --add-backbones minilm mpnet   # three views fused
    python benchmarks/bench_multilabel.py --preset small-layers --threshold-folds 10 --seeds 42 --tfidf skip
    python benchmarks/bench_multilabel.py --preset small-layers --lexical-view --seeds 42 43 44 --tfidf skip
    # on a GPU machine with the backbones in local folders <root>/<name> (e.g. fp16 copies):
    python benchmarks/bench_multilabel.py --device cuda --backbone-root /root/wx/weights
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_common import DATASETS, RESULTS, machine, write_sections
from transformers import set_seed

from llmembed_hf import (
    PRESETS,
    ExtractionConfig,
    HeadTrainingArguments,
    LLMEmbedConfig,
    LLMEmbedForSequenceClassification,
    train_head,
)
from llmembed_hf.backbones import preset_backbone_spec
from llmembed_hf.data import load_classification_splits
from llmembed_hf.metrics import fit_thresholds, multi_label_scores, sigmoid
from llmembed_hf.trainer import head_config, predict_logits, split_features, threshold_fold_rows
from llmembed_hf.training_args import DataArguments, OutputArguments

TITLE = "## Multi-label: GoEmotions, fused head vs TF-IDF one-vs-rest logistic regression"
SCORES = ("macro_f1", "micro_f1", "samples_f1", "subset_accuracy")
HEAD = "LLMEmbed fused head + its fold heads where kept, averaged (thresholds tuned on validation + out-of-fold training rows)"
HEAD_LEXICAL = ("LLMEmbed fused head + its fold heads where kept + its lexical view (`--lexical-view`: weight and "
                "thresholds tuned on validation + out-of-fold training rows)")
HEAD_WITHOUT_LEXICAL = ("the same model without its lexical view (thresholds tuned on validation + out-of-fold "
                        "training rows)")
HEAD_VALIDATION_ONLY = "LLMEmbed fused head + its fold heads where kept, averaged (thresholds tuned on validation alone)"
HEAD_AT_HALF = "LLMEmbed fused head + its fold heads where kept, averaged (threshold 0.5)"
ONE_HEAD = "LLMEmbed fused head alone (thresholds tuned on validation + out-of-fold training rows)"
ONE_HEAD_VALIDATION_ONLY = "LLMEmbed fused head alone (thresholds tuned on validation alone)"
BLEND = ("LLMEmbed model's and TF-IDF's probabilities blended (weight and thresholds tuned on validation alone; "
         "exploratory)")
TFIDF_PER_LABEL = "TF-IDF 1-2-grams + one-vs-rest logistic regression (thresholds tuned per label)"
TFIDF_SHARED = "TF-IDF 1-2-grams + one-vs-rest logistic regression (one threshold tuned)"


def preset_config(args: argparse.Namespace) -> LLMEmbedConfig | str:
    """The preset by name or config.json, plus the ``--add-backbones`` views, with each backbone loaded from
    ``<backbone_root>/<name>`` if asked."""
    if not args.backbone_root and not args.add_backbones:
        return args.preset
    config = (LLMEmbedConfig.from_preset(args.preset) if args.preset in PRESETS
              else LLMEmbedConfig.from_pretrained(args.preset))
    for name in args.add_backbones:
        spec = preset_backbone_spec(name)
        if spec is None:
            raise SystemExit(f"--add-backbones: no preset has a backbone called {name!r}")
        config.backbones = [*config.backbones, spec.to_dict()]
    if args.backbone_root:  # e.g. fp16 copies on a GPU machine: other weights, sha256 not checked
        for spec in config.backbones:
            spec.update(model_id=str(Path(args.backbone_root) / spec["name"]), weights_sha256=None, revision=None)
    return config


def tfidf_probabilities(splits: Any, C: float, seed: int) -> dict[str, np.ndarray]:
    """Validation and test probabilities of one-vs-rest logistic regression on TF-IDF features of the training rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    train_x = vectorizer.fit_transform(splits.train.texts)
    train_y = np.asarray(splits.train.labels, dtype=bool)
    probabilities = {name: np.zeros((len(split.texts), train_y.shape[1])) for name, split in
                     (("validation", splits.validation), ("test", splits.evaluation))}
    features = {name: vectorizer.transform(split.texts) for name, split in
                (("validation", splits.validation), ("test", splits.evaluation))}
    for label in range(train_y.shape[1]):
        if train_y[:, label].all() or not train_y[:, label].any():  # one class only: a constant score
            for name in probabilities:
                probabilities[name][:, label] = float(train_y[:, label].mean())
            continue
        model = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(train_x, train_y[:, label])
        for name in probabilities:
            probabilities[name][:, label] = model.predict_proba(features[name])[:, 1]
    return probabilities


def tfidf_rows(probabilities: dict[str, np.ndarray], splits: Any) -> dict[str, dict[str, float]]:
    """Test scores of the TF-IDF models, thresholds tuned on validation: one per label and one shared."""
    validation_y, test_y = np.asarray(splits.validation.labels), np.asarray(splits.evaluation.labels)
    per_label = np.asarray(fit_thresholds(probabilities["validation"], validation_y))
    grid = np.round(np.arange(0.01, 1.0, 0.01), 2)
    shared = max(grid, key=lambda t: multi_label_scores(probabilities["validation"] >= t, validation_y)["macro_f1"])
    return {TFIDF_PER_LABEL: multi_label_scores(probabilities["test"] >= per_label, test_y),
            TFIDF_SHARED: {**multi_label_scores(probabilities["test"] >= shared, test_y), "threshold": float(shared)}}


def blend_row(model_logits: dict[str, np.ndarray], tfidf: dict[str, np.ndarray], splits: Any) -> dict[str, float]:
    """Test scores of ``(1 - w) * model + w * TF-IDF`` probabilities, ``w`` (a 0.1 grid up to 0.5) and each label's
    threshold tuned on validation (the weight by validation macro-F1 at the thresholds tuned there): would a lexical
    view add what the frozen backbones miss? Scored against the model's row with validation-only thresholds."""
    gold = {"validation": np.asarray(splits.validation.labels), "test": np.asarray(splits.evaluation.labels)}

    def blended(name: str, weight: float) -> np.ndarray:
        return (1 - weight) * sigmoid(model_logits[name]) + weight * tfidf[name]

    def tuned(weight: float) -> tuple[float, np.ndarray]:
        validation = blended("validation", weight)
        thresholds = np.asarray(fit_thresholds(validation, gold["validation"]))
        return multi_label_scores(validation >= thresholds, gold["validation"])["macro_f1"], thresholds

    candidates = {float(w): tuned(w) for w in np.round(np.arange(0.0, 0.51, 0.1), 1)}
    weight = max(candidates, key=lambda w: candidates[w][0])
    return {**multi_label_scores(blended("test", weight) >= candidates[weight][1], gold["test"]), "weight": weight}


def one_row_ms(model: LLMEmbedForSequenceClassification, row: torch.Tensor, calls: int = 300) -> float:
    """Median wall milliseconds of ``model``'s forward on one row of pooled features (after 20 warm-up calls)."""
    model.eval()
    times = []
    with torch.inference_mode():
        for call in range(calls + 20):
            started = time.perf_counter()
            model(pooled_features=row)
            if call >= 20:
                times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times))


def head_rows(model: LLMEmbedForSequenceClassification, splits: Any, extraction: ExtractionConfig,
              training: HeadTrainingArguments, default: dict[str, float]
              ) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, np.ndarray]]:
    """Test scores of the trained model (the mean of its head and fold heads) at thresholds tuned on its validation
    logits alone, and of its head alone at thresholds tuned as `train_head` tunes them (validation + the training
    rows' out-of-fold logits, here re-scored by the kept fold heads) and on validation alone: what the fold heads
    add, beside the default's scores (``default``), from the same training; and the median milliseconds of both on one
    row (the head's share of serving one text, beside its backbones'). A model that did not keep its fold heads
    (`trainer.fold_heads_help`) is its head alone: those rows are the model's. Also returns the model's raw
    validation and test logits."""
    parts = {"train": splits.train, "validation": splits.validation, "test": splits.evaluation}
    features = {name: split_features(model, split, extraction) for name, split in parts.items()}
    gold = {name: np.asarray(split.labels) for name, split in parts.items()}
    tuned, kept, blend = model.config.decision_thresholds, model.fold_heads, model.config.lexical_blend
    model.config.decision_thresholds = model.config.lexical_blend = None
    try:
        row = features["test"][:1]["pooled_features"]
        ensemble = {name: predict_logits(model, features[name]) for name in ("validation", "test")}
        latency = {"one_row_ms": one_row_ms(model, row)} if kept else {}
        model.fold_heads = torch.nn.ModuleList()
        alone = {name: predict_logits(model, features[name]) for name in ("validation", "test")}
        latency["one_row_head_alone_ms"] = one_row_ms(model, row)
    finally:
        model.config.decision_thresholds, model.fold_heads, model.config.lexical_blend = tuned, kept, blend

    def scores(logits: dict[str, np.ndarray], extra: np.ndarray | None = None) -> dict[str, float]:
        fitted, labels = logits["validation"], gold["validation"]
        if extra is not None:
            fitted, labels = np.concatenate([fitted, extra]), np.concatenate([labels, gold["train"]])
        thresholds = np.asarray(fit_thresholds(sigmoid(fitted), labels))
        return multi_label_scores(sigmoid(logits["test"]) >= thresholds, gold["test"])

    if not kept:
        return {HEAD_VALIDATION_ONLY: scores(ensemble), ONE_HEAD: default,
                ONE_HEAD_VALIDATION_ONLY: scores(alone)}, latency, ensemble
    out_of_fold = np.zeros_like(gold["train"], dtype=np.float32)
    pooled = features["train"][:]["pooled_features"]
    with torch.inference_mode():
        for head, rows in zip(kept, threshold_fold_rows(len(pooled), training.threshold_folds, training.seed)):
            out_of_fold[rows] = head.eval()(pooled[rows].to(torch.float32)).numpy()
    return {HEAD_VALIDATION_ONLY: scores(ensemble), ONE_HEAD: scores(alone, out_of_fold),
            ONE_HEAD_VALIDATION_ONLY: scores(alone)}, latency, ensemble


def run_seed(seed: int, args: argparse.Namespace, work: Path, keep: list[Any]) -> dict[str, Any]:
    data = DataArguments(args.dataset, validation_split="validation", max_train_samples=args.max_train,
                         max_eval_samples=args.max_test, problem_type="multi_label_classification")
    splits = load_classification_splits(data, seed=seed)
    result: dict[str, Any] = {"seed": seed, "num_train": len(splits.train.texts),
                              "num_validation": len(splits.validation.texts), "num_test": len(splits.evaluation.texts),
                              "num_labels": len(splits.names), "rows": {}}
    if args.tfidf != "only":
        config = head_config(preset_config(args), None, splits.names, splits.problem_type)
        set_seed(seed)  # the head's initial weights, as `train_head` seeds them
        model = LLMEmbedForSequenceClassification.from_backbones(config, **({"device": args.device} if args.device
                                                                           else {}))
        keep.append(model)  # holds the loaded backbones for the next seeds (heads on the same backbones share them)
        training = HeadTrainingArguments(seed=seed, **({"epochs": args.epochs} if args.epochs else {}),
                                         **({"threshold_folds": args.threshold_folds}
                                            if args.threshold_folds is not None else {}),
                                         lexical_view=args.lexical_view)
        extraction = ExtractionConfig(max_tokens_per_batch=args.max_tokens_per_batch,
                                      max_batch_size=args.max_batch_size)
        _, report = train_head(data, OutputArguments(str(work / f"head-{seed}"), overwrite=True), model=model,
                               training=training, extraction=extraction)
        test_split = report.thresholds["splits"]["test"]
        if args.lexical_view:
            lexical = report.lexical_view
            result["rows"][HEAD_LEXICAL] = dict(report.eval_metrics)
            result["rows"][HEAD_WITHOUT_LEXICAL] = {key: lexical["splits"]["test"][f"{key}_without"] for key in SCORES}
            result.update(lexical_weight=lexical.get("weight"), lexical_vocab_size=lexical.get("vocab_size"),
                          lexical_s=lexical.get("fit_s"))
            default = result["rows"][HEAD_WITHOUT_LEXICAL]
        else:
            result["rows"][HEAD] = default = dict(report.eval_metrics)
            result["rows"][HEAD_AT_HALF] = {key: test_split[f"{key}_before"] for key in SCORES}
        rows, latency, model_logits = head_rows(model, splits, extraction, training, default)
        result["rows"].update(rows)
        result.update(latency, fold_heads=report.thresholds["fold_heads"],
                      fold_heads_validation=report.thresholds["fold_heads_validation_loss"])
        result.update(extract_s=report.timings["extract_s"], head_train_s=report.timings["train_s"],
                      threshold_tuning_s=report.thresholds["tuning_s"], threshold_folds=report.thresholds["folds"],
                      validation_macro_f1=report.validation_metrics["eval_macro_f1"])
    if args.tfidf != "skip":
        started = time.perf_counter()
        tfidf = tfidf_probabilities(splits, args.tfidf_c, seed)
        result["rows"].update(tfidf_rows(tfidf, splits))
        if args.tfidf == "run":
            result["rows"][BLEND] = blend_row(model_logits, tfidf, splits)
        result["tfidf_s"] = time.perf_counter() - started
    return result


def markdown(run: dict[str, Any]) -> str:
    results, info = run["results"], run["machine"]
    first = results[0]
    device = info["gpu"] or f"{info['nproc']} CPU cores"
    changed = [f"{run['epochs']} epochs" if run["epochs"] else "",
               f"{run['threshold_folds']} threshold folds" if run.get("threshold_folds") is not None else ""]
    epochs = f" with {' and '.join(c for c in changed if c)}" if any(changed) else ""
    head = (f" Preset `{run['preset']}`, `HeadTrainingArguments` defaults{epochs}." if HEAD in first["rows"]
            else "")
    lines = [
        TITLE, "",
        f"Command: `{run['command']}` ({device}, {info['date']}; transformers {info['transformers']}).", "",
        f"GoEmotions (simplified, official splits): train {first['num_train']:,}, validation "
        f"{first['num_validation']:,}, test {first['num_test']:,}; {first['num_labels']} labels.{head} "
        f"Seeds {', '.join(str(r['seed']) for r in results)}. Test scores (%), mean ± standard deviation over the "
        "seeds. Goal of issue 21: macro-F1 >= 52, micro-F1 >= 58 (the GoEmotions paper's fine-tuned BERT-base: "
        "macro-F1 46).", "",
        "| method | macro-F1 | micro-F1 | example-based F1 | subset accuracy |",
        "|---|---:|---:|---:|---:|",
    ]
    methods = list(dict.fromkeys(method for result in results for method in result["rows"]))
    for method in methods:
        values = [[result["rows"][method][key] for key in SCORES] for result in results if method in result["rows"]]
        mean, std = 100 * np.mean(values, axis=0), 100 * np.std(values, axis=0)
        lines.append(f"| {method} | " + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in zip(mean, std)) + " |")
    times = []
    for key, name in (("extract_s", "feature extraction (first seed; later seeds reuse the cache)"),
                      ("head_train_s", "head training per seed"),
                      ("threshold_tuning_s", "threshold tuning per seed (its fold heads' training included, and "
                                             "the lexical view's where fitted)"),
                      ("lexical_s", "the lexical view per seed (six fits: all training rows and each fold's)"),
                      ("tfidf_s", "TF-IDF baselines per seed")):
        seconds = [result[key] for result in results if key in result]
        if seconds:
            times.append(f"{name} {seconds[0] if key == 'extract_s' else np.mean(seconds):.0f} s")
    ensembles = [r for r in results if "one_row_ms" in r]
    if ensembles:
        times.append("the forward of a model with its fold heads on one row of features (median per seed, then their "
                     f"mean over the seeds that kept them) {np.mean([r['one_row_ms'] for r in ensembles]):.2f} ms, "
                     f"its head alone {np.mean([r['one_row_head_alone_ms'] for r in ensembles]):.2f} ms")
    shared = [result["rows"][TFIDF_SHARED]["threshold"] for result in results if TFIDF_SHARED in result["rows"]]
    if shared:
        lines += ["", f"The shared TF-IDF threshold chosen on validation: {sorted(set(shared))}."]
    lexical = [r for r in results if "lexical_weight" in r]
    if lexical:
        lines += ["", "The lexical view's weight chosen per seed: " + ", ".join(
            f"seed {r['seed']} {r['lexical_weight']} ({r['lexical_vocab_size']:,} n-grams)" for r in lexical) + "."]
    weights = [result["rows"][BLEND]["weight"] for result in results if BLEND in result["rows"]]
    if weights:
        lines += ["", f"TF-IDF's weight in the blend, chosen on validation per seed: {weights}."]
    kept = [r for r in results if r.get("fold_heads_validation")]
    if kept:
        def decision(r: dict[str, Any]) -> str:
            scores = r["fold_heads_validation"]
            return (f"seed {r['seed']} {'yes' if r['fold_heads'] else 'no'} ({scores['with_fold_heads']:.5f} / "
                    f"{scores['head_alone']:.5f})")

        lines += ["", "Fold heads kept (validation loss with them / the head alone): "
                  + ", ".join(decision(r) for r in kept) + "."]
    lines += ["", f"Times: {', '.join(times)}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(DATASETS / "goemotions"), help="a GoEmotions-like folder")
    parser.add_argument("--preset", default="small", help="a preset's name or an LLMEmbedConfig's config.json")
    parser.add_argument("--add-backbones", nargs="+", default=[], metavar="NAME",
                        help="views fused with the preset's: backbones of other presets by name (minilm, mpnet, ...)")
    parser.add_argument("--max-train", type=int, default=None, help="seeded training subset (default: all rows)")
    parser.add_argument("--max-test", type=int, default=None, help="seeded test subset (default: all rows)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--epochs", type=int, default=None, help="head epochs (default: HeadTrainingArguments)")
    parser.add_argument("--threshold-folds", type=int, default=None,
                        help="folds whose heads score the training rows for thresholds and may join the head "
                             "(default: HeadTrainingArguments)")
    parser.add_argument("--lexical-view", action="store_true",
                        help="train with HeadTrainingArguments(lexical_view=True), the library's default for "
                             "multi-label data, and add the rows without it (default: lexical_view=False)")
    parser.add_argument("--device", default=None, help="where the backbones run (cuda on a GPU machine)")
    parser.add_argument("--backbone-root", default=None, help="load each backbone from <root>/<name> instead")
    parser.add_argument("--tfidf", choices=["run", "skip", "only"], default="run",
                        help="TF-IDF baselines: with the head, skipped, or alone (no backbones needed)")
    parser.add_argument("--tfidf-c", type=float, default=10.0, help="inverse regularisation of the TF-IDF models")
    parser.add_argument("--max-tokens-per-batch", type=int, default=ExtractionConfig.max_tokens_per_batch)
    parser.add_argument("--max-batch-size", type=int, default=ExtractionConfig.max_batch_size)
    parser.add_argument("--json", default=None, help="also write the raw results here (after every seed)")
    parser.add_argument("--output", default=str(RESULTS), help="the RESULTS.md whose section is replaced")
    args = parser.parse_args(argv)

    command = "python benchmarks/bench_multilabel.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    preset = args.preset if args.preset in PRESETS else Path(args.preset).name
    run = {"command": command, "preset": " + ".join([preset, *args.add_backbones]),
           "epochs": args.epochs, "threshold_folds": args.threshold_folds, "results": [],
           "machine": {**machine(), "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"}}
    keep: list[Any] = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            print(f"[bench_multilabel] seed {seed}", file=sys.stderr, flush=True)
            run["results"].append(run_seed(seed, args, Path(work), keep))
            print(json.dumps(run["results"][-1]["rows"], indent=1), file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(run, indent=1))
    write_sections(Path(args.output), [(TITLE, markdown(run))])


if __name__ == "__main__":
    main()
