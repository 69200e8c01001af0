"""Serving benchmark (issue 18, part 4): `pipeline("text-classification")` latency for one text (p50/p90), batched
throughput (`KeyDataset`, batch 32) and peak RSS, on SST-2 test sentences and 20 Newsgroups test documents, side by
side in one run with a fine-tuned MiniLM `AutoModelForSequenceClassification` pipeline and TF-IDF + linear SVM.

    .venv/bin/python benchmarks/bench_serving.py                      # writes "## Serving" in RESULTS.md
    .venv/bin/python benchmarks/bench_serving.py --sentences 128 --documents 50 --no-write   # a quick look

The LLMEmbed heads are ``--model`` (default ``outputs/llmembed-sst2``, the main job's trained `small` head; several
folders are served one after the other in the same run, e.g. a `fast` head beside it; a missing folder is replaced by a
quick `small` head trained on ``--train-samples`` SST-2 sentences in a temporary folder).
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS, Measure, machine, read_texts, write_sections  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL_P50_MS = 50.0
GOAL_TEXTS_PER_S = 30.0
SECTION = "## Serving"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency(predict_one: Callable[[str], Any], texts: list[str], warmup: int = 3) -> dict[str, float]:
    """p50/p90 wall time (ms) of one-text calls, after ``warmup`` calls that are not counted."""
    for text in texts[:warmup]:
        predict_one(text)
    times = []
    for text in texts:
        t0 = time.perf_counter()
        predict_one(text)
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": statistics.median(times), "p90_ms": percentile(times, 0.9), "n_latency": len(times)}


def throughput(predict_many: Callable[[list[str]], list], texts: list[str]) -> dict[str, float]:
    with Measure() as measure:
        outputs = predict_many(texts)
    assert len(outputs) == len(texts)
    return {"texts_per_s": len(texts) / measure.wall, "n_batched": len(texts), "peak_rss_mb": measure.peak / 2**20}


def hf_pipeline_runner(pipe: Any, batch_size: int) -> tuple[Callable, Callable]:
    from datasets import Dataset
    from transformers.pipelines.pt_utils import KeyDataset

    def one(text: str) -> Any:
        return pipe(text)

    def many(texts: list[str]) -> list:
        dataset = KeyDataset(Dataset.from_dict({"text": texts}), "text")
        return list(pipe(dataset, batch_size=batch_size))

    return one, many


def tfidf_svm_runner(train_texts: list[str], train_labels: list[int]) -> tuple[Callable, Callable, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    t0 = time.perf_counter()
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2), LinearSVC(C=0.5))
    model.fit(train_texts, train_labels)
    fit_s = time.perf_counter() - t0
    return (lambda text: model.predict([text])), (lambda texts: list(model.predict(texts))), fit_s


def computes_in(model_dir: Path) -> str:
    """How a saved head's backbones compute, from its config: "int8", "bf16/auto" or "fp32" per backbone."""
    specs = json.loads((model_dir / "config.json").read_text())["backbones"]
    return " + ".join(spec.get("quantization") or {"float32": "fp32", "bfloat16": "bf16", "auto": "bf16/auto"}[
        spec.get("dtype", "float32")] for spec in specs)


