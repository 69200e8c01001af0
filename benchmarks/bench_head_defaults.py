#!/usr/bin/env python
"""The head's defaults from one search across datasets: the same seeded trials scored on each dataset's validation data.

`tune_head` draws its trials from the search space with the seed alone (trial 0 is the current defaults), so the same
``--trials`` and ``--seed`` give the SAME hyper-parameter points on every dataset. This script runs that search on
sst2, massive_en and r8 (features extracted once and cached; test splits never read), then ranks the points by their
mean validation accuracy over the datasets (mean macro-F1 breaks ties). The winner is what `HeadTrainingArguments`
and the `small` preset use. Validation data: MASSIVE's own validation split, else 10% carved from the training subset
(seed 42), the rows `bench_accuracy.py` chooses its checkpoints on, so their features are cache hits; SST-2 is
searched on a seeded 8,000-sentence subset (a trial on all 67k sentences takes minutes, not seconds).

Each dataset's `tuning_results.{json,md}` is kept under ``--output-dir``; a dataset whose results are already there
with the same trials (the points `tune_head` would draw now: same seed, count, search space and current defaults) is
not searched again, so an interrupted run resumes where it stopped.

    python benchmarks/bench_head_defaults.py --output-dir /tmp/head-defaults --trials 16
    python benchmarks/bench_head_defaults.py --output-dir /tmp/head-defaults --trials 16 --render   # table only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench_common import DATASETS, RESULTS, machine, write_sections

from llmembed_hf import LLMEmbedConfig, SearchSpace, tune_head
from llmembed_hf.tuning import plan_trials

#: Per dataset: training subset and where the validation rows come from.
DATASET_SETTINGS: dict[str, dict[str, Any]] = {
    "sst2": {"max_train_samples": 8000, "validation_split": None},
    "massive_en": {"max_train_samples": None, "validation_split": "validation"},
    "r8": {"max_train_samples": None, "validation_split": None},
}
PARAMS = ["sigma", "epochs", "learning_rate", "dropout", "projection_dim", "batch_size"]
#: The numeric defaults are searched for the `small` preset's own fusion (encoder vectors fed to the MLP); the fusion
#: itself is compared by bench_accuracy.py on every dataset, and `llmembed tune` searches it per dataset.
SPACE = SearchSpace(concat_encoder_views=[True])
TITLE = "## Head defaults: one search across datasets (validation data)"


def planned_trials(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The points `tune_head` draws for the `small` preset with these arguments (trial 0: the current defaults)."""
    return plan_trials(LLMEmbedConfig.from_preset("small"), SPACE, args.trials, args.seed)


def search(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The dataset's tuning results: loaded when an earlier run with the same trials left them, else searched."""
    folder = args.output_dir / name
    saved = folder / "tuning_results.json"
    if saved.is_file():
        report = json.loads(saved.read_text())
        if report["seed"] == args.seed and [t["params"] for t in report["trials"]] == planned_trials(args):
            print(f"{name}: reusing {saved}", file=sys.stderr)
            return report
    if args.render:
        raise SystemExit(f"--render: no matching results for {name} in {folder}; run without --render first.")
    settings = DATASET_SETTINGS[name]
    report = tune_head(DATASETS / name, folder, preset="small", trials=args.trials, search_space=SPACE,
                       seed=args.seed, validation_fraction=0.1, **settings)
    return asdict(report)


def rank(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial with each dataset's validation scores and their means, best mean accuracy first."""
    plans = {name: [t["params"] for t in report["trials"]] for name, report in reports.items()}
    first = next(iter(plans.values()))
    if any(plan != first for plan in plans.values()):
        raise SystemExit("the datasets were searched with different trials (seed, trials or search space differ).")
    rows = []
    for index, params in enumerate(first):
        accuracy = {name: report["trials"][index]["accuracy"] for name, report in reports.items()}
        macro_f1 = {name: report["trials"][index]["macro_f1"] for name, report in reports.items()}
        rows.append({"trial": index, "params": params, "accuracy": accuracy, "macro_f1": macro_f1,
                     "mean_accuracy": sum(accuracy.values()) / len(accuracy),
                     "mean_macro_f1": sum(macro_f1.values()) / len(macro_f1)})
    return sorted(rows, key=lambda r: (-r["mean_accuracy"], -r["mean_macro_f1"], r["trial"]))


def render(rows: list[dict[str, Any]], reports: dict[str, dict[str, Any]], command: str) -> str:
    env = machine()
    names = list(reports)
    where = env["gpu"] or f"{env['nproc']} CPU cores ({env['cpu']})"
    data = "; ".join(f"{name}: {r['num_train']:,} training texts, {r['num_validation']:,} validation "
                     f"({r['validation']}), search {r['timings']['search_s'] / 60:.0f} min"
                     for name, r in reports.items())
    lines = [
        TITLE, "",
        f"Command: `{command}`  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: {where}, torch {env['torch']}, "
        f"transformers {env['transformers']}.  ",
        f"Data: {data}. The test splits are not read. `small` preset (`concat_encoder_views=True`), seed "
        f"{next(iter(reports.values()))['seed']}; the same {len(rows)} trials on every dataset (trial 0: the "
        "defaults before this search). Each trial keeps its best epoch on the validation data it is scored on, so "
        "the scores are slightly optimistic, equally for every trial. Sorted by mean validation accuracy.",
        "",
        "| trial | " + " | ".join(PARAMS) + " | " + " | ".join(names) + " | mean accuracy | mean macro-F1 |",
        "|" + "---|" * (len(PARAMS) + 1) + "---:|" * (len(names) + 2),
    ]
    for i, row in enumerate(rows):
        label = f"{row['trial']}" + (" **chosen**" if i == 0 else "")
        label += " (defaults when searched)" if row["trial"] == 0 else ""
        lines.append(f"| {label} | " + " | ".join(str(row["params"][p]) for p in PARAMS) + " | "
                     + " | ".join(f"{100 * row['accuracy'][n]:.2f}" for n in names)
                     + f" | {100 * row['mean_accuracy']:.2f} | {100 * row['mean_macro_f1']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASET_SETTINGS), choices=list(DATASET_SETTINGS))
    parser.add_argument("--output-dir", type=Path, required=True, help="each dataset's tuning results (resumable)")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--render", action="store_true", help="search nothing: rank the results already there")
    parser.add_argument("--results-md", type=Path, default=RESULTS, help="the RESULTS.md whose section is replaced")
    args = parser.parse_args()
    reports = {name: search(name, args) for name in args.datasets}
    rows = rank(reports)
    (args.output_dir / "ranking.json").write_text(json.dumps(rows, indent=2))
    command = "python benchmarks/bench_head_defaults.py " + shlex.join(
        a for a in sys.argv[1:] if a != "--render")
    write_sections(args.results_md, [(TITLE, render(rows, reports, command))])
    print(json.dumps({"chosen": rows[0], "old_defaults": next(r for r in rows if r["trial"] == 0)}, indent=2))


if __name__ == "__main__":
    main()
