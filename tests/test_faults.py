"""The fault suite (issue 20, "Fault suite, with figures"): what a user's data and caches go through when things go
wrong, on tiny random backbones (conftest's ``tiny_backbones``) and a head saved to a folder.

1. ``kill -9`` of extraction processes at seeded random moments, then at the two worst moments (half-way through a
   segment's write; after a segment is renamed into place but before its claim is released), and a resumed run:
   features bit-identical to an uninterrupted run with the same `ExtractionConfig`, nothing computed twice, no
   temporary or claim file left in the store.
2. Two ``llmembed extract`` processes on one store at once: identical features (bit for bit, and equal to one process
   alone), each text computed by exactly one of them, both doing part of the work.
3. A full disk (a write raising ``OSError(ENOSPC)``) while a segment, the store's ``backbone.json`` or through the
   CLI is written: the call fails with that error (the CLI exits 2 with one line), no temporary file remains, and the
   next run computes only what is missing and equals an uninterrupted run.
4. A corrupted cached conversion (`file_utils.build_verified_folder`, used by the GGUF and PyPI-join caches) is
   detected and rebuilt: same-size damage by a fresh process, a truncation within the same process; a conversion
   killed half-way leaves no lock behind, and its temporary folder goes once stale.
5. Property-based fuzzing (hypothesis) of the composite tokenizer, ``pipeline("text-classification")`` and
   ``llmembed predict`` (``--text`` values, ``.jsonl`` lines): success, or only the documented errors.
6. No output folder ``llmembed`` writes (train, finetune, finetune-intent-slot, extract --output) holds a pickle.

The scenario functions here are also run by ``benchmarks/bench_faults.py`` with larger counts (its figures are in
benchmarks/RESULTS.md, "Reliability" / "Fault suite"). Extraction processes are started by `multiprocessing`: here
from a fork server that has imported torch and transformers once (a fresh interpreter costs ~5 s of imports on 2
cores), in the benchmark as fresh interpreters ("spawn"); either way each is an ordinary process killed with
SIGKILL.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import multiprocessing
import os
import random
import re
import shutil
import signal
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import (ID2LABEL, NAMES, finetune_keyword_rows, keyword_rows, tiny_head_config,
                     write_dataset, write_intent_slot_dataset, write_split)

#: Words of the tiny vocabularies (conftest), for texts that tokenise without [UNK].
WORDS = "the a cat dog sat on mat movie film good bad very".split()
#: Small segments and batches, so a few hundred texts make dozens of segments and a kill lands mid-run.
FAULT_CONFIG = {"shard_size": 8, "max_tokens_per_batch": 128, "max_batch_size": 8}
#: Seconds each child sleeps per backbone forward (stretches a run over ~1 s without using CPU).
PAUSE = 0.01
#: What a fork server imports once (the children it forks then start in ~0.3 s).
PRELOAD = ["torch", "transformers", "datasets", "llmembed_hf", "llmembed_hf.features", "llmembed_hf.cli",
           "llmembed_hf.backbones", "test_faults"]
READY_TIMEOUT = 300.0
#: CI's hypothesis budget per property (benchmarks/bench_faults.py runs >= 1,000 cases in all).
FUZZ_EXAMPLES = 50


# ----------------------------------------------------------------------------------------------------------------------
# Shared set-up: texts, the saved head, processes
# ----------------------------------------------------------------------------------------------------------------------


def fault_texts(n: int, seed: int, duplicates: int = 5) -> list[str]:
    """``n`` distinct texts of 1-30 tiny-vocabulary words (plus ``duplicates`` repeated ones), in random order."""
    rng = random.Random(seed)
    texts: dict[str, None] = {}
    while len(texts) < n:
        texts.setdefault(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))))
    out = list(texts)
    out += [rng.choice(out) for _ in range(duplicates)]
    rng.shuffle(out)
    return out


def save_tiny_head(tiny_backbones: dict[str, str], folder: Path) -> Path:
    """A tiny head (labels neg/pos) over the tiny backbones, saved with ``save_pretrained``: what a subprocess loads
    with ``LLMEmbedForSequenceClassification.from_pretrained(folder)``."""
    from llmembed_hf import LLMEmbedForSequenceClassification

    torch.manual_seed(0)
    model = LLMEmbedForSequenceClassification.from_backbones(
        tiny_head_config(tiny_backbones, num_labels=2, id2label=ID2LABEL)).eval()
    model.save_pretrained(folder)
    return folder


def process_context(method: str = "forkserver") -> multiprocessing.context.BaseContext:
    """Where the suite's child processes come from: a fork server that preloads `PRELOAD` ("forkserver"), or fresh
    interpreters ("spawn")."""
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(PRELOAD)
    return context


def _child_setup(cache: str) -> None:
    """Every child: one torch thread (the same arithmetic in every process), its own llmembed cache."""
    torch.set_num_threads(1)
    os.environ["LLMEMBED_CACHE"] = cache
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _slow_forwards(pause: float, counts: dict[str, int]) -> None:
    """Count (and slow down by ``pause`` s) every backbone forward of every head in this process."""
    from llmembed_hf import LLMEmbedForSequenceClassification

    real = LLMEmbedForSequenceClassification.encode_backbones

    def encode_backbones(self, names, input_ids, attention_mask, **kwargs):
        for name in names:
            counts[name] = counts.get(name, 0) + len(input_ids)
        if pause:
            time.sleep(pause)
        return real(self, names, input_ids, attention_mask, **kwargs)

    LLMEmbedForSequenceClassification.encode_backbones = encode_backbones


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_fault(fault: str | None, model, texts: list[str], config, store: str) -> None:
    """Child-side faults at precise moments (the random ones come from the parent's ``kill -9``):

    * ``"mid-write"``: SIGKILL half-way through writing this process's first segment (a torn temporary file);
    * ``"after-rename"``: SIGKILL after this process's last segment is renamed into place, before its claim file is
      released (the claim and the segment are both there; nothing is left to compute).
    """
    from llmembed_hf import feature_store
    from llmembed_hf.features import missing_texts

    if fault is None:
        return
    if fault == "mid-write":
        real_write = feature_store._write_segment_file

        def torn_write(path, tensors, metadata):
            real_write(path, tensors, metadata)
            os.truncate(path, os.path.getsize(path) // 2)
            _kill_self()

        feature_store._write_segment_file = torn_write
    elif fault == "after-rename":
        expected = sum(missing_texts(model, texts, config, store).values())
        written = [0]
        real_write = feature_store.BackboneStore.write_segment

        def write_segment(self, claim, vectors):
            written[0] += len(claim.hashes)
            if written[0] >= expected:
                claim.release = _kill_self  # write_segment releases the claim right after the rename
            return real_write(self, claim, vectors)

        feature_store.BackboneStore.write_segment = write_segment
    else:
        raise ValueError(f"unknown fault {fault!r}")


def _save_array(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.tmp.npy"
    np.save(tmp, array)
    os.replace(tmp, path)


def child_extract(job: dict[str, Any], ready) -> None:
    """A child process: load the saved head, then `extract_features` into ``job["store"]``; write the features
    (``job["out"]``, .npy) and ``{"seconds", "forwards", "pid"}`` (``job["out"] + ".json"``)."""
    _child_setup(job["cache"])
    from llmembed_hf import ExtractionConfig, LLMEmbedForSequenceClassification, extract_features
    from llmembed_hf.features import FEATURES_COLUMN

    model = LLMEmbedForSequenceClassification.from_pretrained(job["head"]).eval().load_backbones()
    counts: dict[str, int] = {}
    _slow_forwards(job.get("pause", 0.0), counts)
    texts = json.loads(Path(job["texts"]).read_text(encoding="utf-8"))
    config = ExtractionConfig(**job["config"])
    _install_fault(job.get("fault"), model, texts, config, job["store"])
    if ready is not None:
        ready.set()
    start = time.perf_counter()
    features = extract_features(model, texts, cache_folder=job["store"], config=config, show_progress=False)
    seconds = time.perf_counter() - start
    _save_array(job["out"], features.with_format("numpy")[:][FEATURES_COLUMN])
    Path(job["out"] + ".json").write_text(json.dumps({"seconds": seconds, "forwards": counts, "pid": os.getpid()}))


def child_cli(argv: list[str], cache: str, pause: float, barrier, result: str) -> None:
    """A child process running ``llmembed_hf.cli.main(argv)`` (after ``barrier``, if any); writes its exit code."""
    _child_setup(cache)
    counts: dict[str, int] = {}
    _slow_forwards(pause, counts)
    from llmembed_hf.cli import main

    if barrier is not None:
        barrier.wait(timeout=READY_TIMEOUT)
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    Path(result).write_text(json.dumps({"code": code, "forwards": counts, "pid": os.getpid()}))


def run_child(context, target: Callable, *args: Any, timeout: float = READY_TIMEOUT) -> int:
    """Run ``target(*args)`` in a child process to its end; its exit code."""
    process = context.Process(target=target, args=args)
    process.start()
    process.join(timeout)
    if process.exitcode is None:
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        raise TimeoutError(f"{target.__name__} ran for more than {timeout} s")
    return process.exitcode


def load_result(out: Path) -> tuple[np.ndarray, dict[str, Any]]:
    return np.load(out), json.loads(Path(f"{out}.json").read_text())


def bit_identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape, dtype and bits (so -0.0 != 0.0 and NaN payloads count)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


# ----------------------------------------------------------------------------------------------------------------------
# Looking into a store
# ----------------------------------------------------------------------------------------------------------------------


def stored_rows(store: Path) -> dict[str, int]:
    """Rows of the readable segments per backbone fingerprint (a text computed twice counts twice)."""
    from safetensors import safe_open

    rows: dict[str, int] = {}
    for folder in sorted((store / "v2").glob("*/segments")):
        total = 0
        for path in folder.glob("seg-*.safetensors"):
            with safe_open(str(path), framework="numpy") as handle:
                total += int(handle.metadata()["rows"])
        rows[folder.parent.name] = total
    return rows


def segment_writers(store: Path) -> set[int]:
    """The process ids that wrote segments (a segment is named after its claim: ``seg-<time>-<pid>-<random>``)."""
    return {int(path.name.split("-")[2]) for path in store.glob("v2/*/segments/seg-*.safetensors")}


def leftovers(store: Path) -> dict[str, list[str]]:
    """What must not outlive a run: temporary files (``.name.*``), claim files, segments set aside as corrupt."""
    found: dict[str, list[str]] = {"temporary": [], "claims": [], "corrupt": []}
    if not store.exists():
        return found
    for path in store.rglob("*"):
        relative = str(path.relative_to(store))
        if path.name.startswith("."):
            found["temporary"].append(relative)
        elif path.suffix == ".claim":
            found["claims"].append(relative)
        elif path.suffix == ".corrupt":
            found["corrupt"].append(relative)
    return found


def no_leftovers(store: Path) -> bool:
    return not any(leftovers(store).values())


# ----------------------------------------------------------------------------------------------------------------------
# Scenario 1: kill -9 at random points, and at the worst ones, then resume
# ----------------------------------------------------------------------------------------------------------------------


def reference_run(context, head: Path, texts_path: Path, workdir: Path, pause: float = PAUSE) -> tuple[np.ndarray, dict]:
    """An uninterrupted extraction in a child process (empty store, the same config): the features every
    interrupted run must reproduce, and its duration."""
    out = workdir / "reference.npy"
    job = {"head": str(head), "texts": str(texts_path), "store": str(workdir / "reference-store"),
           "out": str(out), "config": FAULT_CONFIG, "pause": pause, "cache": str(workdir / "cache")}
    assert run_child(context, child_extract, job, None) == 0
    return load_result(out)


def kill_and_resume(
    context, head: Path, texts_path: Path, workdir: Path, reference: np.ndarray, seconds: float, *,
    kills: int, seed: int, targeted: tuple[str, ...] = ("mid-write", "after-rename"), pause: float = PAUSE,
) -> dict[str, Any]:
    """``kills`` child processes extracting into one store, each killed (SIGKILL) after a seeded random delay once
    it starts extracting; then one child per ``targeted`` fault; then a run to the end. Returns what happened."""
    rng = random.Random(seed)
    store = workdir / "store"
    distinct = len(set(json.loads(texts_path.read_text(encoding="utf-8"))))
    total = 2 * distinct  # two backbones
    job = {"head": str(head), "texts": str(texts_path), "store": str(store), "config": FAULT_CONFIG, "pause": pause,
           "cache": str(workdir / "cache")}
    record: dict[str, Any] = {"kills": 0, "mid_run": 0, "before_first_segment": 0, "finished_first": 0,
                              "delays_s": [], "targeted": {}, "leftovers_seen": 0}
    attempts = 0
    while record["kills"] < kills:
        attempts += 1
        assert attempts <= 3 * kills, f"only {record['kills']} of {kills} kills landed in {attempts - 1} attempts"
        before = sum(stored_rows(store).values())
        if before >= total:  # everything is stored: start over on an empty store
            shutil.rmtree(store)
            before = 0
        delay = rng.uniform(0.0, 0.8) * seconds * (1 - before / total)
        ready = context.Event()
        process = context.Process(target=child_extract, args=({**job, "out": str(workdir / "killed.npy")}, ready))
        process.start()
        if not ready.wait(READY_TIMEOUT):
            os.kill(process.pid, signal.SIGKILL)
            raise TimeoutError("the extraction child did not start")
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.join(60)
        after = sum(stored_rows(store).values())
        if process.exitcode != -signal.SIGKILL:
            assert process.exitcode == 0, process.exitcode
            record["finished_first"] += 1
            continue
        record["kills"] += 1
        record["delays_s"].append(round(delay, 3))
        record["mid_run" if after > before else "before_first_segment"] += 1
        record["leftovers_seen"] += bool(any(leftovers(store).values()))
    for fault in targeted:
        before = sum(stored_rows(store).values())
        code = run_child(context, child_extract, {**job, "out": str(workdir / "killed.npy"), "fault": fault}, None)
        found = leftovers(store)
        record["targeted"][fault] = {"exitcode": code, "stored_before": before,
                                     "stored_after": sum(stored_rows(store).values()),
                                     "left": {k: len(v) for k, v in found.items()}}
    out = workdir / "resumed.npy"
    assert run_child(context, child_extract, {**job, "out": str(out)}, None) == 0
    features, info = load_result(out)
    record.update(
        resumed_forwards=info["forwards"], bit_identical=bit_identical(features, reference),
        stored_rows=stored_rows(store), distinct_texts=distinct, leftovers_after=leftovers(store),
    )
    return record


@pytest.fixture(scope="module")
def head(tiny_backbones, tmp_path_factory) -> Path:
    return save_tiny_head(tiny_backbones, tmp_path_factory.mktemp("fault_head") / "head")


@pytest.fixture(scope="module")
def context():
    return process_context("forkserver")


def test_kill_9_at_random_points_then_resume_is_bit_identical(head, context, tmp_path):
    texts = fault_texts(300, seed=0)
    texts_path = tmp_path / "texts.json"
    texts_path.write_text(json.dumps(texts))
    reference, info = reference_run(context, head, texts_path, tmp_path)
    assert reference.shape == (len(texts), 3 * 48 + 32)

    record = kill_and_resume(context, head, texts_path, tmp_path, reference, info["seconds"], kills=3, seed=20)

    assert record["kills"] == 3 and record["mid_run"] >= 1, record
    torn, late = record["targeted"]["mid-write"], record["targeted"]["after-rename"]
    assert torn["exitcode"] == late["exitcode"] == -signal.SIGKILL
    assert torn["left"]["temporary"] >= 1 and torn["left"]["claims"] >= 1  # the torn write and its claim
    assert late["stored_after"] == 2 * record["distinct_texts"] and late["left"]["claims"] >= 1
    assert record["resumed_forwards"] == {}  # the last run found everything stored
    assert record["bit_identical"]
    # Every (backbone, text) stored once: a killed process's work is lost or kept, never stored twice.
    assert sorted(record["stored_rows"].values()) == [record["distinct_texts"]] * 2
    assert record["leftovers_after"] == {"temporary": [], "claims": [], "corrupt": []}


# ----------------------------------------------------------------------------------------------------------------------
# Scenario 2: two `llmembed extract` processes on one store
# ----------------------------------------------------------------------------------------------------------------------


def extract_argv(head: Path, data: Path, output: Path) -> list[str]:
    return ["extract", "--model", str(head), "--dataset", str(data), "--split", "train", "--output", str(output),
            "--shard-size", str(FAULT_CONFIG["shard_size"]),
            "--max-tokens-per-batch", str(FAULT_CONFIG["max_tokens_per_batch"]),
            "--max-batch-size", str(FAULT_CONFIG["max_batch_size"])]


def concurrent_cli_extract(context, head: Path, data: Path, workdir: Path, processes: int = 2,
                           pause: float = PAUSE) -> dict[str, Any]:
    """``processes`` children run ``llmembed extract`` on one dataset into one store at once (a barrier lines them
    up), and one child alone into another store; compares the ``--output`` features."""
    from datasets import load_from_disk

    shared, alone = workdir / "shared-cache", workdir / "alone-cache"
    barrier = context.Barrier(processes)
    children = []
    for i in range(processes):
        argv = extract_argv(head, data, workdir / f"features-{i}")
        children.append(context.Process(target=child_cli, args=(argv, str(shared), pause, barrier,
                                                                str(workdir / f"result-{i}.json"))))
    start = time.perf_counter()
    for child in children:
        child.start()
    for child in children:
        child.join(READY_TIMEOUT)
    seconds = time.perf_counter() - start
    codes = [child.exitcode for child in children]
    assert run_child(context, child_cli, extract_argv(head, data, workdir / "features-alone"), str(alone), pause,
                     None, str(workdir / "result-alone.json")) == 0
    results = [json.loads((workdir / f"result-{i}.json").read_text()) for i in range(processes)]

    def features(name: str) -> np.ndarray:
        return np.asarray(load_from_disk(str(workdir / name)).with_format("numpy")["pooled_features"])

    outputs = [features(f"features-{i}") for i in range(processes)]
    reference = features("features-alone")
    distinct = len(set(json.loads(line)["text"] for line in (data / "train.jsonl").read_text().splitlines()))
    store = shared / "features"
    return {
        "exit_codes": codes + [result["code"] for result in results],
        "identical": all(bit_identical(o, outputs[0]) for o in outputs),
        "equal_to_one_process": bit_identical(outputs[0], reference),
        "rows": len(reference), "distinct_texts": distinct, "stored_rows": stored_rows(store),
        "forwards": [result["forwards"] for result in results],
        "writers": len(segment_writers(store) & {result["pid"] for result in results}),
        "leftovers": leftovers(store), "seconds": seconds,
    }


def test_two_cli_extract_processes_on_one_store(head, context, tmp_path):
    """The CLI-level twin of tests/test_feature_store.py::test_two_processes_on_overlapping_texts."""
    texts = fault_texts(200, seed=1)
    data = write_split(tmp_path / "data", "train", [{"text": text, "label": 0} for text in texts])
    record = concurrent_cli_extract(context, head, data, tmp_path)
    assert record["exit_codes"] == [0, 0, 0, 0]
    assert record["identical"] and record["equal_to_one_process"] and record["rows"] == len(texts)
    assert sorted(record["stored_rows"].values()) == [record["distinct_texts"]] * 2  # each text computed once
    for name in ("llm", "enc"):
        assert sum(forwards.get(name, 0) for forwards in record["forwards"]) == record["distinct_texts"]
    assert record["writers"] == 2  # both processes did part of the work
    assert record["leftovers"] == {"temporary": [], "claims": [], "corrupt": []}


# ----------------------------------------------------------------------------------------------------------------------
# Scenario 3: a full disk during a write
# ----------------------------------------------------------------------------------------------------------------------


def _enospc(path: Any) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@contextlib.contextmanager
def disk_full(where: str, fail_at: int = 1):
    """Make the ``fail_at``-th write of ``where`` ("segment": a feature segment; "metadata": the store's
    ``backbone.json``) write half its bytes, then raise ``OSError(ENOSPC)``, as a full disk does."""
    from llmembed_hf import feature_store
    from llmembed_hf.file_utils import atomic_save

    calls = [0]
    if where == "segment":
        real = feature_store._write_segment_file

        def write_segment_file(path, tensors, metadata):
            calls[0] += 1
            if calls[0] == fail_at:
                real(path, tensors, metadata)
                os.truncate(path, os.path.getsize(path) // 2)
                raise _enospc(path)
            return real(path, tensors, metadata)

        patch = (feature_store, "_write_segment_file", write_segment_file)
    elif where == "metadata":
        real = feature_store.atomic_write_text

        def atomic_write_text(path, text):
            calls[0] += 1
            if calls[0] != fail_at:
                return real(path, text)

            def half_then_full(tmp: Path) -> None:
                tmp.write_text(text[: len(text) // 2], encoding="utf-8")
                raise _enospc(tmp)

            atomic_save(path, half_then_full)

        patch = (feature_store, "atomic_write_text", atomic_write_text)
    else:
        raise ValueError(where)
    module, name, value = patch
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield calls
    finally:
        setattr(module, name, original)


def disk_full_then_resume(model, texts: list[str], workdir: Path, where: str, fail_at: int,
                          reference: np.ndarray) -> dict[str, Any]:
    """Extract with a full disk at the ``fail_at``-th write, then again without the fault."""
    from llmembed_hf import ExtractionConfig, extract_features
    from llmembed_hf.features import FEATURES_COLUMN, missing_texts

    store = workdir / f"store-{where}-{fail_at}"
    config = ExtractionConfig(**FAULT_CONFIG)
    error = None
    with disk_full(where, fail_at):
        try:
            extract_features(model, texts, cache_folder=store, config=config, show_progress=False)
        except OSError as raised:
            error = raised
    after_fault = leftovers(store)
    missing = missing_texts(model, texts, config, store)
    counts: dict[str, int] = {}
    real = model.encode_backbones

    def counted(names, input_ids, attention_mask, **kwargs):
        for name in names:
            counts[name] = counts.get(name, 0) + len(input_ids)
        return real(names, input_ids, attention_mask, **kwargs)

    model.encode_backbones = counted
    try:
        resumed = extract_features(model, texts, cache_folder=store, config=config, show_progress=False)
    finally:
        del model.encode_backbones
    return {
        "errno": getattr(error, "errno", None), "message": str(error) if error else None,
        "leftovers_after_fault": after_fault, "missing_after_fault": missing, "recomputed": counts,
        "bit_identical": bit_identical(resumed.with_format("numpy")[:][FEATURES_COLUMN], reference),
        "leftovers_after": leftovers(store),
    }


@pytest.fixture(scope="module")
def model(head):
    from llmembed_hf import LLMEmbedForSequenceClassification

    return LLMEmbedForSequenceClassification.from_pretrained(head).eval().load_backbones()


@pytest.fixture(scope="module")
def disk_texts_and_reference(model, tmp_path_factory):
    from llmembed_hf import ExtractionConfig, extract_features
    from llmembed_hf.features import FEATURES_COLUMN

    texts = fault_texts(60, seed=2)
    store = tmp_path_factory.mktemp("reference_store")
    features = extract_features(model, texts, cache_folder=store, config=ExtractionConfig(**FAULT_CONFIG),
                                show_progress=False)
    return texts, features.with_format("numpy")[:][FEATURES_COLUMN]


@pytest.mark.parametrize(("where", "fail_at"), [("segment", 1), ("segment", 4), ("metadata", 1), ("metadata", 2)])
def test_disk_full_fails_cleanly_and_the_next_run_completes(model, disk_texts_and_reference, tmp_path, where,
                                                            fail_at):
    texts, reference = disk_texts_and_reference
    record = disk_full_then_resume(model, texts, tmp_path, where, fail_at, reference)
    assert record["errno"] == errno.ENOSPC and "No space left on device" in record["message"]
    assert record["leftovers_after_fault"] == {"temporary": [], "claims": [], "corrupt": []}
    stored = 2 * len(set(texts)) - sum(record["missing_after_fault"].values())
    assert (stored > 0) == (where == "segment" and fail_at > 1)  # segments written before the fault are kept
    assert record["recomputed"] == {k: v for k, v in record["missing_after_fault"].items() if v}  # only the rest
    assert record["bit_identical"]
    assert record["leftovers_after"] == {"temporary": [], "claims": [], "corrupt": []}


def test_disk_full_through_the_cli_exits_2_then_the_rerun_succeeds(head, tmp_path, monkeypatch):
    from datasets import load_from_disk

    from llmembed_hf.cli import main

    texts = fault_texts(40, seed=3)
    data = write_split(tmp_path / "data", "train", [{"text": text} for text in texts])
    monkeypatch.setenv("LLMEMBED_CACHE", str(tmp_path / "cache"))
    stderr = io.StringIO()
    with disk_full("segment", 2), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(extract_argv(head, data, tmp_path / "features"))
    assert code == 2
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith("llmembed extract: error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert not (tmp_path / "features").exists()
    assert no_leftovers(tmp_path / "cache" / "features")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(extract_argv(head, data, tmp_path / "features")) == 0
    assert load_from_disk(str(tmp_path / "features")).num_rows == len(texts)
    assert no_leftovers(tmp_path / "cache" / "features")


# ----------------------------------------------------------------------------------------------------------------------
# Scenario 4: a corrupted cached conversion is detected and rebuilt
# ----------------------------------------------------------------------------------------------------------------------


def fake_dequantiser(model_folder: str, pause: float = 0.0) -> Callable[[Path, Path], None]:
    """Stands in for `backbones._dequantise_gguf` (which needs a real GGUF file): writes the tiny Llama's files
    (safetensors weights, config, tokenizer) into the conversion folder."""

    def dequantise(gguf_path: Path, folder: Path) -> None:
        for path in sorted(Path(model_folder).iterdir()):
            if path.is_file():
                shutil.copyfile(path, folder / path.name)
                time.sleep(pause)

    return dequantise


def damage_file(path: Path, how: str, rng: random.Random) -> None:
    """Damage a cached file: ``zero`` (same size, 64 zero bytes at a random offset), ``flip`` (one bit),
    ``truncate`` (lose its tail)."""
    data = bytearray(path.read_bytes())
    if how == "zero":
        start = rng.randrange(0, max(1, len(data) - 64))
        data[start : start + 64] = bytes(min(64, len(data) - start))
        if bytes(data) == path.read_bytes():  # they were zeros already: flip one of them
            data[start] ^= 1
    elif how == "flip":
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        data = data[: rng.randrange(0, len(data))]
    else:
        raise ValueError(how)
    path.write_bytes(bytes(data))


def child_convert(gguf: str, model_folder: str, cache: str, result: str, pause: float) -> None:
    """A fresh process: `backbones.convert_gguf` (fake dequantiser), then load the folder with AutoModel; writes how
    many builds ran, the warnings, and whether the weights equal the source model's."""
    _child_setup(cache)
    from transformers import AutoModel

    from llmembed_hf import backbones

    builds = []
    dequantise = fake_dequantiser(model_folder, pause)
    backbones._dequantise_gguf = lambda path, folder: (builds.append(1), dequantise(path, folder))
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("llmembed_hf.file_utils").addHandler(handler)
    folder = backbones.convert_gguf(gguf)
    loaded = AutoModel.from_pretrained(folder).state_dict()
    source = AutoModel.from_pretrained(model_folder).state_dict()
    same = loaded.keys() == source.keys() and all(torch.equal(loaded[k], source[k]) for k in source)
    Path(result).write_text(json.dumps({"builds": len(builds), "warnings": records, "weights_equal": same}))


def corrupted_conversion(context, model_folder: str, workdir: Path, damages: list[tuple[str, str]],
                         seed: int) -> list[dict[str, Any]]:
    """Convert a (fake) GGUF file once, then for each ``(file, how)`` damage the cached folder and let a fresh
    process use it: it must find the damage, rebuild, and load the original weights."""
    from llmembed_hf.file_utils import check_manifest

    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    cache = workdir / "cache"
    gguf = workdir / "tiny.gguf"
    gguf.write_bytes(b"GGUF tiny " + str(seed).encode())
    result = workdir / "convert.json"
    assert run_child(context, child_convert, str(gguf), model_folder, str(cache), str(result), 0.0) == 0
    assert json.loads(result.read_text())["builds"] == 1
    folder = next((cache / "gguf").iterdir())
    records = []
    for name, how in damages:
        damage_file(folder / name, how, rng)
        assert run_child(context, child_convert, str(gguf), model_folder, str(cache), str(result), 0.0) == 0
        outcome = json.loads(result.read_text())
        records.append({"file": name, "damage": how, "builds": outcome["builds"],
                        "warned": any("failed its check" in w for w in outcome["warnings"]),
                        "weights_equal": outcome["weights_equal"],
                        "manifest_ok": check_manifest(folder, full=True) is None})
    return records


def test_a_corrupted_conversion_is_rebuilt_by_a_fresh_process(context, tiny_backbones, tmp_path):
    records = corrupted_conversion(context, tiny_backbones["llama"], tmp_path,
                                   [("model.safetensors", "zero"), ("tokenizer.json", "flip")], seed=4)
    for record in records:
        assert record["builds"] == 1 and record["warned"] and record["weights_equal"] and record["manifest_ok"], record


def test_truncation_is_caught_within_one_process_and_damage_in_place_by_the_next(tiny_backbones, tmp_path,
                                                                                 monkeypatch):
    """Sizes are checked on every hit; sha256 once per process (`new process`: its memo cleared)."""
    from llmembed_hf import backbones, file_utils

    monkeypatch.setenv("LLMEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(file_utils, "_VERIFIED", set())
    builds = []
    dequantise = fake_dequantiser(tiny_backbones["llama"])
    monkeypatch.setattr(backbones, "_dequantise_gguf", lambda p, f: (builds.append(1), dequantise(p, f)))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF in-process")
    folder = backbones.convert_gguf(gguf)
    original = (folder / "model.safetensors").read_bytes()
    rng = random.Random(5)
    damage_file(folder / "model.safetensors", "truncate", rng)
    assert backbones.convert_gguf(gguf) == folder and len(builds) == 2  # the same process: the cheap check
    damage_file(folder / "model.safetensors", "zero", rng)
    assert backbones.convert_gguf(gguf) == folder and len(builds) == 2  # verified in this process already
    monkeypatch.setattr(file_utils, "_VERIFIED", set())  # as a new process
    assert backbones.convert_gguf(gguf) == folder and len(builds) == 3
    assert (folder / "model.safetensors").read_bytes() == original


def killed_conversion(context, model_folder: str, workdir: Path) -> dict[str, Any]:
    """A conversion killed (SIGKILL) half-way: the next process converts at once (the lock died with the killer),
    and the killed build's temporary folder is removed once stale (here: aged past `STALE_TEMP_SECONDS`) at the next
    use of the cache."""
    from llmembed_hf import backbones, file_utils

    cache = workdir / "cache"
    gguf = workdir / "tiny.gguf"
    gguf.write_bytes(b"GGUF killed")
    parent = cache / "gguf"
    process = context.Process(target=child_convert, args=(str(gguf), model_folder, str(cache),
                                                          str(workdir / "killed.json"), 0.3))
    process.start()
    deadline = time.monotonic() + READY_TIMEOUT
    while not list(parent.glob(".*/config.json")) if parent.exists() else True:
        assert time.monotonic() < deadline and process.is_alive()
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.join(60)
    temporary = [p for p in parent.iterdir() if p.name.startswith(".") and p.is_dir()]
    start = time.perf_counter()
    assert run_child(context, child_convert, str(gguf), model_folder, str(cache), str(workdir / "next.json"),
                     0.0) == 0
    waited = time.perf_counter() - start
    after_next = [p for p in temporary if p.exists()]
    old = time.time() - file_utils.STALE_TEMP_SECONDS - 60
    for path in after_next:
        os.utime(path, (old, old))
    previous = os.environ.get("LLMEMBED_CACHE")
    os.environ["LLMEMBED_CACHE"] = str(cache)
    try:
        backbones.convert_gguf(gguf)  # a later hit
    finally:
        if previous is None:
            os.environ.pop("LLMEMBED_CACHE")
        else:
            os.environ["LLMEMBED_CACHE"] = previous
    outcome = json.loads((workdir / "next.json").read_text())
    return {"exitcode": process.exitcode, "temporary_after_kill": len(temporary), "next_builds": outcome["builds"],
            "next_weights_equal": outcome["weights_equal"], "next_seconds": waited,
            "temporary_after_next": len(after_next), "temporary_after_stale_hit": sum(p.exists() for p in temporary)}


def test_a_conversion_killed_half_way_leaves_no_lock_and_its_temporary_folder_goes(context, tiny_backbones,
                                                                                   tmp_path):
    record = killed_conversion(context, tiny_backbones["llama"], tmp_path)
    assert record["exitcode"] == -signal.SIGKILL and record["temporary_after_kill"] == 1
    assert record["next_builds"] == 1 and record["next_weights_equal"]
    assert record["temporary_after_stale_hit"] == 0, record


# ----------------------------------------------------------------------------------------------------------------------
# Scenario 5: property-based fuzzing of tokenizer, pipeline and CLI inputs
# ----------------------------------------------------------------------------------------------------------------------

#: Any code point, lone surrogates included (what ``json.loads("\\ud800")`` and undecodable argv bytes give).
ANY_CHAR = st.characters(codec=None, exclude_categories=())
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=60),
    st.lists(st.sampled_from(WORDS + ["", " ", "\n", "\t", "\x00", "é", "日本", "🙂", "\ud800", "\udcff", "\u2028",
                                      "\u2029", "\x85", "\x1c", "-", "--text"]),
             max_size=40).map(" ".join),
    st.text(st.sampled_from("ab \u0301\u200b\ufeff"), max_size=200),
)
NOT_TEXT = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.binary(max_size=8), st.booleans(),
                     st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                 max_size=2))
