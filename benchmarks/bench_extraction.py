#!/usr/bin/env python
"""Benchmarks of llmembed-hf on this machine: feature extraction against the reference approach, and head training.

Benchmark 1 (extraction), in ONE process with the same backbones (the ``small-smollm2`` preset: SmolLM2-135M,
MiniLM, MPNet; `small` until the preset study made Gemma its LLM view) and the same texts:

* ``ours``: `llmembed_hf.extract_features` into a fresh cache folder (tokenise once, batches sorted by each
  backbone's own token lengths under a token budget, dynamic padding, masked pooling, checksummed feature-store segments, `datasets` assembly), timed end to end.
* ``reference``: what the LLMEmbed reference code does, per backbone: tokenise with ``padding="max_length"`` to a
  fixed length, batches in file order, forward with ``output_hidden_states``, mean over ALL positions (pads too).
  Every batch has the same shape, so its cost does not depend on the texts: it is timed on the first ``--ref-*-n``
  texts and extrapolated linearly per text (stated in the results).
* ``limit``: what the backbones cannot beat on ours' tokens. Per backbone, pure forwards with no pad (every row
  of a batch has the same length: real token ids from the run's texts, cut to it) on a grid of batch shapes, rows
  1-128 x lengths from 8 doubling up to the longest text (``--limit-max-tokens`` tokens at most a batch), each
  timed ``--limit-rounds`` times (min taken), run exactly as ours runs a batch. ``best shape``: ours' real tokens
  per backbone / that backbone's best tokens/s on the grid (a strict lower bound on the time, if optimistic);
  ``per length``: each text's tokens at the best tokens/s of a shape of its own length, interpolated between grid
  lengths (tighter). Ours is reported against both.

The machine is shared, so the three run INTERLEAVED: after each forward batch of ours' single `extract_features`
call, the reference and the limit's grid run their next batches until they have done the same fraction of their
work; each batch is timed and charged to its variant, so all three see the same contention and their RATIOS are
meaningful. Peak memory is measured separately, one fresh subprocess per variant (ours, reference) running the
batches that set its peak (psutil RSS sampling + ``getrusage``).

Benchmark 2 (head training): seconds per epoch of `llmembed_hf.fit_head` on 67,349 random feature rows of that
preset's width (the head's cost does not depend on the feature values), timed by a `TrainerCallback`.

    python benchmarks/bench_extraction.py [--sst2-n 2000] [--r8-n 300] [--limit-rounds 3] [--limit-max-tokens 4096]
        [--skip-training] [--output benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from bench_common import Measure, _trim_memory, machine, read_texts, write_sections

REPO = Path(__file__).resolve().parents[1]
#: The backbones every result in RESULTS.md from this script was measured with.
PRESET = "small-smollm2"

EXTRACTION_TITLE = "## Extraction speed: ours vs the reference approach"
TRAINING_TITLE = "## Head training speed"
BUDGET_TITLE = "## Extraction token budget on CPU"

#: The project's goal per dataset: ours at least this many times faster than the reference (wall).
GOALS = {"sst2": 5, "r8": 10}
#: The reference approach's settings per dataset: fixed padded length and batch size.
REFERENCE = {"sst2": {"max_length": 128, "batch_size": 32}, "r8": {"max_length": 1024, "batch_size": 8}}


# ----------------------------------------------------------------------------------------------------------------------
# Measurement helpers
# ----------------------------------------------------------------------------------------------------------------------


def pool_all_positions(outputs, spec) -> list[torch.Tensor]:
    """Mean over every position of each configured layer (no mask), L2-normalised where the spec says so."""
    views = [outputs.hidden_states[layer].to(torch.float32).mean(dim=1) for layer in spec.layers]
    return [F.normalize(v, p=2, dim=-1) for v in views] if spec.normalize else views


def reference_cap(model, name: str, wanted: int) -> int:
    """The reference length, capped at what the backbone can embed (MPNet: 514 positions = 512 tokens + offset 2)."""
    backbone = model.backbones[name]
    tokenizer = model.tokenizer.tokenizers[name]
    positions = backbone.config.max_position_embeddings
    usable = positions - 2 if backbone.config.model_type in ("mpnet", "roberta", "xlm-roberta") else positions
    limit = min(usable, tokenizer.model_max_length) if tokenizer.model_max_length < 10**9 else usable
    return min(wanted, limit)


# ----------------------------------------------------------------------------------------------------------------------
# Ours, the reference and the limit's grid, interleaved
# ----------------------------------------------------------------------------------------------------------------------
#
# Other processes compete for this machine's 2 cores and their load changes from minute to minute, so running the
# variants one after another would compare them under different contention. Instead ours runs as ONE ordinary
# `extract_features` call, and after each of its forward batches the reference and the limit's grid are advanced by
# their own batches until they have done the same fraction of their (estimated) work. All three thus progress side by
# side and share whatever contention there is; each batch is timed separately and charged to its variant. Work is
# estimated as tokens x non-embedding parameters of the backbone, summed over backbones.

#: Rows of the limit's grid shapes (ours' batches hold at most `ExtractionConfig.max_batch_size` = 128 texts).
LIMIT_ROWS = (1, 2, 4, 8, 16, 32, 64, 128)
#: The shortest length of the limit's grid; lengths double from it up to the data's longest text.
LIMIT_SHORTEST = 8


def work_weights(model) -> dict[str, int]:
    return {name: sum(p.numel() for n, p in backbone.named_parameters() if "embed" not in n)
            for name, backbone in model.backbones.items()}


def ours_plan(model, texts: list[str]) -> tuple[list[dict[str, int]], dict, dict[str, np.ndarray]]:
    """Ours' batches as `extract_features` will cut them (in its order): padded tokens per backbone per batch, the
    padded token totals, and each backbone's token count of every text."""
    from llmembed_hf.features import ExtractionConfig, extraction_plan

    order, lengths = extraction_plan(model, texts, ExtractionConfig())
    batches = [{name: int(lengths[name][batch].max()) * len(batch)} for name, batch in order]
    processed = {name: sum(b.get(name, 0) for b in batches) for name in lengths}
    return batches, processed, lengths


def _merge_by_progress(units_by_backbone: dict[str, list[dict]]) -> list[dict]:
    """One list of units, taking next the backbone whose share of its own work done is smallest."""
    totals = {name: sum(u["work"] for u in units) or 1 for name, units in units_by_backbone.items()}
    done = {name: 0 for name in units_by_backbone}
    index = {name: 0 for name in units_by_backbone}
    merged = []
    while True:
        open_ = [n for n in units_by_backbone if index[n] < len(units_by_backbone[n])]
        if not open_:
            return merged
        name = min(open_, key=lambda n: done[n] / totals[n])
        unit = units_by_backbone[name][index[name]]
        merged.append(unit)
        done[name] += unit["work"]
        index[name] += 1


