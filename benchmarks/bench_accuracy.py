"""Accuracy: the fused LLMEmbed head vs each backbone alone, the concatenated probe, and TF-IDF baselines.

For every dataset: extract the pooled features once (the package's cache), train the fusion head with
`fit_head` (checkpoint chosen on a validation split: the dataset's own, else 10% carved from train), and on the
SAME features fit logistic-regression probes (standardised features): each backbone alone (an LLM's pooled layers
averaged, an encoder's sentence vector) and the backbones concatenated. TF-IDF 1-2-grams + linear SVM and + logistic
regression are the classical anchors. Everything is scored on the test split, which nothing else touches.

    python benchmarks/bench_accuracy.py --datasets sst2 r8 --max-train 2000 --max-test 1000
    # on a GPU machine with the backbones in local folders <root>/<name> (e.g. fp16 copies):
    python benchmarks/bench_accuracy.py --device cuda --backbone-root /root/wx/weights --json out.json
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
import torch.nn.functional as F
from bench_common import DATASETS, RESULTS, machine, write_sections

from llmembed_hf import (
    ExtractionConfig,
    HeadTrainingArguments,
    LLMEmbedConfig,
    LLMEmbedForSequenceClassification,
    PRESETS,
    extract_features,
    fit_head,
    resolve_backbone,
)
from llmembed_hf.data import load_classification_splits
from llmembed_hf.metrics import load_metric, score_top_level
from llmembed_hf.lexical import fit_lexical_view, lexical_inputs, lexical_logits
from llmembed_hf.trainer import choose_lexical_view, predict_logits
from llmembed_hf.training_args import DataArguments
from transformers import set_seed

TITLE = "## Accuracy: fused head vs single backbones, concatenated probe and TF-IDF"

#: Per dataset: the text column, and the split that picks the head's checkpoint (None: 10% carved from train).
DATASET_SETTINGS: dict[str, dict[str, Any]] = {
    "sst2": {"text_column": "text", "validation_split": None},
    "r8": {"text_column": "text", "validation_split": None},
    "r52": {"text_column": "text", "validation_split": None},
    "20newsgroups": {"text_column": "text", "validation_split": None},
    "massive_en": {"text_column": "text", "validation_split": "validation"},
    "ag_news": {"text_column": "text", "validation_split": None},
}


def scores(predictions: np.ndarray, labels: np.ndarray, top_level_names: list[str] | None) -> dict[str, float]:
    """Accuracy and macro-F1 (the package's offline metric); with class names, also the top-level groups' accuracy
    (20 Newsgroups as 7 classes)."""
    result = load_metric().compute(predictions=predictions, references=labels)
    if top_level_names is not None:
        result["accuracy_top_level"] = score_top_level(predictions, labels, top_level_names)["top_level_accuracy"]
    return result


def backbone_columns(config: LLMEmbedConfig) -> dict[str, list[slice]]:
    """The columns of ``pooled_features`` of each backbone, one slice per pooled view."""
    columns, start = {}, 0
    for spec in config.backbone_specs:
        columns[spec.name] = [slice(start + i * spec.hidden_size, start + (i + 1) * spec.hidden_size)
                              for i in range(spec.num_views)]
        start += spec.hidden_size * spec.num_views
    return columns


def probe_view(features: np.ndarray, views: list[slice]) -> np.ndarray:
    """A backbone's probe input: its single view, or the mean of its pooled layers (as LLMEmbed's mean LLM view)."""
    return np.mean([features[:, view] for view in views], axis=0)


def logistic_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_labels: int, device: str,
                   C: float = 1.0) -> np.ndarray:
    """Multinomial logistic regression on standardised features, scikit-learn's objective (C=1) minimised by
    full-batch L-BFGS in torch, so it runs on the GPU beside the head when there is one."""
    x = torch.as_tensor(train_x, dtype=torch.float32, device=device)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x = (x - mean) / std
    y = torch.as_tensor(train_y, dtype=torch.long, device=device)
    weight = torch.zeros(x.shape[1], num_labels, device=device, requires_grad=True)
    bias = torch.zeros(num_labels, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=500, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-10)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # sklearn minimises C * sum(loss) + |W|^2 / 2; divided by C * n that is mean(loss) + |W|^2 / (2 C n).
        loss = F.cross_entropy(x @ weight + bias, y) + weight.pow(2).sum() / (2 * C * len(y))
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        test = (torch.as_tensor(test_x, dtype=torch.float32, device=device) - mean) / std
        return (test @ weight + bias).argmax(-1).cpu().numpy()


def tfidf_baselines(train_texts: list[str], train_y: np.ndarray, test_texts: list[str],
                    seed: int) -> dict[str, np.ndarray]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    train_x, test_x = vectorizer.fit_transform(train_texts), vectorizer.transform(test_texts)
    return {
        "TF-IDF 1-2-grams + linear SVM": LinearSVC(C=1.0, random_state=seed).fit(train_x, train_y).predict(test_x),
        "TF-IDF 1-2-grams + logistic regression": LogisticRegression(C=10.0, max_iter=2000, random_state=seed)
        .fit(train_x, train_y).predict(test_x),
    }


#: Fused-head variants compared: the reference fusion, and the encoders' vectors also fed to the MLP.
HEAD_VARIANTS = {
    "LLMEmbed fused head (reference fusion)": {"concat_encoder_views": False},
    "LLMEmbed fused head + encoder vectors": {"concat_encoder_views": True},
}


def head_variants(preset: str) -> dict[str, dict[str, Any]]:
    """The fused-head variants worth training on ``preset``. The reference fusion feeds its MLP the mean LLM layer and
    the views' co-occurrence values only, so without an LLM view it sees a few inner products (one, for a single
    encoder): presets without one train only the head that also reads the encoders' vectors (their default)."""
    if any(spec.get("role") == "llm" for spec in PRESETS[preset]["backbones"]):
        return HEAD_VARIANTS
    return {variant: overrides for variant, overrides in HEAD_VARIANTS.items() if overrides["concat_encoder_views"]}


