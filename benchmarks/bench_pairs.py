#!/usr/bin/env python
"""Text pairs on MRPC: the fused head with each pair encoding vs each backbone alone and TF-IDF.

On the official MRPC train/test split (``../shared/datasets/mrpc``; no validation split, so 10% of the training subset
picks the head's epoch), with the preset given:

* the fused head three ways (`LLMEmbedConfig.pair_encoding`): every backbone ``joint`` (its own pair encoding of
  the two sentences in one pass), every backbone ``siamese`` (each sentence alone, each view becoming [u, v, |u-v|,
  u*v]), and the default (LLMs joint, encoders siamese). The feature store computes each sentence once per backbone
  for the siamese parts and each pair once for the joint ones, so the three heads share most of the extraction;
* each backbone alone, both ways: logistic regression (bench_accuracy's probe: scikit-learn's objective, C=1, on
  standardised features) on its joint vector, and on its siamese features [u, v, |u-v|, u*v]; an LLM's pooled layers
  are averaged (per part), as LLMEmbed's mean LLM view;
* TF-IDF: logistic regression on (|u-v|, u*v, cosine) of the two sentences' TF-IDF vectors (1-2-grams, sublinear tf,
  min_df=2, fitted on the training sentences of both sides; scikit-learn, C=10).

Accuracy and F1 of the positive class ("equivalent", as MRPC is usually reported), in percent, on the test split.

    python benchmarks/bench_pairs.py                       # small preset, all 4,076 / 1,725 pairs
    python benchmarks/bench_pairs.py --max-train 1000 --max-test 500 --device cuda --json out.json
    python benchmarks/bench_pairs.py --preset path/to/config.json --max-train 40 --max-test 20 --epochs 1 \\
        --output /tmp/RESULTS.md                           # a smoke run on a tiny preset
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
from bench_accuracy import logistic_probe
from bench_common import DATASETS, RESULTS, machine, write_sections

TITLE = "## Text pairs: MRPC"
TFIDF_ROW = "TF-IDF (abs(u-v), u*v, cosine) + logistic regression"
#: The goal of issue 21 on MRPC test (accuracy, F1 in %), beside beating every single backbone and TF-IDF.
GOAL = (78.0, 84.0)

#: The fused heads compared, by row name: `HeadArguments.pair_encoding`.
HEAD_VARIANTS = {
    "LLMEmbed fused head, joint (every backbone)": "joint",
    "LLMEmbed fused head, siamese (every backbone)": "siamese",
    "LLMEmbed fused head, default (LLM joint, encoders siamese)": "default",
}


def scores(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and F1 of the positive class (label 1)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(labels, predictions)), "f1": float(f1_score(labels, predictions))}


def probe_parts(features: np.ndarray, spec: Any, columns: slice, parts: int) -> np.ndarray:
    """A backbone's probe input from its columns: each of its ``parts`` (1 joint, 4 siamese) with the pooled layers
    averaged, side by side."""
    block = features[:, columns].reshape(len(features), parts, spec.num_views, spec.hidden_size)
    return block.mean(axis=2).reshape(len(features), parts * spec.hidden_size)


def tfidf_pair_baseline(train: Any, test: Any, seed: int) -> np.ndarray:
    """Logistic regression on (|u-v|, u*v, cosine) of the two sides' TF-IDF vectors; test predictions."""
    from scipy.sparse import csr_matrix, hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2).fit(train.texts + train.pairs)

    def features(split: Any):
        u, v = vectorizer.transform(split.texts), vectorizer.transform(split.pairs)  # rows are L2-normalised
        product = u.multiply(v)
        cosine = csr_matrix(np.asarray(product.sum(axis=1)))
        return hstack([abs(u - v), product, cosine]).tocsr()

    model = LogisticRegression(C=10.0, max_iter=2000, random_state=seed)
    return model.fit(features(train), train.labels).predict(features(test))