def grid_lengths(longest: int) -> list[int]:
    """The limit's lengths: powers of two from `LIMIT_SHORTEST` below the data's longest text, then that length."""
    lengths, length = [], LIMIT_SHORTEST
    while length < longest:
        lengths.append(length)
        length *= 2
    return lengths + [max(longest, 1)]


def limit_units(model, texts: list[str], lengths: dict[str, np.ndarray], weights: dict[str, int], rounds: int,
                max_tokens: int) -> tuple[list[dict], dict[str, list[tuple[int, int]]]]:
    """The limit's grid: per backbone, unpadded batches of every shape (rows x length) with rows in `LIMIT_ROWS`,
    lengths from `grid_lengths` and at most ``max_tokens`` tokens (one row at least), each ``rounds`` times.

    Row i of a shape is the texts' real token ids (ours' tokenizer and truncation) from the start of text i onwards,
    running on into the next texts, cut to the length. Rounds alternate the order of the shapes (fewest tokens first,
    then most first); within a round the backbones advance side by side."""
    encoded = model.tokenizer(texts, padding=False)  # not timed
    shapes, batches = {}, {}
    for spec in model.config.backbone_specs:
        rows_ids = encoded[f"{spec.name}_input_ids"]
        stream = np.concatenate([np.asarray(row, dtype=np.int64) for row in rows_ids])
        starts = np.cumsum([0] + [len(row) for row in rows_ids[:-1]])
        grid = sorted(((rows, length) for length in grid_lengths(int(lengths[spec.name].max())) for rows in LIMIT_ROWS
                       if rows == 1 or rows * length <= max_tokens), key=lambda s: (s[0] * s[1], s[1]))
        shapes[spec.name] = grid
        for rows, length in grid:
            begin = starts[np.arange(rows) % len(starts)]
            ids = np.take(stream, begin[:, None] + np.arange(length)[None, :], mode="wrap")
            batches[spec.name, rows, length] = torch.from_numpy(ids)
    units = []
    for round_ in range(rounds):
        by_backbone = {name: [{"backbone": name, "shape": shape, "ids": batches[(name, *shape)],
                               "work": weights[name] * shape[0] * shape[1]}
                              for shape in (grid if round_ % 2 == 0 else grid[::-1])]
                       for name, grid in shapes.items()}
        units += _merge_by_progress(by_backbone)
    return units, shapes


def run_limit_unit(model, unit: dict) -> None:
    """One forward and pooling of a grid batch, exactly as ours runs each of its batches (`_pool_pass`: under
    `torch.inference_mode()`, ``output_hidden_states=True``, masked mean of the configured layers), with no pads."""
    spec = next(s for s in model.config.backbone_specs if s.name == unit["backbone"])
    ids = unit["ids"]
    model._pool_pass([spec], model.backbones[spec.name], ids, torch.ones_like(ids))


def limit_summary(shapes: dict[str, list[tuple[int, int]]], times: dict, lengths: dict[str, np.ndarray],
                  ours_forward: dict[str, float]) -> dict:
    """Each backbone's best throughput on the grid (min over rounds per shape), applied to ours' real tokens.

    best shape: real tokens / the best tokens/s over all shapes. per length: each text's real tokens x the seconds per
    token of the best shape of its length, interpolated linearly between the two grid lengths around it."""
    out: dict = {"backbones": {}}
    for clock in ("wall", "cpu"):
        out[f"best_shape_{clock}_s"] = out[f"per_length_{clock}_s"] = 0.0
    for name, grid in shapes.items():
        text_lengths = lengths[name]
        real = int(text_lengths.sum())
        entry: dict = {"real_tokens": real, "lengths": sorted({length for _, length in grid}), "shapes": len(grid),
                       "ours_forward_wall_s": ours_forward.get(name, 0.0),
                       "times": {f"{r}x{n}": times[name, r, n] for r, n in grid}}
        for clock in ("wall", "cpu"):
            per_token = {shape: min(times[(name, *shape)][clock]) / (shape[0] * shape[1]) for shape in grid}
            best = min(per_token, key=per_token.get)
            by_length: dict[int, tuple[int, int]] = {}
            for shape in grid:
                if shape[1] not in by_length or per_token[shape] < per_token[by_length[shape[1]]]:
                    by_length[shape[1]] = shape
            grid_l = sorted(by_length)
            per_text = np.interp(text_lengths, grid_l, [per_token[by_length[n]] for n in grid_l])
            entry[clock] = {"best_shape": list(best), "best_tokens_per_s": 1 / per_token[best],
                            "best_shape_s": real * per_token[best],
                            "per_length_s": float((text_lengths * per_text).sum()),
                            "best_by_length": {str(n): {"rows": by_length[n][0],
                                                        "tokens_per_s": 1 / per_token[by_length[n]]} for n in grid_l}}
            out[f"best_shape_{clock}_s"] += entry[clock]["best_shape_s"]
            out[f"per_length_{clock}_s"] += entry[clock]["per_length_s"]
        out["backbones"][name] = entry
    return out


def reference_units(model, texts: list[str], max_length: int, batch_size: int, weights: dict[str, int]):
    caps = {spec.name: reference_cap(model, spec.name, max_length) for spec in model.config.backbone_specs}
    by_backbone = {
        spec.name: [{"backbone": spec.name, "start": start, "texts": texts[start : start + batch_size],
                     "work": weights[spec.name] * caps[spec.name] * len(texts[start : start + batch_size])}
                    for start in range(0, len(texts), batch_size)]
        for spec in model.config.backbone_specs
    }
    return _merge_by_progress(by_backbone), caps


def run_reference_unit(model, unit: dict, cap: int, out: np.ndarray, counts: dict) -> None:
    """Tokenise with padding="max_length", forward with output_hidden_states, mean over ALL positions (pads too)."""
    spec = next(s for s in model.config.backbone_specs if s.name == unit["backbone"])
    tokenizer = model.tokenizer.tokenizers[spec.name]
    with torch.inference_mode():
        batch = tokenizer(unit["texts"], padding="max_length", truncation=True, max_length=cap, return_tensors="pt")
        outputs = model.backbones[spec.name](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                             output_hidden_states=True)
        rows = slice(unit["start"], unit["start"] + len(unit["texts"]))
        pooled = torch.cat(pool_all_positions(outputs, spec), -1).numpy()
    out[rows, model.config.backbone_columns[spec.name]] = pooled
    processed, real = counts.setdefault("processed", {}), counts.setdefault("real", {})
    processed[spec.name] = processed.get(spec.name, 0) + batch["input_ids"].numel()
    real[spec.name] = real.get(spec.name, 0) + int(batch["attention_mask"].sum())


