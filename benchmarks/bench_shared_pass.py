#!/usr/bin/env python
"""One forward pass for two views of one model (preset ``small-layers``): extraction and serving cost, side by side.

``small-layers`` pools two views of EmbeddingGemma-300M: its sentence embedding (all 24 blocks, then its Dense
modules) and the mean of its blocks 9, 12 and 15 (an LLM view). Both see the same tokens through the same weights, so
one forward gives both (`LLMEmbedForSequenceClassification.pass_groups`); before, each view ran its own pass (the
middle states through a copy holding 16 blocks). In one process on CPU, every round, on the first N GoEmotions training
texts:

1. ``small`` into an empty store: the sentence embedding, one full pass;
2. ``small-layers`` into that store: only the middle states are missing, so they run alone through their own copy
   (16 blocks), which is also what each text cost ``small-layers`` before its views shared a pass (1 + 2);
3. ``small-layers`` into an empty store: one full pass gives both views (the shared pass).

Step 3's features must equal step 2's (the same hidden states, pooled alike; the maximum difference is printed).
Serving: the wall time of ``model.encode`` on one tokenised SST-2 test sentence at a time (what a pipeline call runs
besides tokenising and the head), median over the sentences, the three ways interleaved per sentence: ``small``,
``small-layers`` (the shared pass), and ``small-layers`` as two passes (``encode_backbone`` per view, the code path
before). Backbone loading is not timed.

    python benchmarks/bench_shared_pass.py [--texts 2000] [--rounds 2] [--sentences 100] [--output benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from bench_common import RESULTS, publish, read_texts, timed_run

from llmembed_hf import LLMEmbedForSequenceClassification, extract_features

TITLE = "## One forward pass for two views of one model (`small-layers`)"


def timed_extraction(model: LLMEmbedForSequenceClassification, texts: list[str], store: str) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    features = extract_features(model, texts, cache_folder=store, show_progress=False)
    return time.perf_counter() - start, features[:]["pooled_features"]


def extraction_round(small, layers, texts: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="shared-pass-") as folder:
        sentence_s, _ = timed_extraction(small, texts, f"{folder}/apart")
        middle_s, apart = timed_extraction(layers, texts, f"{folder}/apart")
        shared_s, shared = timed_extraction(layers, texts, f"{folder}/shared")
    return {"small_s": sentence_s, "middle_alone_s": middle_s, "two_passes_s": sentence_s + middle_s,
            "shared_s": shared_s, "max_abs_difference": float((shared - apart).abs().max())}


def serving(small, layers, sentences: list[str]) -> dict:
    def two_passes(batch: dict) -> torch.Tensor:
        return torch.cat([layers.finish_views(name, layers.encode_backbone(name, batch[f"{name}_input_ids"],
                                                                            batch[f"{name}_attention_mask"]))
                          for name in ("embeddinggemma", "embeddinggemma_mid")], dim=-1)

    ways = {"small": (small, small.encode), "small-layers, one shared pass": (layers, layers.encode),
            "small-layers, two passes": (layers, lambda **batch: two_passes(batch))}
    times: dict[str, list[float]] = {way: [] for way in ways}
    with torch.inference_mode():
        for i, sentence in enumerate(sentences):
            for way, (model, encode) in ways.items():
                batch = model.tokenizer([sentence], return_tensors="pt")
                start = time.perf_counter()
                features = encode(**batch)
                if i >= 3:  # warm-up calls are not counted
                    times[way].append((time.perf_counter() - start) * 1000)
            if i == 0:
                shared = layers.encode(**layers.tokenizer([sentence], return_tensors="pt"))
                torch.testing.assert_close(shared, features, atol=1e-5, rtol=0)  # the two ways give one vector
    return {way: {"p50_ms": statistics.median(values), "mean_ms": statistics.fmean(values), "n": len(values)}
            for way, values in times.items()}


def run(args: argparse.Namespace) -> dict:
    small = LLMEmbedForSequenceClassification.from_preset("small").eval()
    layers = LLMEmbedForSequenceClassification.from_preset("small-layers").eval()
    texts = read_texts("goemotions", args.texts)
    rounds = [extraction_round(small, layers, texts) for _ in range(args.rounds)]
    sentences = read_texts("sst2", args.sentences + 3, split="test")
    return {"texts": len(texts), "rounds": rounds, "serving": serving(small, layers, sentences),
            "blocks": {name: len(backbone.layers) for name, backbone in layers.backbones.items()}}


def section(result: dict, command: str, started: str, took: float, info: dict) -> str:
    rounds = result["rounds"]
    best = {key: min(r[key] for r in rounds) for key in ("small_s", "middle_alone_s", "two_passes_s", "shared_s")}
    lines = [
        TITLE, "",
        f"Command: `{command}` ({started} UTC, {took:.0f} s; {info['nproc']} CPU cores, {info['cpu']}, torch "
        f"{info['torch']} ({info['torch_threads']} threads), transformers {info['transformers']}, load average before "
        f"{info['loadavg_before'][0]:.2f}).", "",
        f"`small-layers` pools EmbeddingGemma-300M twice: its sentence embedding and its blocks 9, 12 and 15 (the loaded "
        f"copies compute {result['blocks']['embeddinggemma']} and {result['blocks']['embeddinggemma_mid']} blocks). "
        "The views share one forward pass when both miss a text (`pass_groups`); a text only the middle view misses runs "
        "through its own shorter copy.", "",
        f"Extraction of the first {result['texts']:,} GoEmotions training texts into empty stores, wall seconds per "
        f"round (rounds 1-{len(rounds)}) and the fastest round:", "",
        "| what runs | " + " | ".join(f"round {i + 1}" for i in range(len(rounds))) + " | fastest | / `small` |",
        "|---|" + "---:|" * (len(rounds) + 2),
    ]
    rows = [("`small`: the sentence embedding, one full pass", "small_s"),
            ("`small-layers` into `small`'s store: the middle states alone (16 blocks)", "middle_alone_s"),
            ("`small-layers` as two passes (the two rows above; the code before)", "two_passes_s"),
            ("`small-layers` into an empty store: one shared pass", "shared_s")]
    for label, key in rows:
        cells = " | ".join(f"{r[key]:.1f}" for r in rounds)
        lines.append(f"| {label} | {cells} | {best[key]:.1f} | {best[key] / best['small_s']:.2f}x |")
    differences = ", ".join(f"{r['max_abs_difference']:.1e}" for r in rounds)
    lines += [
        "", f"The shared pass's features against the two passes' (the same rows): largest absolute difference "
        f"{differences} per round.", "",
        f"Serving: `model.encode` of one SST-2 test sentence, {result['serving']['small']['n']} sentences after 3 "
        "warm-up ones, the three ways interleaved per sentence (wall ms):", "",
        "| head | p50 ms | mean ms | / `small` (p50) |", "|---|---:|---:|---:|",
    ]
    base = result["serving"]["small"]["p50_ms"]
    for way, figures in result["serving"].items():
        lines.append(f"| {way} | {figures['p50_ms']:.1f} | {figures['mean_ms']:.1f} | {figures['p50_ms'] / base:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=2000, help="GoEmotions training texts to extract")
    parser.add_argument("--rounds", type=int, default=2, help="extraction rounds (the fastest is quoted too)")
    parser.add_argument("--sentences", type=int, default=100, help="SST-2 test sentences timed one at a time")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--output", default=str(RESULTS), help="RESULTS.md to update (section " + TITLE + ")")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    result, info, started, took, command = timed_run("benchmarks/bench_shared_pass.py", lambda: run(args))
    record = {"machine": info, "started": started, "took_s": took, "command": command, **result}
    publish(TITLE, section(result, command, started, took, info), record, args.json, args.output, not args.no_write)


if __name__ == "__main__":
    main()
