"""Few-shot, against SetFit (issue 21, part 4): the fused LLMEmbed head, SetFit and logistic regression on the best
single view, trained on the same few labelled rows per class, in one run.

Per dataset (SST-2, AG News, MASSIVE en-US intents) and seed, one stratified draw from the TRAIN split: each class's
rows in a seeded random order, the first k of them for every k (so a seed's 8 rows per class are among its 16 and its
64; a class with fewer rows gives all it has: MASSIVE's 60 intents give up to 60*k rows). All three methods train on
exactly these rows and are scored on the same test rows:

* ``fused head``: the named preset's LLMEmbed head (default `small`), its default hyper-parameters, on features
  extracted ONCE per dataset through the feature store (every row any draw needs, then the test split), then
  `fit_head` per draw. With a few rows there is no validation split to pick an epoch: the head trains the package's
  default 10 epochs (``--head-epochs``; lr 1e-3, batch 128) and the last epoch is kept;
* ``logistic regression``: each backbone's single view (for `small`, its one view: EmbeddingGemma's vector), the
  probe of `bench_accuracy.py` (standardised features, C=1, L-BFGS) on the very same features;
* ``SetFit``: SetFit 1.2.0 from PyPI in its own environment (`bash benchmarks/setup_setfit.sh` makes `.venv-setfit`),
  run per draw as a subprocess (`fewshot_setfit_worker.py`): body all-mpnet-base-v2 from the local folder the project
  resolves offline, logistic-regression head, SetFit's default ``TrainingArguments`` except the seed. Its default
  pair sampling ("oversampling", one epoch) grows with the square of the rows: the run prints the contrastive steps
  seed 0's draws plan before it starts (MASSIVE at 64 per class: about 760,000 batches of 16 pairs), and
  ``--setfit-step-budget N`` skips (and reports as skipped) the draws planning more than N, while ``--setfit-args``
  changes SetFit's training explicitly (recorded with the command), e.g. ``--setfit-args num_iterations=20`` (20
  positive and 20 negative pairs per row: SetFit 0.x's default, linear in the rows).

Wall times: extraction is shared by the fused head and the probe and reported apart (backbone load, the training
pool, the test split; a fresh feature store unless ``--feature-cache``); per draw, the head's `fit_head`, the
probe's fit, SetFit's training (contrastive body + head) and its test inference. The time goal compares the head's
training plus the extraction of its own training rows (the pool's per-row extraction time times the draw's rows)
with SetFit's training.

    bash benchmarks/setup_setfit.sh        # once: .venv-setfit (SetFit, pinned CPU torch)
    python benchmarks/bench_fewshot.py     # 3 datasets x k 8, 16, 64 x 5 seeds; writes RESULTS.md
    python benchmarks/bench_fewshot.py --datasets sst2 --shots 8 --seeds 1 --max-test 200 --no-write   # smoke
    python benchmarks/bench_fewshot.py --setfit-step-budget 3000 --json fewshot.json   # skip SetFit's longest draws
    # in parts (the same draws every time): the cheap methods, then SetFit, then one section from both
    python benchmarks/bench_fewshot.py --methods fused probe --json a.json --no-write
    python benchmarks/bench_fewshot.py --methods setfit --datasets sst2 --json b.json --no-write
    python benchmarks/bench_fewshot.py --render a.json b.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from bench_accuracy import _memoised_loader, backbone_columns, device_name, logistic_probe, probe_view, scores
from bench_common import DATASETS, RESULTS, machine, write_sections

from llmembed_hf import (
    ExtractionConfig,
    HeadTrainingArguments,
    LLMEmbedConfig,
    LLMEmbedForSequenceClassification,
    extract_features,
    fit_head,
)
from llmembed_hf.data import load_labelled
from llmembed_hf.trainer import predict_logits
from transformers import set_seed

TITLE = "## Few-shot: fused head vs SetFit"
FEWSHOT_DATASETS = ("sst2", "ag_news", "massive_en")
ROOT = Path(__file__).resolve().parents[1]
SETFIT_PYTHON = ROOT / ".venv-setfit" / "bin" / "python"
WORKER = Path(__file__).with_name("fewshot_setfit_worker.py")
METHODS = ("fused", "probe", "setfit")
FUSED, SETFIT = "LLMEmbed fused head", "SetFit (all-mpnet-base-v2)"
#: The issue's goals: within 1 point of SetFit at the fewest shots, ahead at the most, at <= 1/10 of its training time.
GOAL_GAP_FEWEST, GOAL_TIME_RATIO = -1.0, 0.1
#: SetFit 1.2.0's `TrainingArguments` defaults that set how many contrastive steps it takes.
SETFIT_DEFAULTS = {"batch_size": 16, "num_epochs": 1, "sampling_strategy": "oversampling", "num_iterations": None,
                   "max_steps": -1}


def draws(labels: np.ndarray, shots: list[int], seeds: list[int]) -> dict[tuple[int, int], np.ndarray]:
    """Row indices of every (k, seed) draw: per seed each class's rows in one seeded random order, the first k of
    them (all of a class that has fewer), so a seed's draws are nested across k."""
    result = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        orders = [rng.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)]
        for k in shots:
            result[(k, seed)] = np.sort(np.concatenate([order[:k] for order in orders]))
    return result


