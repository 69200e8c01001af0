#!/usr/bin/env python
"""Preset study: which LLM, which of its layers, and which encoders, scored on validation data carved from train.

For every backbone (LLMs: smollm2, gemma, qwen; encoders: minilm, mpnet — the specs of the ``small``,
``small-smollm2`` and ``small-qwen`` presets) and every dataset, features are extracted ONCE with EVERY hidden state pooled
(embeddings + each block; the last entry of a decoder is its final-norm output), so each candidate layer choice is a
selection of columns, never a new extraction:

* LLM layer sets: ``last-k`` for k in 1, 3, 5, 8; ``every-4th`` (the last state, then every 4th below it);
  ``middle-3``/``middle-5`` (centred on the middle block) and ``middle-3+last-2``, after "Layer-Aware Embedding
  Fusion" (arXiv 2504.05764);
* scored with (a) a logistic-regression probe (standardised, C=1; `bench_accuracy.logistic_probe`) on the LLM's
  selected layers averaged ("LLM alone"), (b) the same probe on that average concatenated with the encoders'
  vectors, and (c) unless ``--no-fusion``, the LLMEmbed fusion head (`fit_head`, fixed epochs, no checkpoint
  selection) over the selected LLM views + the encoders; the encoders without an LLM are the baseline rows.

Data: a seeded random subset of ``--max-train + --max-val`` rows of each dataset's TRAIN split, of which ``--max-val``
are held out as validation (`carve_validation`). The test split is never read. Cost: process CPU-seconds (all
threads) and wall seconds per 1,000 texts of extracting every layer of one backbone (tokenisation included); the
``est. CPU-s/1k`` of a layer set counts only the blocks up to its deepest layer (upper blocks can be skipped), plus
the encoders' cost. Features go to a fresh temporary cache unless ``--cache-dir`` is given (then a rerun reuses them
and its cost columns are meaningless: they are marked "cached").

    python benchmarks/bench_presets.py --max-train 300 --max-val 200 --json /tmp/presets.json
    python benchmarks/bench_presets.py --llms smollm2 gemma qwen --datasets sst2 --max-train 4000 --max-val 1000 \\
        --device cuda --results-md benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import logging
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_accuracy import _memoised_loader, logistic_probe, scores
from bench_common import DATASETS, RESULTS, machine, write_sections
from datasets import Dataset
from transformers import AutoConfig

from llmembed_hf import (
    PRESETS,
    ExtractionConfig,
    HeadTrainingArguments,
    LLMEmbedConfig,
    LLMEmbedForSequenceClassification,
    extract_features,
    fit_head,
)
from llmembed_hf.backbones import locate_weights, preset_backbone_spec
from llmembed_hf.data import LabelledTexts, carve_validation, load_labelled
from llmembed_hf.features import missing_texts
from llmembed_hf.modeling.configuration_llmembed import BackboneSpec
from llmembed_hf.trainer import predict_logits

logger = logging.getLogger("bench_presets")
TITLE = "## Preset study: LLM, layers and encoders on validation data carved from train"
DEFAULT_DATASETS = ["sst2", "massive_en", "r8"]
#: Backbone name in this study -> its name in the presets.
BACKBONES: dict[str, str] = {"smollm2": "smollm2", "gemma": "gemma3", "qwen": "qwen25", "minilm": "minilm",
                             "mpnet": "mpnet"}


def study_spec(backbone: str) -> BackboneSpec:
    """The preset's spec of ``backbone`` with every hidden state pooled (a view per state, embeddings first)."""
    spec = preset_backbone_spec(BACKBONES[backbone])
    config = AutoConfig.from_pretrained(locate_weights(spec).folder)
    spec.layers = list(range(-(config.get_text_config().num_hidden_layers + 1), 0))
    return spec


def layer_sets(num_states: int) -> dict[str, list[int]]:
    """Candidate LLM layer choices as indices into ``hidden_states`` (0 = embeddings, ``num_states - 1`` = last)."""
    last = num_states - 1
    middle = last // 2
    return {
        "last-1": [last],
        "last-3": list(range(last - 2, last + 1)),
        "last-5": list(range(last - 4, last + 1)),
        "last-8": list(range(last - 7, last + 1)),
        "every-4th": sorted(range(last, 0, -4)),
        "middle-3": list(range(middle - 1, middle + 2)),
        "middle-5": list(range(middle - 2, middle + 3)),
        "middle-3+last-2": [middle - 1, middle, middle + 1, last - 1, last],
    }