class Clock:
    """Accumulated wall and process CPU seconds of one variant, with per-batch wall times and totals per label."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.batches: list[tuple[str, int, float]] = []
        self.by_label: dict[str | tuple, dict[str, list[float]]] = {}

    def time(self, fn, *args, label: str | tuple = "", size: int = 0):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn(*args)
        w, c = time.perf_counter() - w0, time.process_time() - c0
        self.wall += w
        self.cpu += c
        self.batches.append((label, size, w))
        record = self.by_label.setdefault(label, {"wall": [], "cpu": []})
        record["wall"].append(w)
        record["cpu"].append(c)
        return result


def run_interleaved(model, texts: list[str], ref_n: int, settings: dict, limit_rounds: int,
                    limit_max_tokens: int) -> dict:
    import llmembed_hf

    weights = work_weights(model)
    width = model.config.feature_size

    plan, ours_processed, lengths = ours_plan(model, texts)
    ours_real = {name: int(v.sum()) for name, v in lengths.items()}
    ours_total = sum(sum(weights[n] * t for n, t in b.items()) for b in plan) or 1
    l_units, shapes = limit_units(model, texts, lengths, weights, limit_rounds, limit_max_tokens)
    l_total = sum(u["work"] for u in l_units) or 1
    ref_texts = texts[:ref_n]
    r_units, caps = reference_units(model, ref_texts, settings["max_length"], settings["batch_size"], weights)
    r_total = sum(u["work"] for u in r_units) or 1

    ref_out = np.zeros((len(ref_texts), width), dtype=np.float32)
    ref_counts: dict = {}
    limit_clock, ref_clock, encode_clock = Clock(), Clock(), Clock()
    state = {"ours_done": 0.0, "batch": 0, "l": 0, "l_done": 0.0, "r": 0, "r_done": 0.0, "hooks_wall": 0.0,
             "hooks_cpu": 0.0}

    def catch_up(final: bool = False) -> None:
        progress = 1.0 if final else state["ours_done"] / ours_total
        while state["l"] < len(l_units) and (state["l_done"] / l_total < progress or final):
            unit = l_units[state["l"]]
            limit_clock.time(run_limit_unit, model, unit, label=(unit["backbone"], *unit["shape"]))
            state["l_done"] += unit["work"]
            state["l"] += 1
        while state["r"] < len(r_units) and (state["r_done"] / r_total < progress or final):
            unit = r_units[state["r"]]
            ref_clock.time(run_reference_unit, model, unit, caps[unit["backbone"]], ref_out, ref_counts,
                           label=unit["backbone"], size=len(unit["texts"]))
            state["r_done"] += unit["work"]
            state["r"] += 1

    original_encode = model.encode_backbones

    def encode_backbones(*args, **kwargs):
        result = encode_clock.time(functools.partial(original_encode, **kwargs), *args, label="+".join(args[0]),
                                   size=len(args[1]))
        batch = plan[state["batch"]] if state["batch"] < len(plan) else {}
        state["ours_done"] += sum(weights[n] * t for n, t in batch.items())
        state["batch"] += 1
        w0, c0 = time.perf_counter(), time.process_time()
        catch_up()
        state["hooks_wall"] += time.perf_counter() - w0
        state["hooks_cpu"] += time.process_time() - c0
        return result

    loads = [os.getloadavg()[0]]
    model.encode_backbones = encode_backbones  # instance attribute: extract_features' forward batches come here
    try:
        with tempfile.TemporaryDirectory(prefix="bench-features-") as folder:
            w0, c0 = time.perf_counter(), time.process_time()
            dataset = llmembed_hf.extract_features(model, texts, cache_folder=folder, show_progress=False)
            ours = dataset[:]["pooled_features"].numpy().copy()
            ours_wall = time.perf_counter() - w0 - state["hooks_wall"]
            ours_cpu = time.process_time() - c0 - state["hooks_cpu"]
    finally:
        del model.encode_backbones
    loads.append(os.getloadavg()[0])
    leftover = {"limit_batches": len(l_units) - state["l"], "reference_batches": len(r_units) - state["r"]}
    catch_up(final=True)  # whatever is left (rounding); normally nothing or one batch
    loads.append(os.getloadavg()[0])
    if state["batch"] != len(plan):
        raise RuntimeError(f"extract_features made {state['batch']} forward batches, the plan has {len(plan)}.")
    scale = len(texts) / len(ref_texts)
    ours_forward = {name: float(sum(t["wall"])) for name, t in encode_clock.by_label.items()}
    limit = limit_summary(shapes, limit_clock.by_label, lengths, ours_forward)
    return {
        "ours_features": ours, "ref_features": ref_out,
        "ours": {"wall_s": ours_wall, "cpu_s": ours_cpu, "forward_wall_s": encode_clock.wall,
                 "batches": len(plan), "tokens_processed": ours_processed, "tokens_real": ours_real},
        "limit": {"rounds": limit_rounds, "max_tokens": limit_max_tokens, "timed_batches": len(l_units),
                  "grid_wall_s": limit_clock.wall, "grid_cpu_s": limit_clock.cpu, **limit},
        "reference": {"measured_n": len(ref_texts), "wall_s": ref_clock.wall, "cpu_s": ref_clock.cpu,
                      "extrapolated_wall_s": ref_clock.wall * scale, "extrapolated_cpu_s": ref_clock.cpu * scale,
                      "caps": caps, "batch_times": ref_clock.batches, "batches": len(r_units),
                      "tokens_processed": ref_counts.get("processed", {}), "tokens_real": ref_counts.get("real", {})},
        "load_avg_1min": loads,
        "leftover_after_ours": leftover,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Peak memory: one subprocess per variant, running the batches that set its peak
# ----------------------------------------------------------------------------------------------------------------------


def memory_probe(variant: str, dataset: str, n: int) -> dict:
    """Run in a fresh process: load the backbones, warm up, then the variant's largest batches; report peak RSS."""
    import resource

    import llmembed_hf

    model = llmembed_hf.LLMEmbedForSequenceClassification.from_preset(PRESET, num_labels=2)
    warm_up(model)
    texts = read_texts(dataset, n)
    weights = work_weights(model)
    with tempfile.TemporaryDirectory() as folder:  # same lazy imports and one-off set-up in every probe
        llmembed_hf.extract_features(model, ["warm up the library path"], cache_folder=folder, show_progress=False)
    _trim_memory()
    process = psutil.Process()
    baseline = process.memory_info().rss
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = {"value": baseline}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["value"] = max(peak["value"], process.memory_info().rss)
            stop.wait(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    if variant == "ours":
        # ours sorts all texts longest first, so its first (largest) batches are those of the longest texts.
        from llmembed_hf.features import ExtractionConfig, extraction_plan, length_sorted_batches

        config = ExtractionConfig()
        _, lengths = extraction_plan(model, texts, config)
        longest = np.max(np.stack(list(lengths.values())), axis=0)
        batches = list(length_sorted_batches(longest, np.arange(len(texts)), config.token_budget(model.device),
                                             config.max_batch_size))[:2]
        subset = [texts[i] for batch in batches for i in batch]
        with tempfile.TemporaryDirectory() as folder:
            llmembed_hf.extract_features(model, subset, cache_folder=folder, show_progress=False)
        what = f"extract_features on the {len(subset)} texts of its first two (longest) batches"
    else:
        settings = REFERENCE[dataset]
        batch_texts = texts[: settings["batch_size"]]
        units, caps = reference_units(model, batch_texts, settings["max_length"], settings["batch_size"], weights)
        out = np.zeros((len(batch_texts), model.config.feature_size), dtype=np.float32)
        for unit in units:
            run_reference_unit(model, unit, caps[unit["backbone"]], out, {})
        what = f"one batch per backbone ({settings['batch_size']} texts padded to " + ", ".join(
            f"{k} {v}" for k, v in caps.items()) + "; every batch has this shape)"
    stop.set()
    thread.join()
    peak["value"] = max(peak["value"], process.memory_info().rss)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "dataset": dataset, "what": what, "baseline_mb": baseline / 2**20,
            "peak_mb": peak["value"] / 2**20, "rise_mb": (peak["value"] - baseline) / 2**20,
            "ru_maxrss_mb": maxrss / 2**20, "ru_maxrss_before_mb": maxrss_before / 2**20}


