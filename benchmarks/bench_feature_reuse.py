#!/usr/bin/env python
"""Feature store reuse: what a request computes when the store already holds some of its (backbone, text) vectors.

On the first SST-2 training texts, in one process on CPU, with a fresh store:

1. the ``small`` preset (gemma3, minilm, mpnet) extracts the first N1 texts;
2. the same model extracts the first N2 texts (a superset): only the N2 - N1 new texts should run;
3. the same request again: nothing should run (a full hit: assembly from the store only);
4. the ``small-smollm2`` preset (smollm2, minilm, mpnet: two backbones shared with ``small``) on the N2 texts: only
   smollm2 should run;
5. for scale, each preset on the N2 texts in an empty store of its own (everything computed).

Texts computed per backbone are counted by wrapping ``model.encode_backbones`` (the one place `extract_features` runs
a backbone); wall and CPU time cover the whole `extract_features` call (store look-up, tokenisation, forwards,
segment writes, assembly). Backbone loading is not timed.

    python benchmarks/bench_feature_reuse.py [--n1 1000] [--n2 2000] [--output benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench_common import RESULTS, publish, read_texts, timed_run

TITLE = "## Feature store: reuse"


def load(preset: str):
    from llmembed_hf import LLMEmbedForSequenceClassification

    model = LLMEmbedForSequenceClassification.from_preset(preset).eval()
    counts = Counter({spec.name: 0 for spec in model.config.backbone_specs})
    real = model.encode_backbones

    def counted(names, input_ids, attention_mask, **kwargs):
        counts.update({name: len(input_ids) for name in names})
        return real(names, input_ids, attention_mask, **kwargs)

    model.encode_backbones = counted  # instance attribute: extract_features' forwards come here
    return model, counts


def step(label: str, preset: str, model, counts: Counter, texts: list[str], store: Path) -> dict:
    from llmembed_hf import extract_features
    from llmembed_hf.features import missing_texts

    before = dict(counts)
    expected = missing_texts(model, texts, cache_folder=store)
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    features = extract_features(model, texts, cache_folder=store, show_progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    load_after = os.getloadavg()[0]
    computed = {name: counts[name] - before.get(name, 0) for name in counts}
    if computed != expected:
        raise RuntimeError(f"{label}: computed {computed}, the store said {expected} were missing")
    row = {"step": label, "preset": preset, "texts": len(texts), "computed": computed,
           "reused": {name: len(texts) - n for name, n in computed.items()}, "wall_s": wall, "cpu_s": cpu,
           "load": [load_before, load_after],
           "shape": list(features[:1]["pooled_features"].shape[1:])}
    print(json.dumps(row), flush=True)
    return row


def run(args: argparse.Namespace) -> dict:
    texts = read_texts("sst2", args.n2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as folder, \
            tempfile.TemporaryDirectory(prefix="bench-fresh-") as fresh:
        store, scratch = Path(folder), Path(fresh)
        model, counts = load("small")
        rows.append(step(f"1. first {args.n1:,} texts", "small", model, counts, texts[: args.n1], store))
        rows.append(step(f"2. first {args.n2:,} texts (superset)", "small", model, counts, texts, store))
        rows.append(step(f"3. the same {args.n2:,} texts again", "small", model, counts, texts, store))
        rows.append(step(f"5a. {args.n2:,} texts, empty store (scale)", "small", model, counts, texts,
                         scratch / "small"))
        del model
        gc.collect()
        model, counts = load("small-smollm2")
        rows.append(step(f"4. the same {args.n2:,} texts, another preset", "small-smollm2", model, counts, texts,
                         store))
        rows.append(step(f"5b. {args.n2:,} texts, empty store (scale)", "small-smollm2", model, counts, texts,
                         scratch / "small-smollm2"))
        from llmembed_hf.feature_store import cache_info

        info = cache_info(store)
    return {"rows": sorted(rows, key=lambda r: r["step"]), "store": info}


def fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counts.items())


def section(result: dict, command: str, started: str, took: float, info: dict) -> str:
    m = info
    lines = [
        TITLE, "",
        f"Command: `{command}`  ",
        f"Date: {started} UTC; the whole script took {took / 60:.1f} min (backbone loading included).  ",
        f"Machine: {m['nproc']} CPU cores ({m['cpu']}), {m['ram_gb']} GiB RAM, torch {m['torch']} "
        f"({m['torch_threads']} threads, fp32, CPU), transformers {m['transformers']}, Python {m['python']}; "
        f"1-min load average at start {m['loadavg_before'][0]:.1f}.  ",
        "Texts: the first rows of SST-2's `train.jsonl.gz`; one process, default `ExtractionConfig` (1,024-token "
        "batches on CPU, float32). Steps 1-4 share one store; each step 5 starts from an empty one of its own.", "",
        "| step | preset | texts | computed per backbone | reused per backbone | wall s | CPU s "
        "| load before / after |",
        "|---|---|---:|---|---|---:|---:|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['step']} | `{row['preset']}` | {row['texts']:,} | {fmt_counts(row['computed'])} | "
                     f"{fmt_counts(row['reused'])} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | "
                     f"{row['load'][0]:.1f} / {row['load'][1]:.1f} |")
    by_step = {row["step"][:2]: row for row in result["rows"]}
    one, two, hit, other = (by_step[k] for k in ("1.", "2.", "3.", "4."))
    scale_small, scale_other = by_step["5a"], by_step["5b"]
    new = two["texts"] - one["texts"]
    lines += ["", f"- Superset: step 2 ran each backbone on the {new:,} new texts only "
              f"({fmt_counts(two['computed'])}); it took {two['wall_s']:.1f} s against {scale_small['wall_s']:.1f} s "
              f"for all {two['texts']:,} texts in an empty store (5a).",
              f"- Full hit: the same request again computed nothing and took {hit['wall_s']:.2f} s (reading and "
              "checking the stored vectors, assembling the dataset).",
              f"- Shared backbones: `small-smollm2` on the same texts ran only the backbone `small` lacks "
              f"({fmt_counts(other['computed'])}): {other['wall_s']:.1f} s against {scale_other['wall_s']:.1f} s "
              "with an empty store (5b)."]
    lines += ["", "Store after steps 1-4 (`cache_info`):", "",
              "| backbone | model_id | layers | vectors | segments | MB |", "|---|---|---|---:|---:|---:|"]
    for b in result["store"]["backbones"]:
        lines.append(f"| {b['name']} | `{b['model_id']}` | {b['layers']} | {b['vectors']:,} | {b['segments']} | "
                     f"{b['bytes'] / 2**20:.1f} |")
    lines += ["", "Computed counts are backbone forwards counted by wrapping `model.encode_backbones` (the script also "
              "checks they equal what `missing_texts` predicted from the store's index). Wall/CPU time: the whole "
              "`extract_features` call (store look-up and checksums, tokenisation of the missing texts, forwards, "
              "segment writes, assembly of the `datasets.Dataset`), backbones already loaded. Load: the 1-minute load "
              "average before and after the step (the step itself accounts for up to 2 on this 2-core machine; more "
              "means other processes competed for the cores, which inflates wall times).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n1", type=int, default=1000)
    parser.add_argument("--n2", type=int, default=2000)
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--output", default=str(RESULTS), help="RESULTS.md to update (section " + TITLE + ")")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--from-json", help="render the section from a run saved with --json (no extraction)")
    args = parser.parse_args()
    if not 0 < args.n1 < args.n2:
        parser.error("need 0 < --n1 < --n2")
    if args.from_json:  # re-render a finished run's section
        saved = json.loads(Path(args.from_json).read_text())
        info, result, started, took, command = (saved["machine"], saved, saved["started"], saved["took_s"],
                                                saved["command"])
    else:
        result, info, started, took, command = timed_run("benchmarks/bench_feature_reuse.py", lambda: run(args))
    record = {"machine": info, "started": started, "took_s": took, "command": command, **result}
    publish(TITLE, section(result, command, started, took, info), record, None if args.from_json else args.json,
            args.output, not args.no_write)


if __name__ == "__main__":
    main()