def result_head_variants(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`head_variants` of a saved result's preset when its backbones are still that preset's, else every variant
    (a result from before a preset was renamed keeps its rows)."""
    preset = PRESETS.get(result["preset"])
    if preset is None or [spec["name"] for spec in preset["backbones"]] != result["backbones"]:
        return HEAD_VARIANTS
    return head_variants(result["preset"])


def run_dataset(name: str, args: argparse.Namespace, loader_kwargs: dict[str, Any], work: Path) -> dict[str, Any]:
    settings = DATASET_SETTINGS[name]
    data = DataArguments(str(DATASETS / name), text_column=settings["text_column"],
                         validation_split=settings["validation_split"], max_train_samples=args.max_train,
                         max_eval_samples=args.max_test)
    splits = load_classification_splits(data, seed=args.seed)
    names = splits.names
    top_level_names = names if name == "20newsgroups" else None
    test_y, train_y = np.asarray(splits.evaluation.labels), np.asarray(splits.train.labels)
    result = {"dataset": name, "preset": args.preset,
              "backbones": [b["name"] for b in PRESETS[args.preset]["backbones"]],
              "num_train": len(splits.train.texts), "num_validation": len(splits.validation.texts),
              "num_test": len(splits.evaluation.texts), "num_labels": len(names),
              "validation": splits.validation_name, "rows": {}}
    rows = result["rows"]
    if args.tfidf != "only":
        features, timings = fused_heads(name, splits, args, loader_kwargs, work, rows, top_level_names)
        result.update(timings)
        device = loader_kwargs.get("device") or "cpu"
        train_x = features["train"].with_format("numpy")[:]["pooled_features"]
        test_x = features["test"].with_format("numpy")[:]["pooled_features"]
        columns = backbone_columns(features["config"])
        probe_inputs = {b: (probe_view(train_x, views), probe_view(test_x, views)) for b, views in columns.items()}
        for backbone, (train_view, test_view) in probe_inputs.items():
            rows[f"{backbone} alone (logistic regression)"] = scores(
                logistic_probe(train_view, train_y, test_view, len(names), device), test_y, top_level_names)
        rows["all backbones concatenated (logistic regression)"] = scores(
            logistic_probe(np.concatenate([v[0] for v in probe_inputs.values()], axis=1), train_y,
                           np.concatenate([v[1] for v in probe_inputs.values()], axis=1), len(names), device),
            test_y, top_level_names)
    if args.tfidf != "skip":
        for method, predictions in tfidf_baselines(splits.train.texts, train_y, splits.evaluation.texts,
                                                   args.seed).items():
            rows[method] = scores(predictions, test_y, top_level_names)
    return result


def fused_heads(name: str, splits: Any, args: argparse.Namespace, loader_kwargs: dict[str, Any], work: Path,
                rows: dict[str, Any], top_level_names: list[str] | None) -> tuple[dict[str, Any], dict[str, float]]:
    """Extract the features once and train every head variant on them; returns the features and timings."""
    names = splits.names
    test_y = np.asarray(splits.evaluation.labels)
    started = time.perf_counter()
    extraction = ExtractionConfig(dtype="float32", max_tokens_per_batch=args.max_tokens_per_batch,
                                  max_batch_size=args.max_batch_size)
    features: dict[str, Any] = {}
    timings: dict[str, float] = {}
    lexical: dict[str, dict[str, Any]] = {}
    for variant, overrides in head_variants(args.preset).items():
        config = LLMEmbedConfig.from_preset(args.preset, id2label=dict(enumerate(names)),
                                            label2id={n: i for i, n in enumerate(names)}, **overrides)
        for spec in config.backbones:
            if args.backbone_root:  # e.g. fp16 copies on a GPU machine: other weights, sha256 not checked
                spec.update(model_id=str(Path(args.backbone_root) / spec["name"]), weights_sha256=None,
                            revision=None)
        set_seed(args.seed)  # as `train_head` does: the same seed gives the CLI's head, whatever ran before
        model = LLMEmbedForSequenceClassification.from_backbones(config, **loader_kwargs)
        if not features:
            for split_name, split in (("train", splits.train), ("validation", splits.validation),
                                      ("test", splits.evaluation)):
                features[split_name] = extract_features(model, split.texts, extra_columns={"labels": split.labels},
                                                        config=extraction)
            features["config"] = config
            timings["extract_s"] = time.perf_counter() - started
        head_started = time.perf_counter()
        training = HeadTrainingArguments(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
        fit_head(model, features["train"], features["validation"], work / name / str(len(timings)), training)
        timings[f"head_train_s[{variant}]"] = time.perf_counter() - head_started
        rows[variant] = scores(predict_logits(model, features["test"]).argmax(-1), test_y, top_level_names)
        if args.lexical_view:
            if not lexical:  # each split's n-grams hashed once, for every variant and the view alone
                lexical = {name: lexical_inputs(split.texts) for name, split in (
                    ("train", splits.train), ("validation", splits.validation), ("test", splits.evaluation))}
            rows[f"{variant} + lexical view"], timings[f"lexical_view[{variant}]"] = lexical_view_row(
                model, splits, features, lexical, training, top_level_names)
    if args.lexical_view:  # the view's own scores: its TF-IDF logistic regression beside scikit-learn's
        view = fit_lexical_view(lexical["train"], splits.train.labels, c=training.lexical_c, num_labels=len(names))
        rows[f"lexical view alone (TF-IDF 1-2-grams + logistic regression, C={training.lexical_c:g}, torch)"] = scores(
            lexical_logits(view, lexical["test"]).argmax(-1), test_y, top_level_names)
    return features, timings


def lexical_view_row(model: LLMEmbedForSequenceClassification, splits: Any, features: dict[str, Any],
                     lexical: dict[str, dict[str, Any]], training: HeadTrainingArguments,
                     top_level_names: list[str] | None) -> tuple[dict[str, float], dict[str, Any]]:
    """The trained head with a lexical view chosen as `train_head` chooses it (`trainer.choose_lexical_view`: fitted
    on the training texts' ``lexical`` inputs, its weight by validation accuracy); the test scores of the blend (the
    temperature `train_head` fits next leaves the arg-max alone), and the weight, size and fit time."""
    started = time.perf_counter()
    gold = {"validation": splits.validation.labels, "test": splits.evaluation.labels}
    inputs = {name: lexical[name] for name in gold}
    scored = {name: (predict_logits(model, features[name]), labels) for name, labels in gold.items()}
    report, _ = choose_lexical_view(model, lexical["train"], splits.train.labels, inputs, scored, None, 0, training)
    logits = predict_logits(model, features["test"], lexical=inputs["test"] if model.lexical_view else None)
    return scores(logits.argmax(-1), np.asarray(gold["test"]), top_level_names), {
        "weight": report.get("weight"), "vocab_size": report.get("vocab_size"),
        "validation_accuracy": report.get("candidates"), "s": time.perf_counter() - started}


def device_name(info: dict[str, Any]) -> str:
    return info["gpu"] or f"{info['nproc']} CPU cores"


def markdown(results: list[dict[str, Any]], info: dict[str, Any], commands: list[str]) -> str:
    lines = [
        TITLE, "",
        "Commands (machine, date):", "", *[f"- {command}" for command in commands], "",
        f"transformers {info['transformers']}. The features do not depend on the machine beyond float rounding.",
    ]
    if any("--backbone-root" in command for command in commands):
        lines[-1] += (" `--backbone-root` runs load each backbone from `<root>/<name>` (e.g. fp16 copies of the "
                      "encoders, `AutoModel.from_pretrained(src).half().save_pretrained(dst)` plus the tokenizer, "
                      "carried to a GPU machine that way because only 64 MiB travel per call).")
    lines[-1] += "  "
    lines += [
        "Test-split accuracy / macro-F1 (%). The fused heads are the named preset's LLMEmbed head with its default "
        "hyper-parameters (reference fusion where the preset has an LLM view, and with `concat_encoder_views=True`), "
        "checkpoint chosen on the "
        "validation split named per dataset; the probes are multinomial logistic regression (scikit-learn's "
        "objective, C=1, L-BFGS in torch) on standardised copies of the very same extracted features (an LLM's "
        "five pooled layers averaged); TF-IDF uses 1-2-grams, sublinear tf, min_df=2 (scikit-learn, CPU).", "",
    ]
    for result in results:
        top = "accuracy_top_level" in next(iter(result["rows"].values()))
        lines += [
            f"### {result['dataset']} (train {result['num_train']:,}, test {result['num_test']:,}, "
            f"{result['num_labels']} classes; validation: {result['validation']}; preset {result['preset']}: "
            f"{', '.join(result['backbones'])}; backbones and heads on "
            f"{result.get('device', device_name(info))})", "",
            "| method | accuracy | macro-F1 |" + (" accuracy, 7 top-level groups |" if top else ""),
            "|---|---:|---:|" + ("---:|" if top else ""),
        ]
        singles = [v["accuracy"] for k, v in result["rows"].items() if k.endswith("alone (logistic regression)")]
        best_single = max(singles, default=float("nan"))
        for method, value in result["rows"].items():
            if method in HEAD_VARIANTS and method not in result_head_variants(result):
                continue  # trained by a run from before `head_variants` (one co-occurrence value, not a result)
            cells = f"| {method} | {100 * value['accuracy']:.2f} | {100 * value['macro_f1']:.2f} |"
            lines.append(cells + (f" {100 * value['accuracy_top_level']:.2f} |" if top else ""))
        shown = {f"head_train_s[{variant}]" for variant in result_head_variants(result)} | {"extract_s"}
        timings = ", ".join(f"{k.replace('_s', '')} {v:.0f} s" for k, v in result.items() if k in shown)
        for variant in result_head_variants(result):
            if variant in result["rows"]:
                gap = 100 * (result["rows"][variant]["accuracy"] - best_single)
                lines.append(f"\n{variant} vs the best single backbone: {gap:+.2f} points.")
        lines += ["", f"Times: {timings}.", ""]
        for key, view in result.items():
            if key.startswith("lexical_view["):
                lines += [f"Lexical view of {key[len('lexical_view['):-1]}: weight {view['weight']} (validation "
                          f"accuracy per weight: {view['validation_accuracy']}), {view['vocab_size']:,} n-grams, "
                          f"fitted and chosen in {view['s']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASET_SETTINGS), choices=list(DATASET_SETTINGS))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--max-train", type=int, default=None, help="seeded training subset (default: all rows)")
    parser.add_argument("--max-test", type=int, default=None, help="seeded test subset (default: all rows)")
    parser.add_argument("--epochs", type=int, default=None, help="head epochs (default: HeadTrainingArguments)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default=None, help="where the backbones run (cuda on a GPU machine)")
    parser.add_argument("--backbone-root", default=None, help="load each backbone from <root>/<name> instead")
    parser.add_argument("--tfidf", choices=["run", "skip", "only"], default="run",
                        help="TF-IDF baselines: with the rest, skipped, or alone (no backbones needed)")
    parser.add_argument("--max-tokens-per-batch", type=int, default=ExtractionConfig.max_tokens_per_batch)
    parser.add_argument("--max-batch-size", type=int, default=ExtractionConfig.max_batch_size)
    parser.add_argument("--lexical-view", action="store_true",
                        help="also score each head with a lexical view (HeadTrainingArguments.lexical_view=True): "
                             "a row '<head> + lexical view', its weight and size in the JSON")
    parser.add_argument("--json", default=None, help="also write the raw results here (after every dataset)")
    parser.add_argument("--render", nargs="+", default=None, metavar="JSON",
                        help="compute nothing: render the RESULTS.md section from earlier --json files")
    parser.add_argument("--output", default=str(RESULTS), help="the RESULTS.md whose section is replaced")
    args = parser.parse_args(argv)

    if args.render:
        runs = [json.loads(Path(path).read_text()) for path in args.render]
        merged: dict[str, dict[str, Any]] = {}  # runs of the same dataset (e.g. TF-IDF apart) share one table
        for run in runs:
            for result in run["results"]:
                result.setdefault("device", device_name(run["machine"]))
        for result in (result for run in runs for result in run["results"]):
            if result["dataset"] in merged:
                merged[result["dataset"]]["rows"].update(result["rows"])
            else:
                merged[result["dataset"]] = result
        results = list(merged.values())
        commands = [f"`{run['command']}` ({device_name(run['machine'])}, {run['machine']['date']})" for run in runs]
        section = markdown(results, runs[0]["machine"], commands)
        write_sections(Path(args.output), [(TITLE, section)])
        return
    info = {**machine(), "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"}
    loader_kwargs = {"device": args.device} if args.device else {}
    # One load of each backbone serves every dataset's head (the heads differ, the backbones do not).
    LLMEmbedForSequenceClassification.backbone_loader = staticmethod(_memoised_loader())
    results: list[dict[str, Any]] = []
    command = "python benchmarks/bench_accuracy.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as work:
        for name in args.datasets:
            print(f"[bench_accuracy] {name}", file=sys.stderr, flush=True)
            results.append(run_dataset(name, args, loader_kwargs, Path(work)))
            print(json.dumps(results[-1]["rows"], indent=1), file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"machine": info, "command": command, "results": results},
                                                      indent=1))
    run = f"`{command}` ({device_name(info)}, {info['date']})"
    write_sections(Path(args.output), [(TITLE, markdown(results, info, [run]))])


def _memoised_loader():
    """`resolve_backbone`, loading each backbone (by name) once per process."""
    loaded: dict[str, Any] = {}

    def load(spec, **kwargs):
        if spec.name not in loaded:
            loaded[spec.name] = resolve_backbone(spec, **kwargs)
        return loaded[spec.name]

    return load


if __name__ == "__main__":
    main()