def measure_memory(dataset: str, n: int) -> dict:
    import subprocess

    result = {}
    for variant in ("ours", "reference"):
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-probe", variant, dataset,
                               str(n)], capture_output=True, text=True, env=os.environ.copy())
        lines = [line for line in proc.stdout.splitlines() if line.startswith("MEMORY ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory probe {variant}/{dataset} failed:\n{proc.stderr[-3000:]}")
        result[variant] = json.loads(lines[-1][len("MEMORY ") :])
        print(f"[{dataset}] memory {variant}: peak {result[variant]['peak_mb']:.0f} MB "
              f"(+{result[variant]['rise_mb']:.0f})", flush=True)
    return result


def unbatched(model, text: str) -> np.ndarray:
    """One text, one backbone at a time, no padding, no batching: the features it should get."""
    encoded = model.tokenizer(text, padding=False)
    views = []
    with torch.inference_mode():
        for spec in model.config.backbone_specs:
            ids = torch.tensor([encoded[f"{spec.name}_input_ids"]], dtype=torch.long)
            outputs = model.backbones[spec.name](input_ids=ids, output_hidden_states=True)
            views += pool_all_positions(outputs, spec)
    return torch.cat(views, -1)[0].numpy()


def view_slices(model) -> list[tuple[str, slice]]:
    out, start = [], 0
    for spec in model.config.backbone_specs:
        for layer in spec.layers:
            out.append((f"{spec.name}[{layer}]", slice(start, start + spec.hidden_size)))
            start += spec.hidden_size
    return out


def cosine_by_view(model, a: np.ndarray, b: np.ndarray) -> dict[str, dict[str, float]]:
    result = {}
    for name, sl in view_slices(model):
        x, y = a[:, sl].astype(np.float64), b[:, sl].astype(np.float64)
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-30)
        result[name] = {"mean": float(cos.mean()), "min": float(cos.min())}
    return result


def warm_up(model) -> None:
    """One small forward per backbone, so no variant pays for one-off initialisation."""
    with torch.inference_mode():
        for name, backbone in model.backbones.items():
            ids = torch.tensor([model.tokenizer.tokenizers[name]("warm up the kernels")["input_ids"]] * 4)
            backbone(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)


def bench_dataset(model, name: str, texts: list[str], ref_n: int, check_n: int, limit_rounds: int,
                  limit_max_tokens: int) -> dict:
    settings = REFERENCE[name]
    ref_n = min(ref_n, len(texts))
    print(f"[{name}] ours on {len(texts)} texts, interleaved with the reference (first {ref_n}) and the limit's grid "
          f"({limit_rounds} round{'s' if limit_rounds != 1 else ''}) ...", flush=True)
    r = run_interleaved(model, texts, ref_n, settings, limit_rounds, limit_max_tokens)
    ours, ref = r.pop("ours_features"), r.pop("ref_features")
    lim = r["limit"]
    print(f"[{name}] ours {r['ours']['wall_s']:.1f} s, limit {lim['best_shape_wall_s']:.1f} s (best shape) / "
          f"{lim['per_length_wall_s']:.1f} s (per length) from a {lim['grid_wall_s']:.1f} s grid, reference "
          f"{r['reference']['wall_s']:.1f} s for {ref_n} (x{len(texts) / ref_n:.2f})", flush=True)
    # Correctness: ours against one-text-at-a-time forwards (first texts plus the longest ones).
    lengths = np.array([len(t) for t in texts])
    picks = sorted(set(range(min(check_n, len(texts)))) | set(np.argsort(-lengths)[:2].tolist()))
    direct = np.stack([unbatched(model, texts[i]) for i in picks])
    diff = np.abs(ours[picks] - direct)
    scale_abs = np.abs(direct).max(axis=1, keepdims=True)
    check = {"rows": picks, "max_abs_diff": float(diff.max()),
             "max_abs_diff_by_view": {v: float(diff[:, sl].max()) for v, sl in view_slices(model)},
             "max_rel_diff": float((diff / np.maximum(scale_abs, 1e-12)).max()),
             "allclose_atol_1e-4": bool(np.allclose(ours[picks], direct, rtol=0, atol=1e-4)),
             "allclose_rtol_1e-5_atol_1e-4": bool(np.allclose(ours[picks], direct, rtol=1e-5, atol=1e-4)),
             "max_abs_value_by_view": {v: float(np.abs(direct[:, sl]).max()) for v, sl in view_slices(model)}}
    check["reference_cosine_to_ours"] = cosine_by_view(model, ours[:ref_n], ref)
    return {"n": len(texts), "settings": settings, **r, "check": check}


def budget_sweep(model, texts_by_dataset: dict[str, list[str]], budgets: list[int], rounds: int) -> dict:
    """`extract_features` wall/CPU seconds per token budget; rounds alternate the budget order to cancel drift."""
    import llmembed_hf
    from llmembed_hf.features import ExtractionConfig

    out: dict = {name: {str(b): {"wall_s": [], "cpu_s": []} for b in budgets} for name in texts_by_dataset}
    for round_ in range(rounds):
        for name, texts in texts_by_dataset.items():
            for budget in budgets if round_ % 2 == 0 else budgets[::-1]:
                with tempfile.TemporaryDirectory(prefix="bench-budget-") as folder:
                    w0, c0 = time.perf_counter(), time.process_time()
                    llmembed_hf.extract_features(model, texts, cache_folder=folder, show_progress=False,
                                                 config=ExtractionConfig(max_tokens_per_batch=budget))
                    out[name][str(budget)]["wall_s"].append(time.perf_counter() - w0)
                    out[name][str(budget)]["cpu_s"].append(time.process_time() - c0)
                print(f"[budget sweep] {name} budget {budget}: {out[name][str(budget)]['wall_s'][-1]:.1f} s",
                      flush=True)
    return out


