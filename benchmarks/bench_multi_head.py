"""Several heads, one backbone pass: latency and peak memory of 1 head vs N heads on the same backbones.

Each configuration runs in its own subprocess (so peak RSS is its own), alternating, on the same SST-2 test sentences:
  1. one head through `MultiHeadClassifier([head])`: one backbone pass, one head;
  2. N heads through `MultiHeadClassifier([...N heads])`: the backbones load once (the registry) and run once per text.
Latency is per single sentence (p50/p90 over the sentences, after a warm-up); the heads are fresh (random) heads of the
preset, since their weights do not change the cost. Writes the section "Many heads, one backbone pass" of
benchmarks/RESULTS.md.

    python benchmarks/bench_multi_head.py --preset small --heads 3 --sentences 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import RESULTS, Measure, machine, read_texts, write_sections  # noqa: E402

TITLE = "## Many heads, one backbone pass"


def run(preset: str, heads: int, sentences: int) -> dict:
    """In this process: load ``heads`` fresh heads of ``preset`` and time one-sentence calls."""
    import torch

    from llmembed_hf import LLMEmbedForSequenceClassification, MultiHeadClassifier

    texts = read_texts("sst2", sentences, split="test")
    with Measure() as measure:
        models = []
        for seed in range(heads):
            torch.manual_seed(seed)
            models.append(LLMEmbedForSequenceClassification.from_preset(preset, num_labels=2).eval())
        classifier = MultiHeadClassifier(models, names=[f"head{i}" for i in range(heads)])
        classifier(texts[:5])  # warm-up
        latencies = []
        for text in texts:
            started = time.perf_counter()
            classifier(text)
            latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {"heads": heads, "p50_ms": 1000 * statistics.median(latencies),
            "p90_ms": 1000 * latencies[int(0.9 * (len(latencies) - 1))], **measure.as_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of 1 head and N heads")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run(args.preset, args.child, args.sentences)))
        return
    results: dict[int, list[dict]] = {1: [], args.heads: []}
    for _ in range(args.rounds):
        for heads in (1, args.heads):
            out = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--sentences",
                                  str(args.sentences), "--child", str(heads)], capture_output=True, text=True,
                                 check=True)
            results[heads].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {heads: min(runs, key=lambda r: r["p50_ms"]) for heads, runs in results.items()}
    one, many = best[1], best[args.heads]
    info = machine()
    command = (f"python benchmarks/bench_multi_head.py --preset {args.preset} --heads {args.heads} "
               f"--sentences {args.sentences} --rounds {args.rounds}")
    lines = [TITLE, "", f"Command: `{command}`  ", f"Machine: {info['nproc']} CPU cores ({info['cpu']}), torch "
             f"{info['torch']}, {info['torch_threads']} threads; preset `{args.preset}`; SST-2 test sentences one "
             f"at a time, {args.rounds} alternating rounds per configuration (the best round shown), each in its own "
             "process.", "",
             "| heads | p50 ms | p90 ms | peak RSS MB |", "|---|---|---|---|"]
    for row in (one, many):
        lines.append(f"| {row['heads']} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | {row['peak_rss_mb']:.0f} |")
    lines += ["", f"{args.heads} heads / 1 head: latency **{many['p50_ms'] / one['p50_ms']:.3f}x** (goal <= 1.15x), "
              f"peak memory **{many['peak_rss_mb'] / one['peak_rss_mb']:.3f}x** (goal <= 1.1x)."]
    write_sections(RESULTS, [(TITLE, "\n".join(lines))])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
