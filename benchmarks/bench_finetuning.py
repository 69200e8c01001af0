"""Frozen-embedding fusion vs fine-tuning (LoRA, full) on 20 Newsgroups and MASSIVE, with their costs.

20 Newsgroups (scored as 20 classes and as its 7 top-level groups): the LLMEmbed head on the frozen `small`
backbones, LoRA and full fine-tuning of a backbone, and TF-IDF + linear SVM (on the whole training split: it is
cheap). MASSIVE en-US: the fused head on intents, and one backbone fine-tuned for intent alone, slots alone and both
at once (the consolidated multi-task model). Every row records wall time, trainable parameters and the peak RSS of
this process during the run (CPU) or the peak GPU memory.

    python benchmarks/bench_finetuning.py --max-train 1000 --max-test 500 --backbone minilm
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
from bench_common import DATASETS, RESULTS, Measure, machine, write_sections

from llmembed_hf import HeadTrainingArguments, train_head
from llmembed_hf.data import load_classification_splits
from llmembed_hf.finetuning import finetune
from llmembed_hf.intent_slot import IntentSlotArguments, finetune_intent_slot
from llmembed_hf.metrics import load_metric, score_top_level, top_level_groups
from llmembed_hf.modeling.configuration_llmembed_intent_slot import DEFAULT_SLOT_LOSS_WEIGHT
from llmembed_hf.training_args import DataArguments, FinetuneArguments

TITLE = "## Fine-tuning vs frozen-embedding fusion (20 Newsgroups, MASSIVE)"


def cost(measure: Measure, trainable: int) -> dict[str, Any]:
    return {"wall_s": measure.wall, "trainable_parameters": trainable, "peak_rss_mb": measure.peak / 2**20}


def newsgroups(args: argparse.Namespace, work: Path, rows: list[dict[str, Any]], save: Callable[[], None]) -> None:
    """The fused head, ``args.backbone`` fine-tuned (each of ``args.newsgroups_modes``) and TF-IDF + SVM; ``rows``
    already holding a method (a resumed --json) skip it, and every new row is saved at once."""
    folder = DATASETS / "20newsgroups"
    done = {row["method"] for row in rows}
    fusion = f"LLMEmbed fused head, frozen `{args.preset}` backbones"
    if fusion not in done:
        with Measure() as m:
            model, report = train_head(folder, work / "ng-fusion", preset=args.preset,
                                       max_train_samples=args.max_train, max_eval_samples=args.max_test,
                                       training=HeadTrainingArguments(seed=args.seed))
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        groups = np.asarray(top_level_groups(names)[0])
        matrix = np.asarray(report.confusion_matrix)  # rows: true class, columns: predicted class
        grouped = sum(matrix[i, j] for i in range(len(names)) for j in range(len(names)) if groups[i] == groups[j])
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rows.append({"method": fusion, "accuracy": report.eval_metrics["accuracy"],
                     "macro_f1": report.eval_metrics["macro_f1"], "accuracy_top_level": grouped / matrix.sum(),
                     **cost(m, trainable)})
        save()
    for method in args.newsgroups_modes:
        label = f"{args.backbone} {method} fine-tuning"
        if label in done:
            continue
        finetune_args = FinetuneArguments(method=method, epochs=args.epochs, max_length=256, seed=args.seed,
                                          group_by_length=args.group_by_length, bf16=args.bf16,
                                          learning_rate=args.learning_rate)
        with Measure() as m:
            _, _, report = finetune(args.backbone, folder, work / f"ng-{method}", finetune_args,
                                    max_train_samples=args.max_train, max_eval_samples=args.max_test,
                                    score_top_level=True)
        rows.append({"method": label, "accuracy": report.eval_metrics["accuracy"],
                     "macro_f1": report.eval_metrics["macro_f1"],
                     "accuracy_top_level": report.eval_metrics["top_level_accuracy"],
                     "num_train": report.num_train, **cost(m, report.parameters["trainable"])})
        save()
    if not any(row["method"].startswith("TF-IDF") for row in rows):
        rows.append(newsgroups_tfidf(args.seed))
        save()


def newsgroups_tfidf(seed: int) -> dict[str, Any]:
    """TF-IDF + linear SVM on the whole training split (the classical anchor, cheap enough for all of it)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    splits = load_classification_splits(DataArguments(str(DATASETS / "20newsgroups"), validation_fraction=0.0001),
                                        seed=seed)
    texts = splits.train.texts + splits.validation.texts
    labels = np.asarray(splits.train.labels + splits.validation.labels)
    with Measure() as m:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
        svm = LinearSVC(C=1.0, random_state=seed).fit(vectorizer.fit_transform(texts), labels)
        predictions = svm.predict(vectorizer.transform(splits.evaluation.texts))
    truth = splits.evaluation.labels
    return {"method": f"TF-IDF 1-2-grams + linear SVM (all {len(texts):,} training texts)",
            **load_metric().compute(predictions=predictions, references=truth),
            "accuracy_top_level": score_top_level(predictions, truth, splits.names)["top_level_accuracy"],
            **cost(m, int(svm.coef_.size + svm.intercept_.size))}