def fused_heads(splits: Any, args: argparse.Namespace, loader_kwargs: dict[str, Any], work: Path,
                rows: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """Train every head variant on its pair features (one store: shared vectors are computed once); returns the
    features of the all-joint and all-siamese heads (for the probes) and the timings."""
    from transformers import set_seed

    from llmembed_hf import ExtractionConfig, HeadArguments, HeadTrainingArguments, LLMEmbedForSequenceClassification
    from llmembed_hf.trainer import fit_head, head_config, predict_logits, split_features

    extraction = ExtractionConfig(dtype="float32", max_tokens_per_batch=args.max_tokens_per_batch,
                                  max_batch_size=args.max_batch_size)
    test_y = np.asarray(splits.evaluation.labels)
    kept: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for variant, pair_encoding in HEAD_VARIANTS.items():
        config = head_config(args.preset, HeadArguments(pair_encoding=pair_encoding), splits.names, pairs=True)
        set_seed(args.seed)
        model = LLMEmbedForSequenceClassification.from_backbones(config, **loader_kwargs)
        started = time.perf_counter()
        features = {name: split_features(model, split, extraction) for name, split in
                    (("train", splits.train), ("validation", splits.validation), ("test", splits.evaluation))}
        timings[f"extract_s[{pair_encoding}]"] = time.perf_counter() - started
        started = time.perf_counter()
        training = HeadTrainingArguments(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
        fit_head(model, features["train"], features["validation"], work / pair_encoding, training)
        timings[f"head_train_s[{pair_encoding}]"] = time.perf_counter() - started
        rows[variant] = scores(predict_logits(model, features["test"]).argmax(-1), test_y)
        print(f"[bench_pairs] {variant}: {rows[variant]}", file=sys.stderr, flush=True)
        if pair_encoding in ("joint", "siamese"):
            kept[pair_encoding] = (model.config, {name: f.with_format("numpy")[:]["pooled_features"]
                                                  for name, f in features.items()})
    return kept, timings


def run(args: argparse.Namespace, loader_kwargs: dict[str, Any], work: Path) -> dict[str, Any]:
    from llmembed_hf.data import load_classification_splits
    from llmembed_hf.training_args import DataArguments

    data = DataArguments(str(args.dataset), max_train_samples=args.max_train, max_eval_samples=args.max_test)
    splits = load_classification_splits(data, seed=args.seed)
    if splits.text_pair_column is None:
        raise SystemExit(f"{args.dataset} has no text_pair column: this benchmark scores text pairs.")
    train_y, test_y = np.asarray(splits.train.labels), np.asarray(splits.evaluation.labels)
    result = {"dataset": Path(args.dataset).name, "preset": str(args.preset), "num_train": len(splits.train.texts),
              "num_validation": len(splits.validation.texts), "num_test": len(splits.evaluation.texts),
              "validation": splits.validation_name, "majority": float(max(test_y.mean(), 1 - test_y.mean())),
              "rows": {}}
    rows = result["rows"]
    if args.tfidf != "only":
        kept, timings = fused_heads(splits, args, loader_kwargs, work, rows)
        result.update(timings)
        result["backbones"] = [spec.name for spec in kept["joint"][0].backbone_specs]
        device = loader_kwargs.get("device") or "cpu"
        for pair_encoding, (config, features) in kept.items():
            parts = 4 if pair_encoding == "siamese" else 1
            for spec in config.backbone_specs:
                columns = config.backbone_columns[spec.name]
                train_x, test_x = (probe_parts(features[split], spec, columns, parts) for split in ("train", "test"))
                # the probe trains on train + validation: it has no epoch to choose
                train_x = np.concatenate([train_x, probe_parts(features["validation"], spec, columns, parts)])
                labels = np.concatenate([train_y, splits.validation.labels])
                name = f"{spec.name} alone, {pair_encoding} (logistic regression)"
                rows[name] = scores(logistic_probe(train_x, labels, test_x, 2, device), test_y)
    if args.tfidf != "skip":
        from llmembed_hf.data import LabelledTexts

        train = LabelledTexts(splits.train.texts + splits.validation.texts, splits.train.labels
                              + splits.validation.labels, splits.train.pairs + splits.validation.pairs)
        rows[TFIDF_ROW] = scores(
            tfidf_pair_baseline(train, splits.evaluation, args.seed), test_y)
    return result


def markdown(result: dict[str, Any], info: dict[str, Any], command: str) -> str:
    device = info["gpu"] or f"{info['nproc']} CPU cores"
    lines = [
        TITLE, "",
        f"`{command}` ({device}, {info['date']}; transformers {info['transformers']}).", "",
        f"{result['dataset']}: train {result['num_train']:,} pairs (validation: {result['validation']}, "
        f"{result['num_validation']:,} pairs, picks the head's epoch; the probes and TF-IDF train on both), test "
        f"{result['num_test']:,} pairs (majority class {100 * result['majority']:.1f}%); preset {result['preset']}"
        + (f" ({', '.join(result['backbones'])})" if result.get("backbones") else "") + ". Test accuracy and F1 "
        "of the positive class (%). Probes: logistic regression on standardised copies of the very same features "
        "(an LLM's pooled layers averaged, per part for siamese); TF-IDF: 1-2-grams, sublinear tf, min_df=2.", "",
        "| method | accuracy | F1 |", "|---|---:|---:|",
    ]
    for method, value in result["rows"].items():
        lines.append(f"| {method} | {100 * value['accuracy']:.2f} | {100 * value['f1']:.2f} |")
    heads = {k: v for k, v in result["rows"].items() if k in HEAD_VARIANTS}
    others = {k: v for k, v in result["rows"].items() if k not in HEAD_VARIANTS}
    if heads and others:
        best, rival = (max(rows.items(), key=lambda item: item[1]["accuracy"]) for rows in (heads, others))
        lines += ["", f"Best fused head ({best[0]}) vs the best other row ({rival[0]}): "
                  f"{100 * (best[1]['accuracy'] - rival[1]['accuracy']):+.2f} accuracy points, "
                  f"{100 * (best[1]['f1'] - rival[1]['f1']):+.2f} F1 points; goal: accuracy >= {GOAL[0]}, "
                  f"F1 >= {GOAL[1]}, ahead of every other row."]
    timings = ", ".join(f"{k.replace('_s[', ' [')} {v:.0f} s" for k, v in result.items() if k.endswith("]"))
    if timings:
        lines += ["", f"Times (the store computes shared vectors once, so later variants extract less): {timings}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from llmembed_hf import ExtractionConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=str(DATASETS / "mrpc"), help="a pair dataset (text, text_pair, label)")
    parser.add_argument("--preset", default="small", help="a preset's name or an LLMEmbedConfig's config.json")
    parser.add_argument("--max-train", type=int, default=None, help="seeded training subset (default: all pairs)")
    parser.add_argument("--max-test", type=int, default=None, help="seeded test subset (default: all pairs)")
    parser.add_argument("--epochs", type=int, default=None, help="head epochs (default: HeadTrainingArguments)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default=None, help="where the backbones run (cuda on a GPU machine)")
    parser.add_argument("--tfidf", choices=["run", "skip", "only"], default="run",
                        help="the TF-IDF row: with the rest, skipped, or alone (no backbones needed)")
    parser.add_argument("--max-tokens-per-batch", type=int, default=ExtractionConfig.max_tokens_per_batch)
    parser.add_argument("--max-batch-size", type=int, default=ExtractionConfig.max_batch_size)
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--output", default=str(RESULTS), help="the RESULTS.md whose section is replaced")
    args = parser.parse_args(argv)

    info = {**machine(), "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"}
    command = "python benchmarks/bench_pairs.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    loader_kwargs = {"device": args.device} if args.device else {}
    with tempfile.TemporaryDirectory() as work:
        result = run(args, loader_kwargs, Path(work))
    print(json.dumps(result["rows"], indent=1), file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "command": command, "result": result}, indent=1))
    write_sections(Path(args.output), [(TITLE, markdown(result, info, command))])


if __name__ == "__main__":
    main()