def setfit_steps(class_counts: list[int], overrides: dict[str, Any]) -> int:
    """Contrastive optimizer steps SetFit 1.2.0 takes on rows with these class counts (its `ContrastiveDataset`:
    pairs drawn with replacement, so a row pairs with itself too; "oversampling" repeats the rarer kind of pair up to
    the commoner's count; ``num_iterations`` gives 2 * n_iter pairs per row; ``max_steps`` caps the steps)."""
    settings = {**SETFIT_DEFAULTS, **overrides}
    first = lambda value: value[0] if isinstance(value, (list, tuple)) else value  # noqa: E731 (body, head) pairs
    counts = np.asarray(class_counts, dtype=np.int64)
    n = int(counts.sum())
    positive = int((counts * (counts + 1) // 2).sum())
    negative = int((n * n - (counts**2).sum()) // 2)
    if settings["num_iterations"]:
        pairs = 2 * settings["num_iterations"] * n
    else:
        pairs = {"oversampling": 2 * max(positive, negative), "undersampling": 2 * min(positive, negative),
                 "unique": positive + negative}[settings["sampling_strategy"]]
    steps = math.ceil(pairs / first(settings["batch_size"])) * first(settings["num_epochs"])
    return min(steps, settings["max_steps"]) if settings["max_steps"] > 0 else steps


def parse_setfit_args(items: list[str]) -> dict[str, Any]:
    """``key=value`` overrides of SetFit's `TrainingArguments` (values read as JSON when they parse: 20, [16, 2])."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--setfit-args takes key=value items, not {item!r}.")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def run_setfit(job: dict[str, Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One SetFit training + test inference in the `.venv-setfit` interpreter, in a fresh working directory."""
    folder = Path(tempfile.mkdtemp(prefix="setfit-", dir=work))
    (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # nothing of the project's environment leaks into SetFit's
    started = time.perf_counter()
    with open(folder / "log.txt", "w", encoding="utf-8") as log:
        done = subprocess.run([args.setfit_python, str(WORKER), "job.json", "result.json"], cwd=folder, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = (folder / "log.txt").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"SetFit worker failed (exit {done.returncode}); its log ends:\n{tail}")
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    result["process_s"] = wall
    shutil.rmtree(folder, ignore_errors=True)  # its checkpoints: hundreds of MB each
    return result


def extract_shared(preset: str, names: list[str], pool: Any, test: Any, loader_kwargs: dict[str, Any],
                   store: Path) -> dict[str, Any]:
    """The pooled features of the training pool and the test rows, once per dataset, with their wall times."""
    config = LLMEmbedConfig.from_preset(preset, id2label=dict(enumerate(names)), label2id={n: i for i, n in
                                                                                          enumerate(names)})
    started = time.perf_counter()
    model = LLMEmbedForSequenceClassification.from_backbones(config, **loader_kwargs)  # loads the backbones once
    extraction = ExtractionConfig(dtype="float32")
    # A first forward pays one-off costs (allocations, kernel choices): spent here on a few test texts in a throwaway
    # store and counted with the load, so the per-row time of the training rows is not inflated by it.
    with tempfile.TemporaryDirectory(prefix="warm-up-") as warm_up:
        extract_features(model, test.texts[:4], cache_folder=warm_up, config=extraction, show_progress=False)
    loaded = time.perf_counter()
    train = extract_features(model, pool.texts, extra_columns={"labels": pool.labels}, cache_folder=store,
                             config=extraction, show_progress=False)
    extracted_train = time.perf_counter()
    test_features = extract_features(model, test.texts, extra_columns={"labels": test.labels}, cache_folder=store,
                                     config=extraction, show_progress=False)
    done = time.perf_counter()
    return {"config": config, "train": train, "test": test_features,
            "times": {"load_s": loaded - started, "train_pool_s": extracted_train - loaded,
                      "test_s": done - extracted_train, "train_pool_rows": len(pool.texts),
                      "test_rows": len(test.texts)}}


def run_dataset(name: str, args: argparse.Namespace, loader_kwargs: dict[str, Any], work: Path,
                setfit_overrides: dict[str, Any], save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every method on every (k, seed) draw of one dataset; ``save`` gets the partial result after each draw."""
    source = DATASETS / name
    train, names = load_labelled(source, "train")
    test, _ = load_labelled(source, "test", label_names=names, max_samples=args.max_test, seed=42)
    train_y, test_y = np.asarray(train.labels), np.asarray(test.labels)
    seeds = list(range(args.seeds))
    picked = draws(train_y, args.shots, seeds)
    pool_rows = np.unique(np.concatenate(list(picked.values())))
    position = {row: i for i, row in enumerate(pool_rows)}  # train row -> row of the pool's features
    result: dict[str, Any] = {"dataset": name, "preset": args.preset, "shots": args.shots,
                              "num_labels": len(names), "num_train_split": len(train.texts),
                              "num_test": len(test.texts), "runs": []}
    plan = {k: setfit_steps(np.bincount(train_y[picked[(k, seeds[0])]], minlength=len(names)).tolist(),
                            setfit_overrides) for k in args.shots}
    result["setfit_planned_steps"] = plan
    print(f"[bench_fewshot] {name}: {len(names)} classes, pool {len(pool_rows):,} train rows, {len(test.texts):,} test "
          f"rows; SetFit contrastive steps per draw: {plan}", file=sys.stderr, flush=True)
    shared = None
    if {"fused", "probe"} & set(args.methods):
        store = Path(args.feature_cache) if args.feature_cache else work / f"features-{name}"
        shared = extract_shared(args.preset, names, train.select(pool_rows), test, loader_kwargs, store)
        result["extraction"] = shared["times"]
        print(f"[bench_fewshot] {name}: extraction {json.dumps(shared['times'])}", file=sys.stderr, flush=True)
        pool_x = shared["train"].with_format("numpy")[:]["pooled_features"]
        test_x = shared["test"].with_format("numpy")[:]["pooled_features"]
        columns = backbone_columns(shared["config"])
    for k in args.shots:
        for seed in seeds:
            rows = picked[(k, seed)]
            subset = [position[row] for row in rows]
            base = {"k": k, "seed": seed, "num_train": len(rows)}
            if "fused" in args.methods:
                set_seed(seed)
                model = LLMEmbedForSequenceClassification.from_backbones(shared["config"], **loader_kwargs)
                checkpoints = work / name / f"head-{k}-{seed}"
                started = time.perf_counter()
                fit_head(model, shared["train"].select(subset), None, checkpoints,
                         HeadTrainingArguments(seed=seed, epochs=args.head_epochs))
                trained = time.perf_counter()
                predictions = predict_logits(model, shared["test"]).argmax(-1)
                result["runs"].append({**base, "method": FUSED, "epochs": args.head_epochs,
                                       "train_s": trained - started, "predict_s": time.perf_counter() - trained,
                                       **scores(predictions, test_y, None)})
                shutil.rmtree(checkpoints, ignore_errors=True)
            if "probe" in args.methods:
                for backbone, views in columns.items():
                    started = time.perf_counter()
                    predictions = logistic_probe(probe_view(pool_x[subset], views), train_y[rows],
                                                 probe_view(test_x, views), len(names), args.device or "cpu")
                    result["runs"].append({**base, "method": f"{backbone} alone (logistic regression)",
                                           "train_s": time.perf_counter() - started,
                                           **scores(predictions, test_y, None)})
            if "setfit" in args.methods:
                steps = setfit_steps(np.bincount(train_y[rows], minlength=len(names)).tolist(), setfit_overrides)
                if args.setfit_step_budget is not None and steps > args.setfit_step_budget:
                    result["runs"].append({**base, "method": SETFIT, "skipped": f"{steps:,} steps planned",
                                           "planned_steps": steps})
                else:
                    job = {"body": args.setfit_body, "seed": seed, "training_args": setfit_overrides,
                           "train_texts": [train.texts[i] for i in rows], "train_labels": train_y[rows].tolist(),
                           "test_texts": test.texts}
                    out = run_setfit(job, args, work)
                    predictions = np.asarray(out.pop("predictions"))
                    result["runs"].append({**base, "method": SETFIT, "planned_steps": steps, **out,
                                           **scores(predictions, test_y, None)})
            print(json.dumps([{key: value for key, value in run.items() if not isinstance(value, dict)}
                              for run in result["runs"] if run["k"] == k and run["seed"] == seed]),
                  file=sys.stderr, flush=True)
            save(result)
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summary(result: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (method, k): accuracy mean/std in points over the seeds that ran, mean times, skipped draws."""
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for run in result["runs"]:
        cell = cells.setdefault((run["method"], run["k"]), {"accuracy": [], "by_seed": {}, "train_s": [],
                                                             "predict_s": [], "num_train": [], "skipped": [],
                                                             "steps": []})
        cell["num_train"].append(run["num_train"])
        if "skipped" in run:
            cell["skipped"].append(run["skipped"])
            continue
        cell["accuracy"].append(100 * run["accuracy"])
        cell["by_seed"][run["seed"]] = 100 * run["accuracy"]
        for key in ("train_s", "predict_s"):
            if key in run:
                cell[key].append(run[key])
        if run.get("embedding_steps") is not None:
            cell["steps"].append(run["embedding_steps"])
    return cells


def paired_gap(fused: dict[str, Any], setfit: dict[str, Any] | None) -> tuple[float, str] | None:
    """Mean accuracy of the fused head minus SetFit's over the seeds both ran (the same draws), and a note when SetFit
    ran on fewer seeds."""
    seeds = sorted(set(fused["by_seed"]) & set(setfit["by_seed"] if setfit else ()))
    if not seeds:
        return None
    gap = np.mean([fused["by_seed"][s] - setfit["by_seed"][s] for s in seeds])
    return float(gap), "" if len(seeds) == len(fused["by_seed"]) else f" (on the {len(seeds)} seeds SetFit ran)"


def accuracy_cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "–"
    if not cell["accuracy"]:
        return f"skipped ({cell['skipped'][0]})"
    mean, std = mean_std(cell["accuracy"])
    ran = len(cell["accuracy"])
    partial = f" ({ran} of {ran + len(cell['skipped'])} seeds)" if cell["skipped"] else ""
    return f"{mean:.2f} ± {std:.2f}{partial}"


def seconds(values: list[float]) -> str:
    return f"{np.mean(values):.1f}" if values else "–"


def run_line(run: dict[str, Any]) -> str:
    """Where and how one run was made: its command, date, machine and SetFit's settings."""
    info = run["machine"]
    setfit_training = ", ".join(f"{k}={v}" for k, v in run["setfit_overrides"].items()) or "its defaults"
    budget = run["args"].get("setfit_step_budget")
    return (f"- `{run['command']}` ({run['date']}; {device_name(info)}, {info['cpu']}, torch {info['torch']} "
            f"({info['torch_threads']} threads), transformers {info['transformers']}, load average before "
            f"{info['loadavg_before'][0]:.2f}; SetFit {run.get('setfit_version') or '(not run)'}, TrainingArguments: "
            f"{setfit_training}{f', draws planning over {budget:,} steps skipped' if budget else ''})")


def merged_results(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per dataset from runs made apart (e.g. the fused head and the probe in one, SetFit in another, over
    the same draws and test rows): their draws pooled, a later run's (method, k, seed) replacing an earlier one's."""
    merged: dict[str, dict[str, Any]] = {}
    for result in (result for run in runs for result in run["results"]):
        target = merged.setdefault(result["dataset"], {**result, "runs": []})
        target.update({key: value for key, value in result.items() if key not in ("runs", "shots")})
        target["shots"] = sorted(set(target.get("shots", [])) | set(result.get("shots", [])))
        keep = {(run["method"], run["k"], run["seed"]) for run in result["runs"]}
        target["runs"] = [run for run in target["runs"] if (run["method"], run["k"], run["seed"]) not in keep]
        target["runs"] += result["runs"]
    return list(merged.values())


def markdown(runs: list[dict[str, Any]]) -> str:
    args = runs[0]["args"]
    results = merged_results(runs)
    max_test = {run["args"]["max_test"] for run in runs} - {None}
    lines = [
        TITLE, "",
        "Commands (date; machine; SetFit's training):", "", *map(run_line, runs), "",
        "SetFit from PyPI in `.venv-setfit` (`bash benchmarks/setup_setfit.sh`), body all-mpnet-base-v2 (the local "
        "folder the project resolves), logistic-regression head, seed per draw. "
        f"{args['seeds']} seeded stratified draws from each TRAIN split (seeds 0-{args['seeds'] - 1}; a seed's draws "
        "nested across k; a class with fewer than k rows gives all it has); the same rows for every method, scored on "
        f"the same test rows{f' (a seeded subset of {max(max_test):,})' if max_test else ''}. "
        "Accuracy (%), mean ± sample standard deviation over the seeds. "
        f"Fused head: preset `{args['preset']}` with its default head, no validation split: {args['head_epochs']} "
        "epochs at the package's lr 1e-3 and batch 128, last epoch kept. Logistic regression: `bench_accuracy.py`'s "
        "probe (standardised features, C=1, L-BFGS) on the very same extracted features.", "",
    ]
    for result in results:
        cells = summary(result)
        methods = list(dict.fromkeys(method for method, _ in cells))
        shots = sorted({k for _, k in cells})
        rows_per_draw = {k: int(np.mean(next(c["num_train"] for (m, kk), c in cells.items() if kk == k)))
                         for k in shots}
        lines += [f"### {result['dataset']} ({result['num_labels']} classes, train split "
                  f"{result['num_train_split']:,} rows, test {result['num_test']:,} rows)", "",
                  "| method | " + " | ".join(f"k={k} ({rows_per_draw[k]:,} rows)" for k in shots) + " |",
                  "|---|" + "---:|" * len(shots)]
        for method in methods:
            lines.append(f"| {method} | " + " | ".join(accuracy_cell(cells.get((method, k))) for k in shots) + " |")
        extraction = result.get("extraction")
        if extraction:
            per_row = extraction["train_pool_s"] / max(extraction["train_pool_rows"], 1)
            lines += ["", "Shared by the fused head and the probe, once: backbone load and warm-up "
                          f"{extraction['load_s']:.1f} s, extraction of the {extraction['train_pool_rows']:,} training "
                          f"rows any draw uses {extraction['train_pool_s']:.1f} s ({1000 * per_row:.0f} ms a row), of "
                          f"the {extraction['test_rows']:,} test rows {extraction['test_s']:.1f} s."]
        lines += ["", "| k | fused: head training s | fused: + its rows' extraction s | logistic regression s | "
                      "SetFit: training s | SetFit: contrastive steps | SetFit: test inference s | "
                      "fused / SetFit training time |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        verdicts = []
        for k in shots:
            fused, setfit = cells.get((FUSED, k)), cells.get((SETFIT, k))
            probes = [c for (m, kk), c in cells.items() if kk == k and m.endswith("(logistic regression)")]
            fused_total = None
            if fused and extraction:
                fused_total = [t + per_row * n for t, n in zip(fused["train_s"], fused["num_train"])]
            ratio = (np.mean(fused_total) / np.mean(setfit["train_s"])
                     if fused_total and setfit and setfit["train_s"] else None)
            steps = "–"
            if setfit and setfit["steps"]:
                steps = f"{np.mean(setfit['steps']):,.0f}"
            elif setfit and setfit["skipped"]:
                steps = ", ".join(sorted(set(setfit["skipped"])))
            lines.append(f"| {k} | {seconds(fused['train_s']) if fused else '–'} | "
                         f"{seconds(fused_total) if fused_total else '–'} | "
                         f"{seconds([t for c in probes for t in c['train_s']])} | "
                         f"{seconds(setfit['train_s']) if setfit else '–'} | {steps} | "
                         f"{seconds(setfit['predict_s']) if setfit else '–'} | "
                         f"{f'{ratio:.3f}' if ratio is not None else '–'} |")
            # The fewest shots: within 1 point; the most (when more than one k ran): ahead.
            goal = {max(result.get("shots", shots)): (0.0, ">"),
                    min(result.get("shots", shots)): (GOAL_GAP_FEWEST, ">=")}.get(k)
            if goal and fused:
                gap = paired_gap(fused, setfit)
                if gap is None:
                    verdicts.append(f"k={k}: n/a (SetFit did not run)")
                else:
                    points, seeds_used = gap
                    met = points >= goal[0] if goal[1] == ">=" else points > goal[0]
                    verdicts.append(f"k={k}: fused head {points:+.2f} points vs SetFit{seeds_used} (goal {goal[1]} "
                                    f"{goal[0]:+.0f}): {'met' if met else 'missed'}")
            if ratio is not None:
                verdicts.append(f"k={k} training time {ratio:.3f} of SetFit's (goal <= {GOAL_TIME_RATIO}): "
                                f"{'met' if ratio <= GOAL_TIME_RATIO else 'missed'}")
        lines += ["", "Goals: " + ("; ".join(verdicts) if verdicts else "n/a (a method did not run)") + ".", ""]
    lines += ["Times are wall seconds per draw (mean over seeds). SetFit's training is its `Trainer.train()` in the "
              "worker (contrastive body training + the logistic head), its inference `model.predict` on the test "
              "rows, without the worker's start and imports; the fused head's is `fit_head` (checkpointing every "
              "epoch included), plus, in the next column, its training rows' share of the timed extraction. "
              "\"fused / SetFit\" divides that sum by SetFit's training time.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(FEWSHOT_DATASETS), choices=list(FEWSHOT_DATASETS))
    parser.add_argument("--shots", nargs="+", type=int, default=[8, 16, 64], help="training rows per class")
    parser.add_argument("--seeds", type=int, default=5, help="seeded draws per k (seeds 0..N-1)")
    parser.add_argument("--max-test", type=int, default=None, help="seeded test subset (default: the whole split)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--head-epochs", type=int, default=HeadTrainingArguments().epochs,
                        help="the fused head's epochs, the last one kept (default: the package's)")
    parser.add_argument("--device", default=None, help="where the backbones and the probe run (cuda on a GPU)")
    parser.add_argument("--feature-cache", default=None,
                        help="feature store to reuse (default: a fresh one, so the extraction times are cold)")
    parser.add_argument("--setfit-python", default=str(SETFIT_PYTHON), help="the interpreter that has SetFit")
    parser.add_argument("--setfit-body", default=None,
                        help="SetFit's sentence-transformers folder (default: the project's all-mpnet-base-v2)")
    parser.add_argument("--setfit-args", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of SetFit's TrainingArguments (default: none, SetFit's defaults)")
    parser.add_argument("--setfit-step-budget", type=int, default=None,
                        help="skip SetFit on draws that plan more contrastive steps than this (reported as skipped)")
    parser.add_argument("--json", default=None, help="also write the raw results here (after every draw)")
    parser.add_argument("--render", nargs="+", default=None, metavar="JSON",
                        help="compute nothing: make the section from earlier --json files (e.g. one per dataset)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.render:
        runs = [json.loads(Path(path).read_text(encoding="utf-8")) for path in args.render]
    else:
        runs = [measure(args, argv)]
    section = markdown(runs)
    print(section)
    if not args.no_write:
        write_sections(RESULTS, [(TITLE, section)])


def measure(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    """Run every dataset; the raw results (also in ``--json``, rewritten after every draw)."""
    setfit_overrides = parse_setfit_args(args.setfit_args)
    if "setfit" in args.methods:
        if not Path(args.setfit_python).exists():
            raise SystemExit(f"{args.setfit_python} not found: run `bash benchmarks/setup_setfit.sh` first (or leave "
                             "SetFit out with --methods fused probe).")
        if args.setfit_body is None:
            from llmembed_hf.backbones import locate_weights, preset_backbone_spec

            args.setfit_body = locate_weights(preset_backbone_spec("mpnet")).folder
    command = "python benchmarks/bench_fewshot.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    run = {"machine": machine(), "command": command, "args": vars(args), "setfit_overrides": setfit_overrides,
           "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "results": []}

    def save(partial: dict[str, Any]) -> None:
        setfit_runs = [r for r in partial["runs"] if r["method"] == SETFIT and "setfit" in r]
        run["setfit_version"] = run.get("setfit_version") or (setfit_runs[0]["setfit"] if setfit_runs else None)
        if args.json:
            Path(args.json).write_text(json.dumps({**run, "results": run["results"] + [partial]}, indent=1,
                                                  default=str), encoding="utf-8")

    loader_kwargs = {"device": args.device} if args.device else {}
    # One load of the backbones serves every dataset and draw (the heads differ, the backbones do not).
    LLMEmbedForSequenceClassification.backbone_loader = staticmethod(_memoised_loader())
    with tempfile.TemporaryDirectory(prefix="bench-fewshot-") as work:
        for name in args.datasets:
            run["results"].append(run_dataset(name, args, loader_kwargs, Path(work), setfit_overrides, save))
    return run

if __name__ == "__main__":
    main()
