#!/usr/bin/env python
"""Views per CPU-second (issue 17, part 4): which backbones, layers, prompts and precisions the presets should use.

Every *variant* is one backbone spec (EmbeddingGemma-300M with or without its classification prompt, the prompt's
tokens pooled or not, fp32, int8 or bf16; Gemma-3-270M's middle states, MiniLM (fp32, int8, bf16), MPNet) whose views are
extracted ONCE per dataset into the llmembed feature store (a rerun reuses them). A *candidate* preset picks views of
one or more variants (a layer choice is a column choice, never a new extraction) and is scored on validation rows
carved from each dataset's TRAIN split (the test splits are never read) with

* ``probe``: the standardised logistic-regression probe (C=1) on its views concatenated (several layers of one
  backbone averaged first), and
* ``fusion``: the LLMEmbed head with the ``small`` preset's head settings, fixed epochs, one seed.

Cost: ``p50 ms`` is the median wall time of one SST-2 test sentence through ``pipeline("text-classification")`` of a
one-backbone head built from that variant with exactly the candidate's layers (so upper blocks a candidate does not
pool are dropped and not timed), after warm-up calls; a candidate's p50 is the sum over its backbones (the head
itself costs well under 1 ms). Finalists are then measured as whole presets with ``benchmarks/bench_serving.py``.

    python benchmarks/bench_views.py --datasets sst2 massive_en --variants embgemma minilm --max-train 300 --max-val 200
    python benchmarks/bench_views.py --json /tmp/views.json --results-md benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import logging
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_accuracy import logistic_probe, scores
from bench_common import machine, read_texts, write_sections
from bench_presets import fusion_score, load_study_splits
from bench_serving import latency
from transformers import pipeline

from llmembed_hf import ExtractionConfig, LLMEmbedConfig, LLMEmbedForSequenceClassification, extract_features
from llmembed_hf.backbones import locate_weights, preset_backbone_spec
from llmembed_hf.modeling.configuration_llmembed import BackboneSpec
from llmembed_hf.modeling.modeling_llmembed import load_dense_modules

logger = logging.getLogger("bench_views")
TITLE = "## Views per CPU-second: the preset study (EmbeddingGemma, prompts, int8)"
DEFAULT_DATASETS = ["sst2", "massive_en", "r8"]
CLASSIFICATION_PROMPT = "task: classification | query: "
#: EmbeddingGemma's stored states: the outputs of blocks 9, 12, 15, 18, 21 and 24 (of 24; -1 is after the final norm).
EMBGEMMA_LAYERS = [-16, -13, -10, -7, -4, -1]


def embgemma_spec(**overrides: Any) -> dict[str, Any]:
    return dict(name="embgemma", model_id="google/embeddinggemma-300m", role="encoder", layers=EMBGEMMA_LAYERS,
                pooling="mean", max_length=256, hidden_size=768, **overrides)


def preset_spec(name: str, **overrides: Any) -> dict[str, Any]:
    return {**preset_backbone_spec(name).to_dict(), **overrides}


#: Variant name -> the spec extracted (its ``layers`` are every state a candidate may pick).
VARIANTS: dict[str, dict[str, Any]] = {
    "embgemma": embgemma_spec(),
    "embgemma+prompt": embgemma_spec(prompt=CLASSIFICATION_PROMPT),
    "embgemma+prompt-unpooled": embgemma_spec(prompt=CLASSIFICATION_PROMPT, pool_prompt=False),
    "embgemma+prompt/int8": embgemma_spec(prompt=CLASSIFICATION_PROMPT, quantization="int8"),
    "embgemma+prompt/bf16": embgemma_spec(prompt=CLASSIFICATION_PROMPT, dtype="bfloat16"),
    "gemma3": preset_spec("gemma3"),
    "gemma3/int8": preset_spec("gemma3", quantization="int8"),
    "minilm": preset_spec("minilm"),
    "minilm/int8": preset_spec("minilm", quantization="int8"),
    "minilm/bf16": preset_spec("minilm", dtype="bfloat16"),
    "mpnet": preset_spec("mpnet"),
    "mpnet/int8": preset_spec("mpnet", quantization="int8"),
}


#: Suffixes of the variants' precisions: fp32, int8 (dynamic, `quantization="int8"`), bf16 (`dtype="bfloat16"`).
PRECISIONS = ("", "/int8", "/bf16")
#: Variants that only answer the prompt questions (run on --prompt-study-datasets only).
PROMPT_QUESTION = ("embgemma", "embgemma+prompt-unpooled")


@dataclass(frozen=True)
class Part:
    """Some views of one variant: ``layers`` (a subset of its spec's layers); ``sentence``: EmbeddingGemma's own
    sentence embedding (its mean-pooled last state through the 2_Dense and 3_Dense projections, then L2-normalised)."""

    variant: str
    layers: tuple[int, ...] = (-1,)
    sentence: bool = False

    @property
    def label(self) -> str:
        what = "sentence-emb" if self.sentence else ("last" if self.layers == (-1,) else ",".join(map(str, self.layers)))
        return f"{self.variant}[{what}]"

    @property
    def timing_key(self) -> str:
        """What decides its latency: the variant and its deepest layer (the sentence projection costs nothing)."""
        return f"{self.variant}[{','.join(map(str, self.layers))}]"


@dataclass
class Candidate:
    name: str
    parts: list[Part] = field(default_factory=list)


def candidates(precision: str) -> list[Candidate]:
    """The candidate presets, in fp32 (``precision=""``), int8 (``"/int8"``: every variant quantised) or bf16
    (``"/bf16"``: every variant computing in bfloat16; only variants extracted in that precision are scored)."""
    e = "embgemma+prompt" + precision
    mid = (-13,)  # block 12 of 24: half of EmbeddingGemma's blocks run
    rows = [
        Candidate("EmbeddingGemma last", [Part(e)]),
        Candidate("EmbeddingGemma sentence embedding", [Part(e, sentence=True)]),
        Candidate("EmbeddingGemma block 12", [Part(e, mid)]),
        Candidate("EmbeddingGemma 6 layers", [Part(e, tuple(EMBGEMMA_LAYERS))]),
        Candidate("EmbeddingGemma + MiniLM", [Part(e), Part("minilm" + precision)]),
        Candidate("EmbeddingGemma block 12 + MiniLM", [Part(e, mid), Part("minilm" + precision)]),
        Candidate("EmbeddingGemma + Gemma-3 middle", [Part(e), Part("gemma3" + precision, (-12, -11, -10, -9, -8))]),
        Candidate("EmbeddingGemma + MiniLM + MPNet", [Part(e), Part("minilm" + precision), Part("mpnet" + precision)]),
        Candidate("MiniLM", [Part("minilm" + precision)]),
        Candidate("MiniLM + MPNet", [Part("minilm" + precision), Part("mpnet" + precision)]),
        Candidate("small (Gemma-3 middle + MiniLM + MPNet)",
                  [Part("gemma3" + precision, (-12, -11, -10, -9, -8)), Part("minilm" + precision),
                   Part("mpnet" + precision)]),
    ]
    if not precision:  # the prompt questions, asked once in fp32
        rows[2:2] = [
            Candidate("EmbeddingGemma last, no prompt", [Part("embgemma")]),
            Candidate("EmbeddingGemma last, prompt not pooled", [Part("embgemma+prompt-unpooled")]),
        ]
    return rows


def variant_spec(variant: str, layers: tuple[int, ...] | None = None) -> BackboneSpec:
    spec = BackboneSpec.from_dict(VARIANTS[variant])
    if layers is not None:
        spec.layers = list(layers)
    return spec


def extract_variant(variant: str, splits: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """(texts, views, width) arrays of ``variant`` on each split, through the feature store."""
    spec = variant_spec(variant)
    model = LLMEmbedForSequenceClassification.from_backbones(LLMEmbedConfig(backbones=[spec.to_dict()], num_labels=2))
    arrays = {}
    for split, texts in splits.items():
        features = extract_features(model, texts, show_progress=False, config=ExtractionConfig(dtype="float32"))
        arrays[split] = features.with_format("numpy")[:]["pooled_features"].reshape(len(texts), spec.num_views, -1)
    del model
    gc.collect()
    return arrays


def sentence_projection() -> tuple[np.ndarray, np.ndarray]:
    """EmbeddingGemma's 2_Dense and 3_Dense weights, as `BackboneSpec.dense_modules` loads them (no bias, identity
    activation: checked), so the product below is exactly what that spec option computes on a stored pooled state."""
    dense = load_dense_modules(locate_weights(BackboneSpec.from_dict(VARIANTS["embgemma"])).folder)
    linears = [module for module in dense if isinstance(module, torch.nn.Linear)]
    if len(linears) != 2 or any(linear.bias is not None for linear in linears) or not all(
            isinstance(module, torch.nn.Identity) for module in dense if module not in linears):
        raise ValueError(f"expected two Linear maps without bias or activation, got {dense}")
    return linears[0].weight.numpy(), linears[1].weight.numpy()


def views_of(part: Part, arrays: dict[str, np.ndarray], split: str, dense: tuple[np.ndarray, np.ndarray] | None
             ) -> np.ndarray:
    """(texts, len(layers), width) views of ``part`` on ``split``."""
    stored = list(VARIANTS[part.variant]["layers"])
    data = arrays[split][:, [stored.index(layer) for layer in part.layers]]
    if part.sentence:
        vector = data[:, 0] @ dense[0].T @ dense[1].T
        data = (vector / np.linalg.norm(vector, axis=1, keepdims=True))[:, None]
    return data


def score_candidate(candidate: Candidate, features: dict[str, dict[str, np.ndarray]], labels: dict[str, list[int]],
                    num_labels: int, args: argparse.Namespace, work: Path,
                    dense: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
    parts = {split: [views_of(p, features[p.variant], split, dense) for p in candidate.parts]
             for split in ("train", "validation")}
    probe_in = {split: np.concatenate([v.mean(1) for v in views], 1) for split, views in parts.items()}
    row: dict[str, Any] = {"probe": scores(logistic_probe(probe_in["train"], np.asarray(labels["train"]),
                                                          probe_in["validation"], num_labels, "cpu"),
                                           np.asarray(labels["validation"]), None)}
    specs = []
    for part, views in zip(candidate.parts, parts["train"]):
        spec = variant_spec(part.variant, part.layers)
        spec.role = "llm" if views.shape[1] > 1 else spec.role  # several layers of one model: LLMEmbed's LLM view
        spec.hidden_size = views.shape[2]
        spec.name = f"{spec.name}{len(specs)}"
        specs.append(spec)
    flat = {split: np.concatenate([v.reshape(len(v), -1) for v in views], 1) for split, views in parts.items()}
    row["fusion"] = fusion_score(specs, flat["train"], labels["train"], flat["validation"], labels["validation"],
                                 num_labels, args, work)
    return row


def part_latency(part: Part, sentences: list[str]) -> float:
    """p50 ms of one sentence through the pipeline of a one-backbone head with exactly ``part``'s layers."""
    spec = variant_spec(part.variant, part.layers)
    model = LLMEmbedForSequenceClassification.from_backbones(LLMEmbedConfig(backbones=[spec.to_dict()], num_labels=2))
    classify = pipeline("text-classification", model=model, tokenizer=model.tokenizer)
    p50 = latency(classify, sentences)["p50_ms"]
    del classify, model
    gc.collect()
    return p50


