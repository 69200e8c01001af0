"""Several heads, one backbone pass: latency and peak memory of 1 head vs N heads on the same backbones.

Each configuration runs in its own subprocess (so peak RSS is its own), alternating, on the same SST-2 test sentences:
  1. one head through `MultiHeadClassifier([head])`: one backbone pass, one head;
  2. N heads through `MultiHeadClassifier([...N heads])`: the backbones load once (the registry) and run once per text.
With ``--mix PRESET ...`` the heads are one per preset (e.g. ``small small-layers``: different views of one model, one
pass), against each preset's head alone. Latency is per single sentence (p50/p90 over the sentences, after a
warm-up); the heads are fresh (random) heads, since their weights do not change the cost. Writes the section "Many
heads, one backbone pass" (with ``--mix``: "Many heads on different views of one model") of benchmarks/RESULTS.md.

    python benchmarks/bench_multi_head.py --preset small --heads 3 --sentences 60
    python benchmarks/bench_multi_head.py --mix small small-layers --sentences 60
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
TITLE_MIX = "## Many heads on different views of one model"


def run(presets: list[str], sentences: int) -> dict:
    """In this process: load a fresh head of each of ``presets`` and time one-sentence calls of all of them."""
    import torch

    from llmembed_hf import LLMEmbedForSequenceClassification, MultiHeadClassifier

    texts = read_texts("sst2", sentences, split="test")
    with Measure() as measure:
        models = []
        for seed, preset in enumerate(presets):
            torch.manual_seed(seed)
            models.append(LLMEmbedForSequenceClassification.from_preset(preset, num_labels=2).eval())
        classifier = MultiHeadClassifier(models, names=[f"head{i}" for i in range(len(presets))])
        classifier(texts[:5])  # warm-up
        latencies = []
        for text in texts:
            started = time.perf_counter()
            classifier(text)
            latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {"heads": len(presets), "presets": presets, "p50_ms": 1000 * statistics.median(latencies),
            "p90_ms": 1000 * latencies[int(0.9 * (len(latencies) - 1))], **measure.as_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--mix", nargs="+", default=None, metavar="PRESET",
                        help="one head per preset instead, against each preset's head alone")
    parser.add_argument("--sentences", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the configurations")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run(args.child.split(","), args.sentences)))
        return
    configurations = ([[preset] for preset in args.mix] + [args.mix] if args.mix
                      else [[args.preset], [args.preset] * args.heads])
    results: dict[str, list[dict]] = {",".join(presets): [] for presets in configurations}
    for _ in range(args.rounds):
        for presets in configurations:
            out = subprocess.run([sys.executable, __file__, "--sentences", str(args.sentences), "--child",
                                  ",".join(presets)], capture_output=True, text=True, check=True)
            results[",".join(presets)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = [min(runs, key=lambda r: r["p50_ms"]) for runs in results.values()]
    info = machine()
    command = "python benchmarks/bench_multi_head.py " + (
        f"--mix {' '.join(args.mix)}" if args.mix else f"--preset {args.preset} --heads {args.heads}") + (
        f" --sentences {args.sentences} --rounds {args.rounds}")
    what = f"presets {', '.join(f'`{p}`' for p in args.mix)}" if args.mix else f"preset `{args.preset}`"
    lines = [TITLE_MIX if args.mix else TITLE, "", f"Command: `{command}`  ",
             f"Machine: {info['nproc']} CPU cores ({info['cpu']}), torch {info['torch']}, {info['torch_threads']} "
             f"threads; {what}; SST-2 test sentences one at a time, {args.rounds} alternating rounds per "
             "configuration (the best round shown), each in its own process.", "",
             "| heads | p50 ms | p90 ms | peak RSS MB |", "|---|---|---|---|"]
    for row in best:
        label = " + ".join(f"`{p}`" for p in row["presets"]) if args.mix else str(row["heads"])
        lines.append(f"| {label} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | {row['peak_rss_mb']:.0f} |")
    many = best[-1]
    slowest, largest = (max(best[:-1], key=lambda r: r[key]) for key in ("p50_ms", "peak_rss_mb"))
    latency, memory = many["p50_ms"] / slowest["p50_ms"], many["peak_rss_mb"] / largest["peak_rss_mb"]
    if args.mix:  # against the costliest head alone, in each measure
        lines += ["", f"{many['heads']} heads together: latency **{latency:.3f}x** the slowest head alone "
                  f"(`{slowest['presets'][0]}`; goal <= 1.15x), peak memory **{memory:.3f}x** the largest "
                  f"(`{largest['presets'][0]}`; goal <= 1.1x)."]
    else:
        lines += ["", f"{many['heads']} heads / 1 head: latency **{latency:.3f}x** (goal <= 1.15x), peak memory "
                  f"**{memory:.3f}x** (goal <= 1.1x)."]
    write_sections(RESULTS, [(lines[0], "\n".join(lines))])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