TOKENIZER_INPUT = st.one_of(
    TEXT,
    st.lists(TEXT, max_size=6),
    st.lists(st.one_of(TEXT, NOT_TEXT), min_size=1, max_size=5),
    st.tuples(TEXT, TEXT),
    NOT_TEXT,
)


def is_valid_unicode(text: str) -> bool:
    """Whether ``text`` is encodable as UTF-8 (no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def expected_text_error(value: Any) -> type[Exception] | None:
    """What the documented input check raises for ``value`` (None: it is valid): TypeError for a non-string,
    ValueError for an empty list or a text that is not valid Unicode (a lone surrogate)."""
    if isinstance(value, str):
        return None if is_valid_unicode(value) else ValueError
    if not isinstance(value, (list, tuple)):
        return TypeError
    for item in value:
        if not isinstance(item, str):
            return TypeError
        if not is_valid_unicode(item):
            return ValueError
    return ValueError if not value else None


def check_tokenizer(tokenizer, inputs: Any, vocab_sizes: dict[str, int]) -> str:
    """The composite tokenizer on ``inputs``: a padded batch within every backbone's limits (``vocab_sizes``: each
    backbone's embedding rows), or the documented error (its type, and a message naming the text). Returns the
    outcome's name."""
    expected = expected_text_error(inputs)
    try:
        encoded = tokenizer(inputs, return_tensors="pt")
    except (TypeError, ValueError) as error:
        assert expected is type(error), (inputs, error)
        assert re.match(r"text(\[\d+\])? ", str(error)), error
        return type(error).__name__
    assert expected is None, (inputs, encoded)
    rows = 1 if isinstance(inputs, str) else len(inputs)
    for spec in tokenizer.specs:
        ids, mask = encoded[f"{spec.name}_input_ids"], encoded[f"{spec.name}_attention_mask"]
        assert ids.shape == mask.shape and ids.shape[0] == rows and 1 <= ids.shape[1] <= spec.max_length
        assert (mask.sum(dim=1) >= 1).all()
        assert ((ids >= 0) & (ids < vocab_sizes[spec.name])).all()
    return "ok"