#: MASSIVE's single-task models as (intent loss weight, slot loss weight); the multi-task model's slot weight is
#: --multi-task-slot-weight.
SINGLE_TASKS = {"intent only": (1.0, 0.0), "slots only": (0.0, 1.0)}


def massive(args: argparse.Namespace, work: Path, rows: list[dict[str, Any]], save: Callable[[], None]) -> None:
    """The fused head on intents, then ``args.backbone`` fine-tuned (each of ``args.massive_modes``) for each task;
    ``rows`` already holding a method (a resumed --json) skip it, and every new row is saved at once."""
    folder = DATASETS / "massive_en"
    done = {row["method"] for row in rows}
    fusion = f"LLMEmbed fused head, frozen `{args.preset}` backbones (intent only)"
    if fusion not in done:
        with Measure() as m:
            model, report = train_head(folder, work / "massive-fusion", preset=args.preset,
                                       validation_split="validation", max_train_samples=args.max_train,
                                       max_eval_samples=args.max_test, training=HeadTrainingArguments(seed=args.seed))
        rows.append({"method": fusion, "intent_accuracy": report.eval_metrics["accuracy"],
                     **cost(m, sum(p.numel() for p in model.parameters() if p.requires_grad))})
        save()
    tasks = {label: weights for label, weights in SINGLE_TASKS.items() if label.split()[0] in args.massive_tasks}
    if "multi-task" in args.massive_tasks:
        tasks[f"multi-task (intent + slots, slot loss weight {args.multi_task_slot_weight:g})"] = (
            1.0, args.multi_task_slot_weight)
    for mode in args.massive_modes:
        for label, (intent_weight, slot_weight) in tasks.items():
            method = f"{args.backbone} {'LoRA' if mode == 'lora' else 'full fine-tuning'}, {label}"
            if method in done:
                continue
            task_args = IntentSlotArguments(mode=mode, intent_loss_weight=intent_weight, slot_loss_weight=slot_weight,
                                            epochs=args.epochs, seed=args.seed, group_by_length=args.group_by_length,
                                            bf16=args.bf16, learning_rate=args.learning_rate)
            with Measure() as m:
                _, report = finetune_intent_slot(args.backbone, folder, work / f"massive-{mode}-{label[:5]}",
                                                 task_args, max_train_samples=args.max_train,
                                                 max_eval_samples=args.max_test)
            test = report.eval_metrics
            rows.append({"method": method,
                         "intent_accuracy": test["intent_accuracy"] if intent_weight else None,
                         "slot_f1": test["slot_f1"] if slot_weight else None,
                         "exact_match": test["exact_match"] if intent_weight and slot_weight else None,
                         "num_train": report.num_train, **cost(m, report.parameters["trainable"])})
            save()


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def markdown(results: dict[str, Any]) -> str:
    """The section: a table per task that has rows."""
    info, args = results["machine"], results["args"]
    device = info["gpu"] or f"{info['nproc']} CPU cores ({info['cpu']})"
    sizes = ("all training texts" if args["max_train"] is None else f"{args['max_train']} training texts (seeded)")
    tests = "all test texts" if args["max_test"] is None else f"{args['max_test']} test texts"
    options = [name for name in ("group_by_length", "bf16") if args.get(name)]
    lines = [args.get("section") or TITLE, "", f"Command: `{results['command']}`  ", f"Date: {results['date']}  ",
             f"Machine: {device}, torch {info['torch']}, transformers {info['transformers']}; load average before: "
             f"{info['loadavg_before'][0]:.2f}.  ",
             f"Data: {sizes} (10% of them, or MASSIVE's validation split, choose the epoch), {tests}; fine-tuning "
             f"{args['epochs']} epochs{' with ' + ' and '.join(options) if options else ''}. Peak RSS is this "
             "process's (it holds earlier runs' leftovers, so read it as an upper bound)."]
    if results["newsgroups"]:
        lines += ["", "### 20 Newsgroups", "",
                  "| method | accuracy (20) | macro-F1 (20) | accuracy (7 groups) | wall s | trainable params "
                  "| peak RSS MB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["newsgroups"]:
        lines.append(f"| {row['method']} | {percent(row['accuracy'])} | {percent(row['macro_f1'])} | "
                     f"{percent(row.get('accuracy_top_level'))} | {row['wall_s']:.0f} | "
                     f"{row['trainable_parameters']:,} | {row['peak_rss_mb']:,.0f} |")
    if results["massive"]:
        lines += ["", "### MASSIVE en-US", "",
                  "| method | intent accuracy | slot F1 | exact match | wall s | trainable params | peak RSS MB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["massive"]:
        lines.append(f"| {row['method']} | {percent(row.get('intent_accuracy'))} | {percent(row.get('slot_f1'))} | "
                     f"{percent(row.get('exact_match'))} | {row['wall_s']:.0f} | {row['trainable_parameters']:,} | "
                     f"{row['peak_rss_mb']:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-train", type=int, default=1000, help="seeded training subset (0: all rows)")
    parser.add_argument("--max-test", type=int, default=500, help="seeded test subset (0: all rows)")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (the fused head keeps its default)")
    parser.add_argument("--backbone", default="minilm", help="the backbone fine-tuned (a preset name, folder or id)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="the fine-tuning learning rate (default: each line's default for its mode)")
    parser.add_argument("--tasks", nargs="+", default=["newsgroups", "massive"], choices=["newsgroups", "massive"])
    parser.add_argument("--preset", default="small", help="the frozen fused head's preset")
    parser.add_argument("--massive-modes", nargs="+", default=["lora"], choices=["lora", "full"],
                        help="how the backbone is fine-tuned for MASSIVE's three tasks")
    parser.add_argument("--massive-tasks", nargs="+", default=["intent", "slots", "multi-task"],
                        choices=["intent", "slots", "multi-task"], help="which of MASSIVE's three models are trained")
    parser.add_argument("--multi-task-slot-weight", type=float, default=DEFAULT_SLOT_LOSS_WEIGHT,
                        help="the multi-task model's slot loss weight (its intent loss weight is 1)")
    parser.add_argument("--newsgroups-modes", nargs="+", default=["lora", "full"], choices=["lora", "full"],
                        help="how the backbone is fine-tuned for 20 Newsgroups")
    parser.add_argument("--group-by-length", action="store_true", help="length-grouped training batches")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in --json and run only the missing ones")
    parser.add_argument("--json", default=None)
    parser.add_argument("--render", default=None, metavar="JSON", help="compute nothing: render an earlier --json")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--section", default=TITLE, help="the RESULTS.md section written")
    args = parser.parse_args(argv)
    args.max_train, args.max_test = args.max_train or None, args.max_test or None
    if args.render:
        rendered = json.loads(Path(args.render).read_text())
        write_sections(Path(args.output), [(rendered["args"].get("section") or TITLE, markdown(rendered))])
        return
    results: dict[str, Any] = {
        "machine": machine(), "args": vars(args), "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "command": "python benchmarks/bench_finetuning.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "newsgroups": [], "massive": [],
    }
    if args.resume and args.json and Path(args.json).is_file():
        earlier = json.loads(Path(args.json).read_text())
        results["newsgroups"], results["massive"] = earlier["newsgroups"], earlier["massive"]

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=float))

    with tempfile.TemporaryDirectory() as work:
        for task in args.tasks:
            run = massive if task == "massive" else newsgroups
            run(args, Path(work), results[task], save)
    write_sections(Path(args.output), [(args.section, markdown(results))])


if __name__ == "__main__":
    main()