def read_labelled(name: str, split: str, n: int) -> tuple[list[str], list[int]]:
    import gzip
    import json

    from bench_common import DATASETS

    texts, labels = [], []
    with gzip.open(DATASETS / name / f"{split}.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts.append(row["text"])
            labels.append(row["label"])
            if len(texts) >= n:
                break
    return texts, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=[str(ROOT / "outputs" / "llmembed-sst2")],
                        help="trained head folders, served side by side (the main job writes outputs/llmembed-sst2)")
    parser.add_argument("--train-samples", type=int, default=1000, help="for a quick head when --model is missing")
    parser.add_argument("--latency-texts", type=int, default=50, help="one-text calls timed per dataset")
    parser.add_argument("--sentences", type=int, default=320, help="SST-2 test sentences for batched throughput")
    parser.add_argument("--documents", type=int, default=200, help="20 Newsgroups test documents")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--finetune-samples", type=int, default=2000)
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the run (default: torch's)")
    parser.add_argument("--compare-threads", action="store_true",
                        help="also time the head on SST-2 with torch's default thread count, interleaved with --threads")
    parser.add_argument("--compile", nargs="*", default=[], metavar="MODEL",
                        help="heads of --model to time again, after their eager rows, with compiled backbones "
                             "(model.compile_backbones()), in the same process")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    command = ".venv/bin/python benchmarks/bench_serving.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    import llmembed_hf
    from transformers import pipeline

    default_threads = torch.get_num_threads()
    threads = args.threads or default_threads
    torch.set_num_threads(threads)
    info = machine()
    workdir = tempfile.TemporaryDirectory(prefix="bench_serving_")
    sst2 = ROOT.parent / "shared" / "datasets" / "sst2"
    sentences = read_texts("sst2", max(args.sentences, args.latency_texts, 50), split="test")
    documents = read_texts("20newsgroups", args.documents, split="test")
    datasets = {"SST-2 test sentences": (sentences[:args.latency_texts], sentences[:args.sentences]),
                "20NG test documents": (documents[:args.latency_texts], documents)}
    rows: list[dict[str, Any]] = []
    notes: list[str] = []

    def run_system(system: str, one: Callable, many: Callable, only: str | None = None) -> None:
        for dataset, (latency_texts, batch_texts) in datasets.items():
            if only is not None and dataset != only:
                continue
            row = {"system": system, "dataset": dataset}
            row.update(latency(one, latency_texts))
            row.update(throughput(many, batch_texts))
            rows.append(row)
            print(row, flush=True)

    # -- LLMEmbed heads -----------------------------------------------------------------------------------------
    for model_arg in args.model:
        model_dir = Path(model_arg)
        if not (model_dir / "config.json").is_file():
            model_dir = Path(workdir.name) / "head"
            t0 = time.perf_counter()
            llmembed_hf.train_head(data=str(sst2), output_dir=str(model_dir), preset="small",
                                   max_train_samples=args.train_samples)
            notes.append(f"No trained head at {model_arg}: a quick `small` head was trained on {args.train_samples} "
                         f"SST-2 sentences ({time.perf_counter() - t0:.0f} s).")
        model_dir = model_dir.resolve()
        report = model_dir / "training_report.json"
        preset = json.loads(report.read_text()).get("preset", "?") if report.is_file() else "?"
        preset += f", {computes_in(model_dir)}"
        with Measure() as load:
            pipe = pipeline("text-classification", model=str(model_dir))
            pipe("warm-up: load the backbones")
        notes.append(f"LLMEmbed head `{model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else 'temp'}` "
                     f"(`{preset}`): load + first call {load.wall:.1f} s, RSS after {load.peak / 2**20:.0f} MB.")
        one, many = hf_pipeline_runner(pipe, args.batch_size)
        if args.compare_threads and threads != default_threads:
            for n in (default_threads, threads):
                torch.set_num_threads(n)
                row = {"system": f"LLMEmbed `{preset}` ({n} torch threads)", "dataset": "SST-2 test sentences"}
                row.update(latency(one, sentences[:args.latency_texts]))
                row.update(throughput(many, sentences[:args.sentences]))
                rows.append(row)
                print(row, flush=True)
            torch.set_num_threads(threads)
        run_system(f"LLMEmbed `{preset}` ({threads} torch threads)", one, many)
        if model_arg in args.compile:
            with Measure() as compiled:
                pipe.model.compile_backbones()
                # Warm-up: sentences alone (unmasked) and in a padded batch (masked): one dynamic graph each then
                # serves every length and batch size.
                for text in sentences[:3]:
                    one(text)
                many(sentences[:args.batch_size])
            notes.append(f"`{preset}` compiled (`model.compile_backbones()`): compiling and the warm-up calls (three "
                         f"sentences alone, one batch of {args.batch_size}) took {compiled.wall:.0f} s (torch reuses "
                         "kernels it cached on disk in earlier runs); timed on SST-2 sentences only.")
            run_system(f"LLMEmbed `{preset}`, compiled ({threads} torch threads)", one, many,
                       only="SST-2 test sentences")
        del pipe, one, many
        gc.collect()

    # -- fine-tuned MiniLM ---------------------------------------------------------------------------------------
    if not args.skip_minilm:
        from llmembed_hf import DataArguments, FinetuneArguments

        out = Path(workdir.name) / "minilm"
        t0 = time.perf_counter()
        _, _, report = llmembed_hf.finetune(
            "minilm", DataArguments(dataset=str(sst2), max_train_samples=args.finetune_samples), str(out),
            FinetuneArguments(method="full", epochs=1, max_length=64),
        )
        fit_s = time.perf_counter() - t0
        metrics = report.eval_metrics or {}
        accuracy = next((f"{v:.4f}" for k, v in metrics.items() if "accuracy" in k), "n/a")
        notes.append(f"MiniLM fully fine-tuned 1 epoch on {args.finetune_samples} SST-2 sentences, max_length 64, "
                     f"in {fit_s:.0f} s (test accuracy {accuracy}).")
        model, tokenizer = llmembed_hf.load_finetuned(str(out))
        mini = pipeline("text-classification", model=model, tokenizer=tokenizer, truncation=True, max_length=256)
        mini("warm-up")
        run_system("MiniLM-L6 fine-tuned (fp32)", *hf_pipeline_runner(mini, args.batch_size))
        del mini, model

    # -- TF-IDF + linear SVM -------------------------------------------------------------------------------------
    train_texts, train_labels = read_labelled("sst2", "train", 10**9)
    one, many, fit_s = tfidf_svm_runner(train_texts, train_labels)
    notes.append(f"TF-IDF (1-2 grams) + LinearSVC fitted on all {len(train_texts)} SST-2 train sentences in {fit_s:.1f} s.")
    run_system("TF-IDF + linear SVM", one, many)

    # -- report --------------------------------------------------------------------------------------------------
    def mark(row: dict) -> str:
        if not row["system"].startswith("LLMEmbed"):
            return ""
        p50 = "met" if row["p50_ms"] <= GOAL_P50_MS else "not met"
        rate = "met" if row["texts_per_s"] >= GOAL_TEXTS_PER_S else "not met"
        return f"p50 {p50}; batched {rate}"

    lines = [SECTION, "",
             f"`{command}` ({time.strftime('%Y-%m-%d')}); machine: {info['nproc']} cores ({info['cpu']}), "
             f"torch {info['torch']} ({info['torch_threads']} threads), transformers {info['transformers']}, "
             f"load average before {info['loadavg_before'][0]:.2f} (other jobs were running: every figure below is "
             f"from the same run, side by side, and noisy).", "",
             f"Goals (issue 18, part 4; default preset on this machine): p50 <= {GOAL_P50_MS:.0f} ms for one text, "
             f"batched >= {GOAL_TEXTS_PER_S:.0f} texts/s. Latency: `pipe(text)` per text after 3 warm-up calls; "
             f"batched: `pipe(KeyDataset(...), batch_size={args.batch_size})`; peak RSS of the process during the "
             f"batched run.", "",
             "| system | texts | p50 ms | p90 ms | batched texts/s | peak RSS MB | goals |",
             "|---|---|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['system']} | {row['dataset']} (latency {row['n_latency']}, batched {row['n_batched']}) "
                     f"| {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | {row['texts_per_s']:.1f} "
                     f"| {row['peak_rss_mb']:.0f} | {mark(row)} |")
    lines += [""] + [f"- {note}" for note in notes]
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_sections(RESULTS, [(SECTION, body)])
    workdir.cleanup()


if __name__ == "__main__":
    main()