@dataclass
class Extracted:
    """All-layer features of one backbone on one dataset: (texts, states, width) arrays and what they cost."""

    train: np.ndarray
    validation: np.ndarray
    cpu_s_per_1k: float
    wall_s_per_1k: float
    cached: bool


def extract_all_layers(spec: BackboneSpec, splits: dict[str, list[str]], loader_kwargs: dict[str, Any],
                       cache: Path) -> Extracted:
    """Extract ``spec`` (every layer) on the train and validation texts; time it (process CPU and wall)."""
    config = LLMEmbedConfig(backbones=[spec.to_dict()], num_labels=2)
    model = LLMEmbedForSequenceClassification.from_backbones(config, **loader_kwargs)
    hit = all(not any(missing_texts(model, split_texts, cache_folder=cache / "features").values())
              for split_texts in splits.values())
    arrays, cpu, wall, texts = {}, time.process_time(), time.perf_counter(), 0
    for name, split_texts in splits.items():
        features = extract_features(model, split_texts, cache_folder=cache / "features", show_progress=False,
                                    config=ExtractionConfig(dtype="float32"))
        arrays[name] = features.with_format("numpy")[:]["pooled_features"].reshape(
            len(split_texts), spec.num_views, spec.hidden_size)
        texts += len(split_texts)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return Extracted(arrays["train"], arrays["validation"], 1000 * cpu / texts, 1000 * wall / texts, hit)