def budget_section(sweep: dict, sizes: dict[str, int], command: str, info: dict, date: str) -> str:
    from llmembed_hf.features import CPU_TOKENS_PER_BATCH

    lines = [BUDGET_TITLE, "", f"Command: `{command}`  ", f"Date: {date}  ",
             f"Machine: {info['nproc']} CPU cores ({info['cpu']}), torch {info['torch']} ({info['torch_threads']} threads, "
             "fp32, CPU).", "",
             f"`extract_features` (the `{PRESET}` preset, a fresh cache folder each time) at several "
             "`max_tokens_per_batch` budgets over the same texts, all in one process; each budget ran once per "
             "round and the rounds alternate the order of the budgets, so drift in the machine's load falls on all "
             f"alike. Time relative to the default CPU budget ({CPU_TOKENS_PER_BATCH:,} tokens); lower is faster.", "",
             "| dataset | texts | budget (tokens) | wall s per round | mean wall s | CPU s (mean) | vs default |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for name, by_budget in sweep.items():
        base = float(np.mean(by_budget[str(CPU_TOKENS_PER_BATCH)]["wall_s"]))
        for budget, t in by_budget.items():
            mean = float(np.mean(t["wall_s"]))
            lines.append(f"| {name} | {sizes[name]:,} | {int(budget):,} | "
                         + ", ".join(f"{w:.1f}" for w in t["wall_s"])
                         + f" | {mean:.1f} | {float(np.mean(t['cpu_s'])):.1f} | {mean / base:.2f}× |")
    lines += ["", "Larger batches are slower per token on this CPU, most likely because a batch's activations outgrow "
              "the CPU caches; the token budget also bounds memory. The default is the fastest budget measured "
              "(or the smaller of two that tie).",
              ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Benchmark 2: head training
# ----------------------------------------------------------------------------------------------------------------------


def bench_training(model, rows: int, eval_rows: int, epochs: int) -> dict:
    import llmembed_hf
    import llmembed_hf.trainer as training
    import pyarrow as pa
    from datasets import Dataset
    from transformers import TrainerCallback

    width = model.config.feature_size
    rng = np.random.default_rng(0)

    def dataset(n: int) -> Dataset:
        values = rng.standard_normal((n, width), dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)
        labels = pa.array(rng.integers(0, 2, n), type=pa.int64())
        return Dataset(pa.Table.from_arrays([column, labels], names=["pooled_features", "labels"])).with_format("torch")

    train, evaluation = dataset(rows), dataset(eval_rows)
    marks: list[tuple[str, float]] = []

    class Timing(TrainerCallback):
        def on_train_begin(self, *a, **k): marks.append(("train_begin", time.perf_counter()))
        def on_epoch_begin(self, *a, **k): marks.append(("epoch_begin", time.perf_counter()))
        def on_epoch_end(self, *a, **k): marks.append(("epoch_end", time.perf_counter()))
        def on_evaluate(self, *a, **k): marks.append(("evaluate", time.perf_counter()))
        def on_save(self, *a, **k): marks.append(("save", time.perf_counter()))
        def on_train_end(self, *a, **k): marks.append(("train_end", time.perf_counter()))

    class TimedTrainer(training.Trainer):  # only adds the timing callback; fit_head is otherwise untouched
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), Timing()], **kwargs)

    original = training.Trainer
    training.Trainer = TimedTrainer
    try:
        with tempfile.TemporaryDirectory(prefix="bench-head-") as out:
            with Measure() as m:
                trainer = llmembed_hf.fit_head(model, train, evaluation, out,
                                               llmembed_hf.HeadTrainingArguments(epochs=epochs))
    finally:
        training.Trainer = original
    epochs_s, evals_s, saves_s = [], [], []
    begin = None
    last_end = None
    for kind, t in marks:
        if kind == "epoch_begin":
            begin = t
        elif kind == "epoch_end" and begin is not None:
            epochs_s.append(t - begin)
            last_end = t
        elif kind == "evaluate" and last_end is not None:
            evals_s.append(t - last_end)
            last_end = t
        elif kind == "save" and last_end is not None:
            saves_s.append(t - last_end)
            last_end = t
    steps = trainer.state.global_step
    return {"rows": rows, "eval_rows": eval_rows, "width": width, "epochs": epochs, "epoch_s": epochs_s,
            "eval_s": evals_s, "save_s": saves_s, "steps": steps, "batch_size": 64, **m.as_dict(),
            "log_history": trainer.state.log_history}


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def _tok(d: dict) -> str:
    return " / ".join(f"{v:,}" for v in d.values())