def markdown(results: list[dict[str, Any]], latencies: dict[str, float], info: dict[str, Any], command: str,
             title: str = TITLE) -> str:
    lines = [
        title, "",
        f"Command: `{command}`  ",
        f"Date: {info['date']}  ",
        f"Machine: {info['nproc']} CPU cores ({info['cpu']}), torch {info['torch']} ({torch.get_num_threads()} "
        f"threads), transformers {info['transformers']}.  ",
        "Validation accuracy (%) on rows held out from each TRAIN split (test splits not read); `probe`: logistic "
        "regression (C=1) on the candidate's views concatenated (layers of one backbone averaged); `fusion`: the "
        "LLMEmbed head with the `small` head settings (fixed epochs, seed 42). `p50 ms`: one SST-2 sentence through "
        "`pipeline()`, summed over the candidate's backbones (each measured alone with the candidate's layers).", "",
    ]
    names = [r["dataset"] for r in results]
    lines.append("| candidate | views | p50 ms | " + " | ".join(f"{n} probe / fusion" for n in names)
                 + " | mean fusion |")
    lines.append("|---|---|---:|" + "---:|" * (len(names) + 1))
    order = list(dict.fromkeys(row["candidate"] for result in results for row in result["rows"]))
    for name in order:
        cells, fusions = [], []
        for result in results:
            row = next((r for r in result["rows"] if r["candidate"] == name), None)
            if row is None:
                cells.append("-")
                continue
            fusions.append(row["fusion"]["accuracy"])
            cells.append(f"{100 * row['probe']['accuracy']:.1f} / {100 * row['fusion']['accuracy']:.1f}")
        row0 = next(r for result in results for r in result["rows"] if r["candidate"] == name)
        p50 = sum(latencies.get(label, float("nan")) for label in row0["latency_keys"])
        mean = f"{100 * statistics.mean(fusions):.1f}" if len(fusions) == len(results) else "-"
        lines.append(f"| {name} | {row0['views']} | {p50:.0f} | " + " | ".join(cells) + f" | {mean} |")
    lines.append("")
    lines.append("Per backbone (p50 ms, one sentence): " + ", ".join(
        f"{label} {ms:.0f}" for label, ms in sorted(latencies.items())))
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS, help="folders under ../shared/datasets")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="variants to extract (candidates needing another variant are left out)")
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--max-val", type=int, default=1000)
    parser.add_argument("--limits", nargs="*", default=["r8=1000/500"], metavar="DATASET=TRAIN/VAL",
                        help="per-dataset --max-train/--max-val (default: r8=1000/500: its documents are long)")
    parser.add_argument("--prompt-study-datasets", nargs="*", default=["sst2", "massive_en"],
                        help="the only datasets the prompt-question variants (no prompt, prompt not pooled) run on")
    parser.add_argument("--extract-only", action="store_true", help="fill the feature store, score nothing")
    parser.add_argument("--epochs", type=int, default=None, help="fusion head epochs (default: HeadTrainingArguments)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--latency-texts", type=int, default=20, help="SST-2 test sentences timed per backbone")
    parser.add_argument("--candidates", nargs="*", default=None, metavar="NAME",
                        help="score only these candidates (names as in the table, without the precision), e.g. "
                             "'EmbeddingGemma last' 'MiniLM'")
    parser.add_argument("--section", default=TITLE,
                        help="the RESULTS.md section written (a partial re-run goes under its own title)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--results-md", default=None, help="replace this study's section of this RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[bench_views] %(message)s", stream=sys.stderr)
    info = {**machine(), "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"}
    command = "python benchmarks/bench_views.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    with tempfile.TemporaryDirectory() as work, contextlib.redirect_stdout(sys.stderr):
        limits = {item.split("=")[0]: tuple(map(int, item.split("=")[1].split("/"))) for item in args.limits}
        splits = {name: load_study_splits(name, argparse.Namespace(**{**vars(args), **dict(zip(
            ("max_train", "max_val"), limits.get(name, (args.max_train, args.max_val))))})) for name in args.datasets}
        features: dict[str, dict[str, dict[str, np.ndarray]]] = {name: {} for name in args.datasets}
        for variant in args.variants:
            for name, (train, validation, _) in splits.items():
                if variant in PROMPT_QUESTION and name not in args.prompt_study_datasets:
                    continue
                started = time.perf_counter()
                features[name][variant] = extract_variant(variant, {"train": train.texts,
                                                                    "validation": validation.texts})
                logger.info(f"{variant} on {name}: {time.perf_counter() - started:.0f} s")
        if args.extract_only:
            return
        dense = sentence_projection() if any(v.startswith("embgemma+prompt") for v in args.variants) else None
        pool = [c for precision in PRECISIONS for c in candidates(precision)
                if all(p.variant in args.variants for p in c.parts)
                and (not args.candidates or c.name in args.candidates)]
        results = []
        for name, (train, validation, label_names) in splits.items():
            labels = {"train": train.labels, "validation": validation.labels}
            rows = []
            for candidate in pool:
                if any(p.variant not in features[name] for p in candidate.parts):
                    continue
                row = score_candidate(candidate, features[name], labels, len(label_names), args, Path(work), dense)
                precision = candidate.parts[0].variant.partition("/")[2]
                row.update(candidate=candidate.name + (f" ({precision})" if precision else ""),
                           views=" + ".join(p.label for p in candidate.parts),
                           latency_keys=[p.timing_key for p in candidate.parts])
                rows.append(row)
                logger.info(f"{name} {row['candidate']}: probe {row['probe']['accuracy']:.4f} "
                            f"fusion {row['fusion']['accuracy']:.4f}")
            results.append({"dataset": name, "num_train": len(train.texts), "num_validation": len(validation.texts),
                            "rows": rows})
        sentences = read_texts("sst2", args.latency_texts, split="test")
        latencies = {}
        for part in {Part(p.variant, p.layers) for c in pool for p in c.parts}:
            latencies[part.timing_key] = part_latency(part, sentences)
            logger.info(f"latency {part.timing_key}: {latencies[part.timing_key]:.1f} ms")
    report = markdown(results, latencies, info, command, args.section)
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "command": command, "results": results,
                                               "latencies": latencies}, indent=1))
    if args.results_md:
        write_sections(Path(args.results_md), [(args.section, report)])


if __name__ == "__main__":
    main()