PIPELINE_INPUT = st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=5))


def check_pipeline(classifier, inputs: Any) -> str:
    """``pipeline("text-classification")`` on ``inputs``: one prediction (a label of the head, a score in [0, 1])
    per text, or the documented error."""
    expected = expected_text_error(inputs)
    try:
        outputs = classifier(inputs)
    except (TypeError, ValueError) as error:
        assert expected is type(error), (inputs, error)
        assert re.match(r"text(\[\d+\])? ", str(error)), error
        return type(error).__name__
    assert expected is None, inputs
    assert isinstance(outputs, list) and len(outputs) == (1 if isinstance(inputs, str) else len(inputs)), outputs
    for output in outputs:
        assert output["label"] in ID2LABEL.values() and 0.0 <= output["score"] <= 1.0, output
    return "ok"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``llmembed_hf.cli.main(argv)`` in this process: (exit code, stdout, stderr); argparse's SystemExit is its
    exit code; any other exception propagates (a traceback is a failure)."""
    from llmembed_hf.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def _check_cli_outcome(code: int, stdout: str, stderr: str, texts: list[Any] | None, argparse_may_fail: bool) -> str:
    assert code in (0, 2), (code, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-2000:]
    if code == 2:
        assert "llmembed predict: error:" in stderr or (argparse_may_fail and "usage:" in stderr), stderr[-2000:]
        return "exit 2"
    rows = [json.loads(line) for line in stdout.split("\n") if line]
    if texts is not None:
        assert [row["text"] for row in rows] == texts
    assert all(row["label"] in ID2LABEL.values() and 0.0 <= row["score"] <= 1.0 for row in rows)
    return "exit 0"


def check_cli_texts(head: Path, texts: list[str], equals_form: list[bool]) -> str:
    """``llmembed predict --text T ...``: ``--text=T`` always parses, so the exit code is 0 exactly when every text
    is valid Unicode; ``--text T`` may also be refused by argparse (a T that looks like an option: exit 2)."""
    argv = ["predict", "--model", str(head), "--device", "cpu"]
    for text, equals in zip(texts, equals_form):
        argv += [f"--text={text}"] if equals else ["--text", text]
    code, stdout, stderr = run_cli(argv)
    argparse_may_fail = not all(equals_form)
    outcome = _check_cli_outcome(code, stdout, stderr, texts, argparse_may_fail)
    if all(equals_form):
        assert (code == 0) == all(map(is_valid_unicode, texts)), (texts, stderr[-2000:])
    return outcome


JSON_VALUE = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)
#: One line of a .jsonl input: ("json", a JSON value: mostly rows with a "text" of any type), ("raw", a string that
#: is not JSON), ("bytes", maybe not UTF-8).
JSONL_LINE = st.one_of(
    st.tuples(st.just("json"), st.builds(lambda text, extra: {**extra, "text": text}, TEXT,
                                         st.dictionaries(st.text(max_size=5), JSON_VALUE, max_size=2))),
    st.tuples(st.just("json"), st.builds(lambda value: {"text": value}, JSON_VALUE)),
    st.tuples(st.just("json"), st.one_of(st.dictionaries(st.text(max_size=5), JSON_VALUE, max_size=3), JSON_VALUE)),
    st.tuples(st.just("raw"), st.sampled_from(["", "   ", "{not json", "[1, 2", '{"text": "a"', "\x00", "nan",
                                               '{"text": "a"} {"text": "b"}'])),
    st.tuples(st.just("bytes"), st.binary(max_size=12)),
)


def encode_jsonl_line(line: tuple[str, Any], ascii_only: bool) -> bytes:
    """A .jsonl line as bytes: a JSON value (``ensure_ascii``, or raw UTF-8 as `llmembed predict --output` writes
    it; a lone surrogate can only be written escaped), a raw string, or raw bytes (maybe not UTF-8). Line breaks
    (``\\n``, ``\\r``) never occur inside a line."""
    kind, value = line
    if kind == "bytes":
        return value.replace(b"\n", b" ").replace(b"\r", b" ")
    if kind == "raw":
        return value.encode("utf-8")
    text = json.dumps(value, ensure_ascii=ascii_only)
    return text.encode("utf-8") if is_valid_unicode(text) else json.dumps(value).encode("ascii")


def expected_jsonl_texts(lines: list[bytes]) -> list[str] | None:
    """The texts a valid .jsonl input holds (None: ``llmembed predict`` must refuse it with exit 2). Lines are split
    on ``\\n`` alone, as JSON Lines defines them (JSON text may hold U+2028, U+0085, ... unescaped)."""
    try:
        content = b"\n".join(lines).decode("utf-8")
    except UnicodeDecodeError:
        return None
    texts = []
    for line in content.split("\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            return None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not is_valid_unicode(row["text"]):
            return None
        texts.append(row["text"])
    return texts or None


def check_cli_jsonl(head: Path, folder: Path, lines: list[Any], ascii_only: bool) -> str:
    """``llmembed predict --input rows.jsonl``: exit 0 with one prediction per row of a valid file, else exit 2
    with one error line; never a traceback."""
    encoded = [encode_jsonl_line(line, ascii_only) for line in lines]
    path = folder / "rows.jsonl"
    path.write_bytes(b"\n".join(encoded) + b"\n")
    code, stdout, stderr = run_cli(["predict", "--model", str(head), "--device", "cpu", "--input", str(path)])
    texts = expected_jsonl_texts(encoded)
    outcome = _check_cli_outcome(code, stdout, stderr, texts, argparse_may_fail=False)
    assert (code == 0) == (texts is not None), (encoded, stderr[-2000:])
    return outcome


FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def tokenizer(model):
    return model.tokenizer


@pytest.fixture(scope="module")
def vocab_sizes(model) -> dict[str, int]:
    return {name: backbone.get_input_embeddings().num_embeddings for name, backbone in model.backbones.items()}


@pytest.fixture(scope="module")
def classifier(head, model):
    from transformers import pipeline

    return pipeline("text-classification", model=str(head), device="cpu")


@FUZZ
@given(inputs=TOKENIZER_INPUT)
@example(inputs="\ud800")  # a lone surrogate: was a TypeError "TextEncodeInput must be Union[...]" from tokenizers
@example(inputs=["a good film", "\udcff"])
def test_fuzz_tokenizer(tokenizer, vocab_sizes, inputs):
    check_tokenizer(tokenizer, inputs, vocab_sizes)


@FUZZ
@given(inputs=PIPELINE_INPUT)
def test_fuzz_pipeline(classifier, inputs):
    check_pipeline(classifier, inputs)


@FUZZ
@given(texts=st.lists(TEXT, min_size=1, max_size=3), equals=st.lists(st.booleans(), min_size=3, max_size=3))
def test_fuzz_cli_predict_texts(head, model, texts, equals):
    check_cli_texts(head, texts, equals)


@pytest.fixture(scope="module")
def jsonl_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jsonl")


@FUZZ
@given(lines=st.lists(JSONL_LINE, min_size=1, max_size=4), ascii_only=st.booleans())
@example(lines=[("json", {"text": "a\u2028b"}), ("json", {"text": "c\x85d"})], ascii_only=False)  # were cut in two
@example(lines=[("json", {"text": "\ud800"})], ascii_only=True)
def test_fuzz_cli_predict_jsonl(head, model, jsonl_folder, lines, ascii_only):
    check_cli_jsonl(head, jsonl_folder, lines, ascii_only)


# ----------------------------------------------------------------------------------------------------------------------
# Scenario 6: no pickle in any folder the CLI writes
# ----------------------------------------------------------------------------------------------------------------------

PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".pkl", ".pickle"}


def _is_safetensors(data: bytes, size: int) -> bool:
    if len(data) < 8:
        return False
    length = int.from_bytes(data[:8], "little")
    return 8 + length <= size and data[8:9] == b"{"


def pickles_in(folder: Path) -> list[str]:
    """Files under ``folder`` that are (or are named like) pickles: a pickle suffix, pickle protocol 2-5 magic at
    offset 0 (``\\x80\\x02``-``\\x80\\x05`` then an opcode; a safetensors header length can start with the same two
    bytes, so those are told apart), or a zip holding a ``.pkl`` (torch.save's format)."""
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        relative = str(path.relative_to(folder))
        if path.suffix.lower() in PICKLE_SUFFIXES:
            found.append(relative)
            continue
        with open(path, "rb") as handle:
            head_bytes = handle.read(16)
        if (len(head_bytes) >= 3 and head_bytes[0] == 0x80 and head_bytes[1] in (2, 3, 4, 5) and head_bytes[2] != 0
                and not _is_safetensors(head_bytes, path.stat().st_size)):
            found.append(relative)
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if any(name.endswith((".pkl", ".pickle")) for name in archive.namelist()):
                    found.append(relative)
    return found


def cli_output_folders(tiny_backbones: dict[str, str], head: Path, workdir: Path) -> dict[str, Any]:
    """Run every ``llmembed`` command that writes a folder (tiny data, 1 epoch) into ``workdir/outputs``; returns
    their exit codes, the pickles found in each output folder, and any pickle left in the llmembed cache
    (checkpoints are kept there during a run and removed at its end)."""
    from llmembed_hf.file_utils import cache_dir

    data = workdir / "data"
    keyword = write_split(data / "keyword", "train", keyword_rows(40, seed=0))
    write_split(keyword, "test", keyword_rows(10, seed=1))
    (keyword / "labels.json").write_text(json.dumps(NAMES))
    finetune = write_dataset(data / "finetune", finetune_keyword_rows(30, 0), finetune_keyword_rows(9, 1))
    intent_slot = write_intent_slot_dataset(data / "intent_slot", {"train": 12, "validation": 6, "test": 6})
    preset = workdir / "preset"
    tiny_head_config(tiny_backbones).save_pretrained(preset)
    outputs = workdir / "outputs"
    commands = {
        "train": ["train", "--dataset", str(keyword), "--preset", str(preset / "config.json"), "--output-dir",
                  str(outputs / "train"), "--epochs", "1", "--batch-size", "16"],
        "finetune": ["finetune", "--method", "full", "--backbone", tiny_backbones["bert"], "--dataset",
                     str(finetune), "--output-dir", str(outputs / "finetune"), "--epochs", "1", "--batch-size", "8",
                     "--max-length", "16"],
        "finetune-intent-slot": ["finetune-intent-slot", "--backbone", tiny_backbones["llama"], "--dataset",
                                 str(intent_slot), "--mode", "lora", "--epochs", "1", "--batch-size", "8",
                                 "--validation-split", "validation", "--output-dir", str(outputs / "intent_slot")],
        "extract": ["extract", "--model", str(head), "--dataset", str(keyword), "--split", "train", "--output",
                    str(outputs / "extract")],
    }
    record: dict[str, Any] = {"exit_codes": {}, "files": {}, "pickles": {}}
    for name, argv in commands.items():
        code, _, stderr = run_cli(argv)
        record["exit_codes"][name] = code
        if code != 0:
            record.setdefault("errors", {})[name] = stderr[-2000:]
    for folder in sorted(outputs.iterdir()):
        record["files"][folder.name] = sum(1 for p in folder.rglob("*") if p.is_file())
        record["pickles"][folder.name] = pickles_in(folder)
    record["other_entries"] = sorted(p.name for p in outputs.iterdir() if p.name.startswith("."))
    record["pickles_in_cache"] = pickles_in(cache_dir()) if cache_dir().exists() else []
    return record


def test_no_output_folder_of_the_cli_holds_a_pickle(tiny_backbones, head, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMEMBED_CACHE", str(tmp_path / "cache"))
    record = cli_output_folders(tiny_backbones, head, tmp_path)
    assert record["exit_codes"] == {"train": 0, "finetune": 0, "finetune-intent-slot": 0, "extract": 0}, record
    assert set(record["pickles"]) == {"train", "finetune", "intent_slot", "extract"}
    assert all(count > 0 for count in record["files"].values())
    assert record["pickles"] == {name: [] for name in record["pickles"]}
    assert record["other_entries"] == []  # no staging folder left beside the outputs
    assert record["pickles_in_cache"] == []


def test_the_pickle_detector_finds_pickles_and_spares_safetensors(tmp_path):
    import pickle

    from safetensors.torch import save_file

    (tmp_path / "optimizer.state").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    (tmp_path / "p5").write_bytes(pickle.dumps([1], protocol=5))
    torch.save({"w": torch.ones(2)}, tmp_path / "weights.data")  # a zip with data.pkl inside
    (tmp_path / "training_args.bin").write_bytes(b"anything")
    for n in range(40):  # header lengths of every size class, some starting with b"\x80\x04"
        save_file({f"t{'x' * n}": torch.zeros(n + 1)}, tmp_path / f"ok-{n}.safetensors", metadata={"k": "v" * n})
    assert pickles_in(tmp_path) == ["optimizer.state", "p5", "training_args.bin", "weights.data"]