def extraction_section(results: dict, command: str, info: dict) -> str:
    names = results["backbones"]
    lines = [EXTRACTION_TITLE, "",
             f"Command: `{command}`  ",
             f"Date: {results['date']}; the whole script took {results['total_s'] / 60:.0f} min.  ",
             f"Machine: {info['nproc']} CPU cores ({info['cpu']}), {info['ram_gb']} GiB RAM, torch "
             f"{info['torch']} ({info['torch_threads']} threads, fp32, CPU), transformers {info['transformers']}, "
             f"Python {info['python']}. 1-min load average at start / end of each dataset's timed run (the run itself "
             f"accounts for up to {info['torch_threads']}; more means other processes competed): " + "; ".join(
                 f"{name} " + " / ".join(f"{x:.1f}" for x in r["load_avg_1min"][:2])
                 for name, r in results["datasets"].items()) +
             ". Absolute times depend on that load; the RATIOS are the result: ours, the reference and the "
             "limit's grid ran interleaved batch by batch in one process (see Method) and so shared any contention.  ",
             f"Backbones: the `{PRESET}` preset ({', '.join(names)}), feature width {results['feature_size']}; "
             "texts: the first N rows of each `train.jsonl.gz`.", ""]
    lines += ["| dataset | ours vs reference: speed-up (wall) | (CPU) | ours / limit (best shape) (wall) | (CPU) | "
              "ours / limit (per length) (wall) | (CPU) | goal |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    below = []
    for name, r in results["datasets"].items():
        goal = GOALS[name]
        o, lim, ref = r["ours"], r["limit"], r["reference"]
        speed = ref["extrapolated_wall_s"] / o["wall_s"]
        ratios = {(kind, clock): o[f"{clock}_s"] / lim[f"{kind}_{clock}_s"]
                  for kind in ("best_shape", "per_length") for clock in ("wall", "cpu")}
        below += [(name, kind, clock, v) for (kind, clock), v in ratios.items() if v < 1]
        lines.append(f"| {name} (N={r['n']:,}) | **{speed:.1f}×** | {ref['extrapolated_cpu_s'] / o['cpu_s']:.1f}× | "
                     + " | ".join(f"{ratios[kind, clock]:.2f}×" for kind in ("best_shape", "per_length")
                                  for clock in ("wall", "cpu"))
                     + f" | ≥ {goal}×: {'met' if speed >= goal else 'NOT met'} |")
    lines += ["", "Goal stated by the project: ours ≥ 5× faster than the reference on SST-2 and ≥ 10× on R8. "
              "`ours / limit` is ours' whole `extract_features` call against the time the backbones need for the "
              "same real tokens (no pad) at their fastest measured batch shape: `best shape` uses each backbone's "
              "best tokens/s over the whole grid for all its tokens (a strict lower bound on the time, if an "
              "optimistic one: long texts cannot run at the speed of the best, shorter shape); `per length` gives "
              "each text the speed of the best shape of its own length (tighter). Above 1 is what ours costs over "
              "that limit: the pads inside its length-sorted batches, batch shapes other than the best, and "
              "tokenisation, checksummed feature-store segments and the `datasets` assembly (the per-backbone "
              "table below separates ours' forwards from the rest)."]
    for name, kind, clock, value in below:
        lines.append(f"**Below 1:** on {name}, ours / limit ({kind.replace('_', ' ')}, {clock}) = {value:.2f}×: ours "
                     "took less than a limit it cannot beat, so this limit is off by at least that much here; see the "
                     "note under the per-backbone table.")
    lines += ["",
              "| dataset | N | variant | wall s | texts/s | CPU s | batches | peak RSS MB (rise over loaded backbones) |",
              "|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, r in results["datasets"].items():
        o, lim, ref = r["ours"], r["limit"], r["reference"]
        mem = r.get("memory", {})
        n = r["n"]

        def mem_text(v: str) -> str:
            return f"{mem[v]['peak_mb']:,.0f} (+{mem[v]['rise_mb']:,.0f})" if v in mem else "not measured"

        ref_note = "" if ref["measured_n"] == n else f"; timed on the first {ref['measured_n']}, extrapolated"
        grid = f"from {lim['timed_batches']} timed grid batches"
        rows = [
            ("ours (`extract_features`, end to end)", o["wall_s"], o["cpu_s"], o["batches"], mem_text("ours")),
            (f"reference (pad to {r['settings']['max_length']}, batch {r['settings']['batch_size']}{ref_note})",
             ref["extrapolated_wall_s"], ref["extrapolated_cpu_s"], f"{ref['batches']} timed", mem_text("reference")),
            ("limit, best shape (ours' real tokens at each backbone's best tokens/s)", lim["best_shape_wall_s"],
             lim["best_shape_cpu_s"], grid, "—"),
            ("limit, per length (each text at the best tokens/s of its length)", lim["per_length_wall_s"],
             lim["per_length_cpu_s"], grid, "—"),
        ]
        for label, wall, cpu, batches, memory in rows:
            lines.append(f"| {name} | {n:,} | {label} | {wall:,.1f} | {n / wall:,.2f} | {cpu:,.1f} | {batches} | "
                         f"{memory} |")
    lines += ["", "The limit per backbone (wall; grid lengths: powers of two from "
              f"{LIMIT_SHORTEST} up to the backbone's longest text in the run, then that length; rows "
              f"{', '.join(map(str, LIMIT_ROWS))}; ours' forwards = the wall time of ours' own forward batches of that "
              "backbone, pads included):", "",
              "| dataset | backbone | grid lengths | shapes | best shape (rows × length) | best tokens/s | "
              "real tokens | limit s (best shape) | limit s (per length) | ours' forwards s | "
              "ours' forwards / limit (per length) |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    below_forwards = []
    for name, r in results["datasets"].items():
        for backbone, b in r["limit"]["backbones"].items():
            w = b["wall"]
            if b["ours_forward_wall_s"] < w["per_length_s"]:
                below_forwards.append(f"**Below 1:** on {name}, ours' own {backbone} forwards took "
                                      f"{b['ours_forward_wall_s'] / w['per_length_s']:.2f}× the per-length limit of "
                                      "the same tokens, which they cannot beat: that limit is off by at least that "
                                      "much (see the note above).")
            lines.append(f"| {name} | {backbone} | {', '.join(map(str, b['lengths']))} | {b['shapes']} | "
                         f"{w['best_shape'][0]} × {w['best_shape'][1]} | {w['best_tokens_per_s']:,.0f} | "
                         f"{b['real_tokens']:,} | {w['best_shape_s']:,.1f} | {w['per_length_s']:,.1f} | "
                         f"{b['ours_forward_wall_s']:,.1f} | {b['ours_forward_wall_s'] / w['per_length_s']:.2f}× |")
    lines += ["", "Best tokens/s (wall) per grid length, with that best shape (rows × length):", ""]
    for name, r in results["datasets"].items():
        for backbone, b in r["limit"]["backbones"].items():
            lines.append(f"- {name} {backbone}: " + "; ".join(
                f"{length}: {v['tokens_per_s']:,.0f} ({v['rows']} × {length})"
                for length, v in b["wall"]["best_by_length"].items()))
    lines += ["", "A limit cannot be beaten, so a ratio below 1 above (ours, or ours' forwards, faster than a limit) "
              "is error in that limit, not a speed-up: the load of the machine changes between the moments ours and "
              "the grid ran (the rounds and min-of-rounds only soften it), a text between two grid lengths gets a "
              "speed interpolated linearly between them (`per length`), and ours' batches have shapes the grid does "
              "not (any row count up to 128)."]
    if below_forwards:
        lines += [""] + below_forwards
    lines += ["", "Tokens through the backbones (" + " / ".join(names) + "; real = not padding):", "",
              "| dataset | variant | tokens processed | real tokens |", "|---|---|---:|---:|"]
    for name, r in results["datasets"].items():
        for label, key in (("ours", "ours"), (f"reference (first {r['reference']['measured_n']} texts)", "reference")):
            st = r[key]
            lines.append(f"| {name} | {label} | {_tok(st['tokens_processed'])} | {_tok(st['tokens_real'])} |")
    lines += ["", "Method:", "",
              "- Interleaved timing: ours is ONE ordinary `extract_features(model, texts, cache_folder=<fresh temp "
              "dir>, show_progress=False)` call; its `model.encode_backbones` is wrapped (an instance attribute; the "
              "library is unchanged) so that after each of ours' forward batches the reference and the "
              "limit's grid run their own next batches until they have done the same fraction of their work (work = "
              "tokens × the backbone's non-embedding parameters). Every batch is timed on its own and charged to its "
              "variant; ours' time is the whole call minus the time spent in the others' batches, so it includes "
              "tokenisation, sorting, padding, segment files with checksums and the `datasets` assembly. "
              "Wall = `time.perf_counter`, CPU = `time.process_time` (all threads).",
              "- reference: per backbone, `tokenizer(batch, padding=\"max_length\", truncation=True, max_length=L)`, "
              "batches in file order, forward with `output_hidden_states=True` under `torch.inference_mode()`, mean "
              "over ALL positions of each configured layer (pads included, as the reference code did), L2-normalised "
              "where the preset says so; its tokenisation is timed.",
              "- limit: per backbone, pure forwards with no pad on a grid of batch shapes covering the data's range: "
              f"lengths as in the per-backbone table, rows {', '.join(map(str, LIMIT_ROWS))}, at most "
              f"{results['limit_max_tokens']:,} tokens a batch (one row at least); every row is real token ids (ours' "
              "tokenizer and truncation) from the start of a text of the run onwards, cut to the length. Each batch "
              "runs exactly as one of ours' batches does (the model's `_pool_pass`: `torch.inference_mode()`, "
              "`output_hidden_states=True`, masked mean of the configured layers, normalised where configured), with "
              f"an all-ones mask. The grid ran {results['limit_rounds']} times (rounds alternate the order of the "
              "shapes), interleaved with ours as above; a shape's time is its fastest round, so one-off kernel set-up "
              "and bursts of load drop out. Best tokens/s = max over shapes of rows × length / time. `best shape`: "
              "each backbone's real tokens in ours' run / its best tokens/s, summed over backbones. `per length`: for "
              "each grid length the best shape of that length; a text of length l costs l × the seconds per token "
              "interpolated linearly in length between the grid lengths around l (the shortest grid length's below "
              "it); summed over texts and backbones. The CPU columns do the same with CPU seconds.",
              "- Peak memory: one fresh subprocess per variant and dataset loads the backbones, warms up, then runs "
              "the batches that set the variant's peak (after one tiny `extract_features` call, so lazy imports are in the baseline); a psutil thread samples its RSS every 2 ms (cross-checked "
              "with `getrusage(RUSAGE_SELF).ru_maxrss`). `rise` = peak minus the RSS after loading and warm-up "
              "(`gc.collect()` + `malloc_trim`). The limit is computed from the grid's times and has no memory of "
              "its own. What each probe ran: " + "; ".join(
                  f"{name} {v}: {m['what']}" for name, r in results["datasets"].items()
                  for v, m in r.get("memory", {}).items()) + ".",
              ]
    for name, r in results["datasets"].items():
        ref = r["reference"]
        caps = ", ".join(f"{k} {v}" for k, v in ref["caps"].items())
        per_backbone: dict[str, list[float]] = {}
        for b, size, t in ref["batch_times"]:
            per_backbone.setdefault(b, []).append(t / size)
        spread = "; ".join(f"{b} {min(v):.2f}–{max(v):.2f}" for b, v in per_backbone.items())
        extrapolation = (f"timed on the first {ref['measured_n']} of {r['n']} texts ({ref['batches']} batches over "
                         f"the backbones) and extrapolated linearly per text (×{r['n'] / ref['measured_n']:.2f}): "
                         "every reference batch has the same fixed shape, so its cost does not depend on which "
                         "texts are in it (seconds per text, min–max over its batches: "
                         f"{spread}). " if ref["measured_n"] != r["n"] else "timed on all texts. ")
        lines.append(
            f"- {name}: the reference was {extrapolation}Padded length per backbone: {caps}"
            + (" — 1,024 capped at the backbone's own limit: MiniLM has 512 positions; MPNet has 514 positions, "
               "which is 512 tokens since RoBERTa-style position ids start after the padding index (514 tokens "
               "would index past the table); SmolLM2 allows 8,192." if name == "r8" else ".")
        )
    lines += [
        "- Truncation differs on R8: ours (and so the limit, which is applied to ours' tokens) uses the preset's "
        "`max_length` (SmolLM2 256, MiniLM 256, MPNet 384 tokens), the reference 1,024 / 512 / 512 as above, so "
        "part of the R8 speed-up is the shorter truncation (the token table shows how much). On SST-2 no text reaches either limit: the real tokens are "
        "identical and the speed-up is dynamic padding and batching alone.",
        "",
        "Correctness:",
        "",
    ]
    for name, r in results["datasets"].items():
        c = r["check"]
        cos = c["reference_cosine_to_ours"]
        lines.append(
            f"- {name}: ours vs a direct unbatched forward (one text at a time, no padding, mean of each layer, "
            f"normalised as configured; rows {c['rows']}, i.e. the first ones and the two longest): max |diff| "
            f"{c['max_abs_diff']:.2e}, relative to the row's largest |value| {c['max_rel_diff']:.1e}; "
            f"`allclose(rtol=0, atol=1e-4)`: {c['allclose_atol_1e-4']}, `allclose(rtol=1e-5, atol=1e-4)`: "
            f"{c['allclose_rtol_1e-5_atol_1e-4']}. Per view max |diff| (largest |value| of the view): "
            + ", ".join(f"{k} {v:.1e} ({c['max_abs_value_by_view'][k]:.1e})"
                        for k, v in c["max_abs_diff_by_view"].items())
            + "."
        )
    if any(not r["check"]["allclose_atol_1e-4"] and r["check"]["allclose_rtol_1e-5_atol_1e-4"]
           for r in results["datasets"].values()):
        lines.append(
            "- Where `atol=1e-4` alone fails, the excess is in SmolLM2's un-normalised hidden layers, whose pooled "
            "values reach the magnitudes in brackets (a few huge activation dimensions): one float32 step there is "
            "about |value| × 1.2e-7, so these are float32 rounding differences between batch shapes (the relative "
            "difference stays ~1e-7), not a pooling error; the normalised encoder views agree to ~1e-7."
        )
    for name, r in results["datasets"].items():
        cos = r["check"]["reference_cosine_to_ours"]
        lines.append(
            f"- Note, {name}: the reference's pad-averaged features are far from ours (first "
            f"{r['reference']['measured_n']} texts), cosine mean (min) per view: "
            + ", ".join(f"{k} {v['mean']:.3f} ({v['min']:.3f})" for k, v in cos.items()) + "."
        )
    lines.append("")
    return "\n".join(lines)


def training_section(t: dict, command: str, info: dict, date: str) -> str:
    eval_entries = [e for e in t["log_history"] if "eval_accuracy" in e]
    lines = [TRAINING_TITLE, "",
             f"Command: `{command}`  ",
             f"Date: {date}  ",
             f"Machine: {info['nproc']} CPU cores ({info['cpu']}), torch {info['torch']} ({info['torch_threads']} "
             f"threads, CPU), transformers {info['transformers']}; other processes competed for the cores (1-min "
             f"load average {t['load_before']:.1f} before, {t['load_after']:.1f} after), so epoch times vary.", "",
             f"`llmembed_hf.fit_head` with the default `HeadTrainingArguments` except `epochs={t['epochs']}` "
             f"(batch size {t['batch_size']}, lr 5e-4, {t['steps']} optimizer steps in all) on {t['rows']:,} rows (the "
             f"size of SST-2's train split) of width {t['width']} (`model.config.feature_size` of the `{PRESET}` "
             f"preset), evaluating on {t['eval_rows']:,} rows after every epoch. The features and labels are RANDOM "
             "(standard normal, labels 0/1): this measures the head's cost only, which does not depend on the "
             "values (extracting 67k real features would take far longer than the training). Times from a "
             "`TrainerCallback` (on_epoch_begin → on_epoch_end; then evaluation, then checkpoint saving).", "",
             "| epoch | train s | rows/s | eval s | checkpoint save s |", "|---:|---:|---:|---:|---:|"]
    for i, s in enumerate(t["epoch_s"]):
        ev = t["eval_s"][i] if i < len(t["eval_s"]) else float("nan")
        sv = t["save_s"][i] if i < len(t["save_s"]) else float("nan")
        lines.append(f"| {i + 1} | {s:.1f} | {t['rows'] / s:,.0f} | {ev:.2f} | {sv:.2f} |")
    mean = float(np.mean(t["epoch_s"])) if t["epoch_s"] else float("nan")
    lines += ["", f"Mean: {mean:.1f} s per epoch ({mean / (t['steps'] / max(t['epochs'], 1)) * 1000:.1f} ms per "
              f"step). The whole `fit_head` call (statistics, {t['epochs']} epochs, evaluations, checkpoints, "
              f"reloading the best one): {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} s CPU, peak RSS "
              f"{t['peak_rss_mb']:,.0f} MB (+{t['peak_rise_mb']:,.0f} MB over the RSS before the call, which "
              "already held the random features). Eval accuracy on random labels (sanity only): "
              + ", ".join(f"{e['eval_accuracy']:.3f}" for e in eval_entries) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2-n", type=int, default=2000, help="SST-2 train texts (default 2000)")
    parser.add_argument("--r8-n", type=int, default=300, help="R8 train documents (default 300)")
    parser.add_argument("--ref-sst2-n", type=int, default=96,
                        help="texts the reference is timed on for SST-2 (3 batches), extrapolated to --sst2-n")
    parser.add_argument("--ref-r8-n", type=int, default=24,
                        help="documents the reference is timed on for R8 (3 batches), extrapolated to --r8-n")
    parser.add_argument("--check-n", type=int, default=4, help="texts checked against an unbatched forward")
    parser.add_argument("--limit-rounds", type=int, default=3,
                        help="times the limit's grid of batch shapes runs (interleaved with ours; min per shape)")
    parser.add_argument("--limit-max-tokens", type=int, default=4096,
                        help="most tokens in one batch of the limit's grid (default 4096: above 1,024 tokens a batch "
                             "is already slower per token on this CPU, see the token budget sweep)")
    parser.add_argument("--skip-training", action="store_true", help="skip the head-training benchmark")
    parser.add_argument("--train-rows", type=int, default=67349)
    parser.add_argument("--eval-rows", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    parser.add_argument("--json", default=None, help="also write the raw measurements here")
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--budgets", type=int, nargs="*", default=[512, 1024, 2048, 8192],
                        help="token budgets of the budget sweep (none: skip it)")
    parser.add_argument("--budget-texts", type=int, nargs=2, default=[400, 60], metavar=("SST2_N", "R8_N"),
                        help="texts of the budget sweep (default: 400 SST-2 sentences, 60 R8 documents)")
    parser.add_argument("--budget-rounds", type=int, default=2)
    parser.add_argument("--memory-probe", nargs=3, metavar=("VARIANT", "DATASET", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.limit_rounds < 1 or args.limit_max_tokens < 1:
        parser.error("--limit-rounds and --limit-max-tokens must be at least 1")
    if args.memory_probe:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        variant, dataset, n = args.memory_probe
        print("MEMORY " + json.dumps(memory_probe(variant, dataset, int(n))), flush=True)
        return
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, REPO), *sys.argv[1:]])
    if os.environ.get("LLMEMBED_CACHE"):
        command = f"LLMEMBED_CACHE={os.environ['LLMEMBED_CACHE']} {command}"

    import llmembed_hf
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    info = machine()
    print(f"machine: {info}", flush=True)
    t0 = time.perf_counter()
    model = llmembed_hf.LLMEmbedForSequenceClassification.from_preset(PRESET, num_labels=2)
    print(f"backbones loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    warm_up(model)
    date = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    results = {"date": date, "machine": info, "feature_size": model.config.feature_size,
               "backbones": [spec.name for spec in model.config.backbone_specs], "limit_rounds": args.limit_rounds,
               "limit_max_tokens": args.limit_max_tokens, "datasets": {}}
    for name, n, ref_n in (("sst2", args.sst2_n, args.ref_sst2_n), ("r8", args.r8_n, args.ref_r8_n)):
        if n > 0:
            results["datasets"][name] = bench_dataset(model, name, read_texts(name, n), ref_n, args.check_n,
                                                      args.limit_rounds, args.limit_max_tokens)
    if not args.skip_memory:
        for name, n in (("sst2", args.sst2_n), ("r8", args.r8_n)):
            if n > 0:
                results["datasets"][name]["memory"] = measure_memory(name, n)
    sections = []
    if args.budgets:
        sizes = dict(zip(("sst2", "r8"), args.budget_texts))
        sweep = budget_sweep(model, {name: read_texts(name, n) for name, n in sizes.items() if n > 0}, args.budgets,
                             args.budget_rounds)
        results["budget_sweep"] = sweep
        sections.append((BUDGET_TITLE, budget_section(sweep, sizes, command, info, date)))
    if not args.skip_training:
        print("head training ...", flush=True)
        results["training"] = bench_training(model, args.train_rows, args.eval_rows, args.epochs)
        print(f"head training: {results['training']['epoch_s']} s per epoch", flush=True)
        sections.append((TRAINING_TITLE, training_section(results["training"], command, info, date)))
    results["total_s"] = time.perf_counter() - started
    sections.insert(0, (EXTRACTION_TITLE, extraction_section(results, command, info)))
    write_sections(Path(args.output), sections)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    for _, body in sections:
        print(body)
    print(f"total {results['total_s']:.0f} s; wrote {args.output}", flush=True)


if __name__ == "__main__":
    main()