def fusion_score(specs: list[BackboneSpec], train_x: np.ndarray, train_y: list[int], val_x: np.ndarray,
                 val_y: list[int], num_labels: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Train the LLMEmbed head on these views (fixed epochs, no checkpoint selection) and score it on validation."""
    config = LLMEmbedConfig(backbones=[s.to_dict() for s in specs], num_labels=num_labels, **{
        k: v for k, v in PRESETS["small"].items() if k != "backbones"})
    torch.manual_seed(args.seed)
    model = LLMEmbedForSequenceClassification(config)
    as_dataset = lambda x, y: Dataset.from_dict({"pooled_features": x, "labels": y}).with_format("torch")  # noqa: E731
    training = HeadTrainingArguments(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    with tempfile.TemporaryDirectory(dir=work) as folder:
        fit_head(model, as_dataset(train_x, train_y), None, folder, training)
    return scores(predict_logits(model, as_dataset(val_x, val_y)).argmax(-1), np.asarray(val_y), None)


def load_study_splits(name: str, args: argparse.Namespace) -> tuple[LabelledTexts, LabelledTexts, list[str]]:
    """A seeded subset of the TRAIN split, cut into ``--max-train`` training and ``--max-val`` validation rows."""
    data, names = load_labelled(DATASETS / name, "train", max_samples=args.max_train + args.max_val, seed=args.seed)
    train, validation = carve_validation(data, args.max_val / len(data.texts), args.seed)
    return train, validation, names


def run_dataset(name: str, splits: tuple[LabelledTexts, LabelledTexts, list[str]], args: argparse.Namespace,
                work: Path, extracted: dict[tuple[str, str], Extracted], specs: dict[str, BackboneSpec]
                ) -> dict[str, Any]:
    """Every candidate view set on one dataset (the features of each backbone were extracted beforehand)."""
    train, validation, names = splits
    train_y, val_y = np.asarray(train.labels), np.asarray(validation.labels)
    encoders = [b for b in args.encoders if (b, name) in extracted]
    rows: list[dict[str, Any]] = []
    device = args.device or "cpu"

    def probe(train_x: np.ndarray, val_x: np.ndarray) -> dict[str, float]:
        """The standardised logistic-regression probe (C=1), scored on validation."""
        return scores(logistic_probe(train_x, train_y, val_x, len(names), device), val_y, None)

    def encoder_views(split: str) -> list[np.ndarray]:
        return [getattr(extracted[(b, name)], split)[:, -1] for b in encoders]

    def encoder_specs() -> list[BackboneSpec]:
        return [BackboneSpec.from_dict({**specs[b].to_dict(), "layers": [-1]}) for b in encoders]

    encoder_cost = sum(extracted[(b, name)].cpu_s_per_1k for b in encoders)
    if encoders:
        for b in encoders if len(encoders) > 1 else []:  # one encoder alone is the row below
            e = extracted[(b, name)]
            rows.append({"llm": "-", "layers": "-", "encoders": b, "probe": probe(e.train[:, -1], e.validation[:, -1]),
                         "cpu_s_per_1k": e.cpu_s_per_1k})
        row = {"llm": "-", "layers": "-", "encoders": "+".join(encoders), "cpu_s_per_1k": encoder_cost,
               "probe": probe(np.concatenate(encoder_views("train"), 1),
                              np.concatenate(encoder_views("validation"), 1))}
        if not args.no_fusion:
            row["fusion"] = fusion_score(encoder_specs(), np.concatenate(encoder_views("train"), 1), train.labels,
                                         np.concatenate(encoder_views("validation"), 1), validation.labels,
                                         len(names), args, work)
        rows.append(row)
    for llm in args.llms:
        if (llm, name) not in extracted:
            continue
        e, spec = extracted[(llm, name)], specs[llm]
        num_states = e.train.shape[1]
        for label, layers in layer_sets(num_states).items():
            mean_train, mean_val = e.train[:, layers].mean(1), e.validation[:, layers].mean(1)
            fraction = max(layers) / (num_states - 1)
            row = {"llm": llm, "layers": label, "indices": layers, "encoders": "+".join(encoders) or "-",
                   "cpu_s_per_1k": fraction * e.cpu_s_per_1k + encoder_cost,
                   "llm_probe": probe(mean_train, mean_val)}
            if encoders:
                row["probe"] = probe(np.concatenate([mean_train, *encoder_views("train")], 1),
                                     np.concatenate([mean_val, *encoder_views("validation")], 1))
            if not args.no_fusion:
                views = BackboneSpec.from_dict({**spec.to_dict(), "layers": [i - num_states for i in layers]})
                flat = lambda split: np.concatenate(  # noqa: E731
                    [getattr(e, split)[:, layers].reshape(len(getattr(e, split)), -1), *encoder_views(split)], 1)
                row["fusion"] = fusion_score([views, *encoder_specs()], flat("train"), train.labels,
                                             flat("validation"), validation.labels, len(names), args, work)
            rows.append(row)
            logger.info(f"{name} {llm} {label}: {json.dumps({k: v for k, v in row.items() if k != 'indices'})}")
    return {"dataset": name, "num_train": len(train.texts), "num_validation": len(validation.texts),
            "num_labels": len(names), "rows": rows,
            "extraction": {b: {"cpu_s_per_1k": extracted[(b, name)].cpu_s_per_1k,
                               "wall_s_per_1k": extracted[(b, name)].wall_s_per_1k,
                               "cached": extracted[(b, name)].cached}
                           for b in [*args.llms, *args.encoders] if (b, name) in extracted}}


def markdown(results: list[dict[str, Any]], info: dict[str, Any], command: str) -> str:
    device = info["gpu"] or f"{info['nproc']} CPU cores ({info['cpu']})"
    lines = [
        TITLE, "",
        f"Command: `{command}`  ",
        f"Date: {info['date']}  ",
        f"Machine: {device}, torch {info['torch']}, transformers {info['transformers']}.  ",
        "Validation accuracy / macro-F1 (%) on rows held out from each TRAIN split (the test splits are not read). "
        "`LLM probe`: logistic regression on the LLM's selected layers averaged; `probe`: that average concatenated "
        "with the encoders' vectors; `fusion`: the LLMEmbed head (small preset's head settings, fixed epochs) on the "
        "selected LLM views + encoders. `est. CPU-s/1k`: extraction CPU-seconds per 1,000 texts of the blocks this "
        "row needs (LLM blocks up to its deepest layer + the encoders).", "",
    ]
    for result in results:
        lines += [f"### {result['dataset']} (train {result['num_train']}, validation {result['num_validation']}, "
                  f"{result['num_labels']} classes)", "",
                  "Extraction of every layer, per 1,000 texts: " + ", ".join(
                      f"{b} {v['cpu_s_per_1k']:.0f} CPU-s / {v['wall_s_per_1k']:.0f} s wall"
                      + (" (cached: not a cost)" if v["cached"] else "") for b, v in result["extraction"].items()),
                  "",
                  "| LLM | layers | encoders | LLM probe acc / F1 | probe acc / F1 | fusion acc / F1 | est. CPU-s/1k |",
                  "|---|---|---|---:|---:|---:|---:|"]
        cell = lambda m: f"{100 * m['accuracy']:.1f} / {100 * m['macro_f1']:.1f}" if m else "-"  # noqa: E731
        for row in result["rows"]:
            lines.append(f"| {row['llm']} | {row['layers']} | {row['encoders']} | {cell(row.get('llm_probe'))} | "
                         f"{cell(row.get('probe'))} | {cell(row.get('fusion'))} | {row['cpu_s_per_1k']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, help="folders under ../shared/datasets")
    parser.add_argument("--llms", nargs="+", default=["smollm2", "gemma", "qwen"],
                        choices=[b for b in BACKBONES if b not in ("minilm", "mpnet")])
    parser.add_argument("--encoders", nargs="*", default=["minilm", "mpnet"], choices=["minilm", "mpnet"])
    parser.add_argument("--max-train", type=int, default=300, help="training rows per dataset (default: 300)")
    parser.add_argument("--max-val", type=int, default=200, help="validation rows carved from train (default: 200)")
    parser.add_argument("--epochs", type=int, default=None, help="fusion head epochs (default: HeadTrainingArguments)")
    parser.add_argument("--no-fusion", action="store_true", help="probes only (no fusion heads)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default=None, help="where the backbones run (e.g. cuda)")
    parser.add_argument("--cache-dir", default=None, help="feature cache to reuse (default: a fresh temp folder)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--results-md", default=None, help="replace this study's section of this RESULTS.md")
    parser.add_argument("--render", nargs="+", default=None, metavar="JSON",
                        help="compute nothing: write the section of --results-md from earlier --json files")
    args = parser.parse_args(argv)
    if args.render:
        runs = [json.loads(Path(path).read_text()) for path in args.render]
        report = markdown([r for run in runs for r in run["results"]], runs[0]["machine"],
                          "`, `".join(run["command"] for run in runs))
        write_sections(Path(args.results_md or RESULTS), [(TITLE, report)])
        return
    logging.basicConfig(level=logging.INFO, format="[bench_presets] %(message)s", stream=sys.stderr)

    info = {**machine(), "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"}
    loader_kwargs = {"device": args.device} if args.device else {}
    command = "python benchmarks/bench_presets.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    # Trainer prints its logs on stdout: keep stdout for the markdown report alone.
    with tempfile.TemporaryDirectory() as work, contextlib.redirect_stdout(sys.stderr):
        cache = Path(args.cache_dir) if args.cache_dir else Path(work)
        splits = {name: load_study_splits(name, args) for name in args.datasets}
        texts = {name: {"train": s[0].texts, "validation": s[1].texts} for name, s in splits.items()}
        extracted: dict[tuple[str, str], Extracted] = {}
        specs: dict[str, BackboneSpec] = {}
        for backbone in [*args.llms, *args.encoders]:
            try:
                specs[backbone] = study_spec(backbone)
            except OSError as error:  # optional weights not installed: say so and go on
                logger.warning(f"skipping {backbone}: {error}")
                continue
            # One load per backbone for every dataset; the previous backbone is freed first.
            LLMEmbedForSequenceClassification.backbone_loader = staticmethod(_memoised_loader())
            for name in args.datasets:
                logger.info(f"extracting {backbone} on {name} ({sum(map(len, texts[name].values()))} texts)")
                extracted[(backbone, name)] = extract_all_layers(specs[backbone], texts[name], loader_kwargs, cache)
                logger.info(f"{backbone} {name}: {extracted[(backbone, name)].cpu_s_per_1k:.1f} CPU-s per 1k texts")
            gc.collect()
        results = [run_dataset(name, splits[name], args, Path(work), extracted, specs) for name in args.datasets]
    report = markdown(results, info, command)
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "command": command, "results": results}, indent=1))
    if args.results_md:
        write_sections(Path(args.results_md), [(TITLE, report)])


if __name__ == "__main__":
    main()
