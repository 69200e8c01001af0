#!/usr/bin/env python
"""The fault suite's long run: the scenarios of tests/test_faults.py with larger counts, and their figures.

1. ``kill -9`` of extraction processes at seeded random moments (``--kills``, in rounds of ``--kills-per-round`` on
   one store, each round ending with one kill half-way through a segment write, one after a segment's rename before
   its claim is released, and a run to the end): bit-identical features, each (backbone, text) stored once, no
   temporary or claim file left;
2. ``--concurrent-runs`` runs of several ``llmembed extract`` processes on one store: identical features, each text
   computed once, every process doing part of the work;
3. a full disk (ENOSPC) at every segment write up to ``--disk-full-writes``, at each ``backbone.json`` write, and
   through the CLI: the call fails cleanly, the next run completes and equals an uninterrupted one;
4. ``--conversion-trials`` damages (zeroed bytes, a flipped bit, a truncation, in every file) of a cached conversion,
   each found by a fresh process that rebuilds it; and conversions killed half-way;
5. hypothesis fuzzing of the tokenizer, the pipeline and ``llmembed predict`` (``--fuzz-*`` cases each, >= 1,000 in
   all);
6. every folder the CLI writes (train, finetune, finetune-intent-slot, extract --output) checked for pickles.

Child processes are fresh interpreters (``--start-method spawn``, the default; tests/test_faults.py forks them from
a warm fork server instead, to fit CI's time). Writes the section "### Fault suite" inside "## Reliability" of
benchmarks/RESULTS.md.

    python benchmarks/bench_faults.py [--kills 24] [--fuzz-tokenizer 500] [--json /tmp/faults.json] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from bench_common import RESULTS, machine  # noqa: E402

import test_faults as faults  # noqa: E402  (module name as in faults.PRELOAD and as pytest imports it)

PARENT = "## Reliability"
TITLE = "### Fault suite"


def build_backbones(root: Path) -> dict[str, str]:
    """conftest's tiny random backbones (the same seeds), saved under ``root``."""
    from conftest import build_tiny_backbones

    return build_tiny_backbones(root)


def timed(results: dict[str, Any], name: str, run: Callable[[], dict[str, Any]]) -> None:
    """Run one scenario; record its figures, wall time, and any failure (the other scenarios still run)."""
    print(f"== {name}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        record = run()
    except Exception as error:  # noqa: BLE001 - a failed scenario is a figure too
        record = {"passed": False, "error": f"{type(error).__name__}: {error}"[:3000],
                  "traceback": traceback.format_exc()[-4000:]}
    record["wall_s"] = round(time.perf_counter() - start, 1)
    results[name] = record
    print(json.dumps(record, default=str)[:3000], file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------------------------------------------------------


def scenario_kills(context, head: Path, work: Path, args) -> dict[str, Any]:
    texts = faults.fault_texts(args.texts, seed=0)
    texts_path = work / "texts.json"
    texts_path.write_text(json.dumps(texts))
    reference, info = faults.reference_run(context, head, texts_path, work)
    rounds = -(-args.kills // args.kills_per_round)
    total: Counter = Counter()
    records = []
    for index in range(rounds):
        folder = work / f"round-{index}"
        folder.mkdir()
        record = faults.kill_and_resume(context, head, texts_path, folder, reference, info["seconds"],
                                        kills=args.kills_per_round, seed=1000 + index)
        records.append(record)
        targeted_ok = all(t["exitcode"] == -9 for t in record["targeted"].values())
        ok = (record["bit_identical"] and targeted_ok and record["resumed_forwards"] == {}
              and sorted(record["stored_rows"].values()) == [record["distinct_texts"]] * 2
              and not any(record["leftovers_after"].values()))
        total.update(kills=record["kills"], mid_run=record["mid_run"],
                     before_first_segment=record["before_first_segment"], finished_first=record["finished_first"],
                     targeted=sum(t["exitcode"] == -9 for t in record["targeted"].values()),
                     rounds_passed=int(ok), leftovers_seen=record["leftovers_seen"])
        print(f"round {index}: {'ok' if ok else 'FAILED'} {json.dumps(record, default=str)[:600]}", file=sys.stderr,
              flush=True)
    delays = [d for r in records for d in r["delays_s"]]
    return {"passed": total["rounds_passed"] == rounds, "rounds": rounds, "texts": len(texts),
            "distinct_texts": records[0]["distinct_texts"], "reference_extract_s": round(info["seconds"], 2),
            "delay_range_s": [min(delays), max(delays)], **dict(total), "records": records}


def scenario_concurrent(context, head: Path, work: Path, args) -> dict[str, Any]:
    texts = faults.fault_texts(args.texts, seed=1)
    runs = []
    for index in range(args.concurrent_runs):
        processes = 2 + index % 2  # 2, 3, 2, ...
        folder = work / f"run-{index}"
        data = faults.write_split(folder / "data", "train", [{"text": t, "label": 0} for t in texts])
        record = faults.concurrent_cli_extract(context, head, data, folder, processes=processes)
        record["processes"] = processes
        record["passed"] = (all(code == 0 for code in record["exit_codes"]) and record["identical"]
                            and record["equal_to_one_process"]
                            and sorted(record["stored_rows"].values()) == [record["distinct_texts"]] * 2
                            and record["writers"] == processes and not any(record["leftovers"].values()))
        runs.append(record)
        print(f"concurrent run {index}: {json.dumps(record, default=str)[:600]}", file=sys.stderr, flush=True)
    return {"passed": all(r["passed"] for r in runs), "runs": runs, "texts": len(texts)}


def scenario_disk_full(head: Path, work: Path, args) -> dict[str, Any]:
    from llmembed_hf import ExtractionConfig, LLMEmbedForSequenceClassification, extract_features
    from llmembed_hf.features import FEATURES_COLUMN

    model = LLMEmbedForSequenceClassification.from_pretrained(head).eval().load_backbones()
    texts = faults.fault_texts(args.texts // 2, seed=2)
    reference = extract_features(model, texts, cache_folder=work / "reference", show_progress=False,
                                 config=ExtractionConfig(**faults.FAULT_CONFIG)).with_format("numpy")[:][FEATURES_COLUMN]
    cases = [("segment", k) for k in range(1, args.disk_full_writes + 1)] + [("metadata", 1), ("metadata", 2)]
    records = []
    for where, fail_at in cases:
        record = faults.disk_full_then_resume(model, texts, work, where, fail_at, reference)
        record.update(where=where, fail_at=fail_at)
        record["passed"] = (record["errno"] == 28 and not any(record["leftovers_after_fault"].values())
                            and record["recomputed"] == {k: v for k, v in record["missing_after_fault"].items() if v}
                            and record["bit_identical"] and not any(record["leftovers_after"].values()))
        records.append(record)
    # Through the CLI: exit 2 with one error line, then a rerun succeeds.
    data = faults.write_split(work / "cli-data", "train", [{"text": t} for t in texts])
    os.environ["LLMEMBED_CACHE"] = str(work / "cli-cache")
    with faults.disk_full("segment", 3):
        code, _, stderr = faults.run_cli(faults.extract_argv(head, data, work / "cli-features"))
    rerun, _, _ = faults.run_cli(faults.extract_argv(head, data, work / "cli-features"))
    cli = {"exit_code": code, "error_lines": [l for l in stderr.splitlines() if "error:" in l],
           "rerun_exit_code": rerun, "leftovers": faults.leftovers(work / "cli-cache" / "features")}
    cli["passed"] = (code == 2 and len(cli["error_lines"]) == 1 and "No space left" in cli["error_lines"][0]
                     and rerun == 0 and not any(cli["leftovers"].values()))
    return {"passed": all(r["passed"] for r in records) and cli["passed"], "texts": len(texts),
            "cases": len(records) + 1, "cases_passed": sum(r["passed"] for r in records) + cli["passed"],
            "records": records, "cli": cli}


def scenario_conversions(context, backbones: dict[str, str], work: Path, args) -> dict[str, Any]:
    files = sorted(p.name for p in Path(backbones["llama"]).iterdir() if p.is_file())
    kinds = ["zero", "flip", "truncate"]
    damages = [(files[i % len(files)], kinds[(i // len(files)) % len(kinds)]) for i in range(args.conversion_trials)]
    records = faults.corrupted_conversion(context, backbones["llama"], work / "damaged", damages, seed=7)
    for record in records:
        record["passed"] = record["builds"] == 1 and record["warned"] and record["weights_equal"] and record[
            "manifest_ok"]
    killed = []
    for index in range(args.killed_conversions):
        folder = work / f"killed-{index}"
        folder.mkdir()
        record = faults.killed_conversion(context, backbones["llama"], folder)
        record["passed"] = (record["exitcode"] == -9 and record["next_builds"] == 1 and record["next_weights_equal"]
                            and record["temporary_after_stale_hit"] == 0)
        killed.append(record)
    return {"passed": all(r["passed"] for r in records + killed), "files": files, "damages": len(records),
            "damages_passed": sum(r["passed"] for r in records), "killed": len(killed),
            "killed_passed": sum(r["passed"] for r in killed), "records": records, "killed_records": killed}


def fuzz(name: str, strategies: dict[str, Any], check: Callable[..., str], examples: int, seed: int) -> dict[str, Any]:
    """Run one hypothesis property for ``examples`` cases; count the outcomes."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    outcomes: Counter = Counter()

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(**strategies)
    def prop(**kwargs):
        outcomes[check(**kwargs)] += 1

    start = time.perf_counter()
    try:
        prop()
        failure = None
    except Exception as error:  # noqa: BLE001
        failure = f"{type(error).__name__}: {error}"[:3000]
    return {"property": name, "cases": sum(outcomes.values()), "outcomes": dict(outcomes), "failure": failure,
            "passed": failure is None, "wall_s": round(time.perf_counter() - start, 1)}


def scenario_fuzz(head: Path, work: Path, args) -> dict[str, Any]:
    from hypothesis import strategies as st
    from transformers import pipeline

    from llmembed_hf import LLMEmbedForSequenceClassification

    model = LLMEmbedForSequenceClassification.from_pretrained(head).eval().load_backbones()
    vocab = {name: b.get_input_embeddings().num_embeddings for name, b in model.backbones.items()}
    classifier = pipeline("text-classification", model=str(head), device="cpu")
    folder = work / "jsonl"
    folder.mkdir()
    properties = [
        fuzz("tokenizer", {"inputs": faults.TOKENIZER_INPUT},
             lambda inputs: faults.check_tokenizer(model.tokenizer, inputs, vocab), args.fuzz_tokenizer, args.seed),
        fuzz("pipeline", {"inputs": faults.PIPELINE_INPUT}, lambda inputs: faults.check_pipeline(classifier, inputs),
             args.fuzz_pipeline, args.seed + 1),
        fuzz("cli --text", {"texts": st.lists(faults.TEXT, min_size=1, max_size=3),
                            "equals": st.lists(st.booleans(), min_size=3, max_size=3)},
             lambda texts, equals: faults.check_cli_texts(head, texts, equals), args.fuzz_cli_texts, args.seed + 2),
        fuzz("cli --input .jsonl", {"lines": st.lists(faults.JSONL_LINE, min_size=1, max_size=4),
                                    "ascii_only": st.booleans()},
             lambda lines, ascii_only: faults.check_cli_jsonl(head, folder, lines, ascii_only), args.fuzz_cli_jsonl,
             args.seed + 3),
    ]
    return {"passed": all(p["passed"] for p in properties), "cases": sum(p["cases"] for p in properties),
            "properties": properties}


def scenario_pickles(backbones: dict[str, str], head: Path, work: Path) -> dict[str, Any]:
    os.environ["LLMEMBED_CACHE"] = str(work / "cache")
    record = faults.cli_output_folders(backbones, head, work)
    record["passed"] = (all(code == 0 for code in record["exit_codes"].values())
                        and not any(record["pickles"].values()) and not record["other_entries"]
                        and not record["pickles_in_cache"])
    return record


# ----------------------------------------------------------------------------------------------------------------------
# RESULTS.md
# ----------------------------------------------------------------------------------------------------------------------


def write_subsection(path: Path, body: str) -> None:
    """Replace ``TITLE`` (up to the next ``## ``/``### `` heading), or insert it at the end of ``PARENT``; the rest
    of the file is left as it is."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == TITLE), None)
    if start is None:
        parent = next((i for i, line in enumerate(lines) if line.strip() == PARENT), None)
        if parent is None:
            lines += ["", PARENT]
            parent = len(lines) - 1
        start = end = next((i for i in range(parent + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        while start > parent + 1 and not lines[start - 1].strip():  # the blank lines before the next section
            start -= 1
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("## ", "### "))), len(lines))
    block = ([""] if start > 0 and lines[start - 1].strip() else []) + body.rstrip("\n").splitlines()
    block += [""] if end < len(lines) else []
    text = "\n".join(lines[:start] + block + lines[end:]).rstrip("\n") + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def verdict(record: dict[str, Any]) -> str:
    return "pass" if record.get("passed") else "**FAIL**"


def section(results: dict[str, Any], command: str, started: str, took: float, info: dict[str, Any], args) -> str:
    m = info
    k, c, d, v, f, p = (results.get(name, {}) for name in ("kills", "concurrent", "disk_full", "conversions", "fuzz",
                                                           "pickles"))
    lines = [
        TITLE, "",
        f"Command: `{command}`  ",
        f"Date: {started} UTC; the whole run took {took / 60:.1f} min.  ",
        f"Machine: {m['nproc']} CPU cores ({m['cpu']}), {m['ram_gb']} GiB RAM, torch {m['torch']}, transformers "
        f"{m['transformers']}, Python {m['python']}; 1-min load average at start {m['loadavg_before'][0]:.1f}.  ",
        f"Models: conftest's tiny random Llama and BERT, a head saved to a folder; extraction config "
        f"`{faults.FAULT_CONFIG}` (small segments, so a run writes dozens), {faults.PAUSE * 1000:.0f} ms sleep per "
        f"backbone forward in children (stretches a run without using CPU). Child processes: "
        + ("fresh interpreters (`spawn`)" if args.start_method == "spawn" else "forked from a warm fork server")
        + (", so most of a scenario's wall time is the children's start-up (5-7 s of imports each on this "
           "machine)" if args.start_method == "spawn" else "")
        + ". CI runs the same scenarios with small counts (`tests/test_faults.py`, about 30 s).", "",
        "| scenario | what is checked | count | passed | wall s |",
        "|---|---|---:|---|---:|",
    ]
    if k:
        lines.append(
            f"| kill -9 during extraction, then resume | features bit-identical to an uninterrupted run; each "
            f"(backbone, text) stored once; no temporary, claim or corrupt file after the resume | "
            f"{k.get('kills', 0)} random kills + {k.get('targeted', 0)} targeted, {k.get('rounds', 0)} resumes "
            f"| {verdict(k)} ({k.get('rounds_passed', 0)}/{k.get('rounds', 0)} rounds) | {k['wall_s']} |")
    if c:
        runs = c.get("runs", [])
        lines.append(
            f"| concurrent `llmembed extract` on one store | outputs bit-identical to each other and to one process "
            f"alone; each text computed once; every process wrote segments; no leftovers | {len(runs)} runs "
            f"({', '.join(str(r['processes']) for r in runs)} processes) | {verdict(c)} | {c['wall_s']} |")
    if d:
        lines.append(
            f"| disk full (ENOSPC) during a write | the call fails with ENOSPC (CLI: exit 2, one line); no temporary "
            f"or claim file; the next run computes only the missing texts and is bit-identical | {d.get('cases', 0)} "
            f"fault points | {verdict(d)} ({d.get('cases_passed', 0)}/{d.get('cases', 0)}) | {d['wall_s']} |")
    if v:
        lines.append(
            f"| corrupted cached conversion | a fresh process finds the damage, warns, rebuilds, and loads the "
            f"original weights; a conversion killed half-way leaves no lock, its temporary folder goes once stale | "
            f"{v.get('damages', 0)} damages + {v.get('killed', 0)} killed conversions | {verdict(v)} "
            f"({v.get('damages_passed', 0)}/{v.get('damages', 0)}, {v.get('killed_passed', 0)}/{v.get('killed', 0)}) "
            f"| {v['wall_s']} |")
    if f:
        for prop in f.get("properties", []):
            outcomes = ", ".join(f"{name} {n}" for name, n in sorted(prop["outcomes"].items()))
            lines.append(f"| fuzz: {prop['property']} (hypothesis) | success, or only the documented errors "
                         f"({outcomes}) | {prop['cases']} cases | {verdict(prop)} | {prop['wall_s']} |")
    if p:
        files = ", ".join(f"{name} {n}" for name, n in p.get("files", {}).items())
        lines.append(f"| no pickle in CLI outputs | no .pt/.pth/.bin/.pkl/.pickle, pickle magic or zip with a .pkl in "
                     f"the folders of train, finetune, finetune-intent-slot, extract --output (files: {files}), nor "
                     f"in the cache after the runs | {len(p.get('files', {}))} folders | {verdict(p)} | "
                     f"{p['wall_s']} |")
    lines.append("")
    if k.get("kills"):
        lines.append(
            f"Kills: {k['kills']} random kills at {k['delay_range_s'][0]:.2f}-{k['delay_range_s'][1]:.2f} s after a "
            f"child started extracting ({k['texts']} texts, {k['distinct_texts']} distinct; an uninterrupted "
            f"extraction took {k['reference_extract_s']} s): {k['mid_run']} landed after some segments were written, "
            f"{k['before_first_segment']} before the first; {k['finished_first']} children finished before their "
            f"kill (not counted). After {k['leftovers_seen']} of the {k['kills']} kills the store held a dead claim "
            "or a torn temporary segment; none outlived the next run. Each round of "
            f"{args.kills_per_round} kills on one store ends with a kill half-way through a segment's write, one "
            "after the last segment's rename before its claim was released, then a run to the end.")
    if f.get("cases"):
        lines.append(f"Fuzzing: {f['cases']:,} generated cases in all (seed {args.seed}); documented errors are "
                     "TypeError (a non-string text), ValueError (an empty list, a lone surrogate), exit 2 with one "
                     "`llmembed predict: error:` line or argparse's usage error.")
    failed = [name for name, record in results.items() if not record.get("passed")]
    if failed:
        lines += ["", f"**Failed:** {', '.join(failed)} (see the JSON written with `--json`)."]
    lines += ["", "Library fixes the suite led to: a process killed while safetensors' `save_file` wrote a segment "
              "left that writer's own `.tmpXXXXXX` file in the store for good (the first long run found one in its "
              "first round of kills; segments are now serialised in memory and written to the store's own temporary "
              "file); a dead claim file stayed in the store when the killed process had "
              "renamed its last segment (the resumed run found everything stored and never looked at claims; "
              "`BackboneStore.open` now removes dead claims and temporary segments); a conversion killed half-way "
              "left its temporary folder forever when the next process rebuilt the folder within the hour (a hit now "
              "removes stale temporary folders when no build holds the lock); a lone surrogate reached the Rust "
              "tokenizers as \"TextEncodeInput must be Union[...]\" (the composite tokenizer now raises a ValueError "
              "naming the text); `llmembed predict --input x.jsonl` cut rows at U+2028/U+0085, which JSON leaves "
              "unescaped and `predict --output` writes (it now splits on `\\n` only).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=24, help="random kills in all (>= 20 for the long run)")
    parser.add_argument("--kills-per-round", type=int, default=4, help="random kills per store before a resume")
    parser.add_argument("--texts", type=int, default=600, help="distinct texts an extraction child computes")
    parser.add_argument("--concurrent-runs", type=int, default=3)
    parser.add_argument("--disk-full-writes", type=int, default=8, help="ENOSPC at segment write 1..N")
    parser.add_argument("--conversion-trials", type=int, default=18)
    parser.add_argument("--killed-conversions", type=int, default=3)
    parser.add_argument("--fuzz-tokenizer", type=int, default=500)
    parser.add_argument("--fuzz-pipeline", type=int, default=300)
    parser.add_argument("--fuzz-cli-texts", type=int, default=150)
    parser.add_argument("--fuzz-cli-jsonl", type=int, default=150)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--start-method", default="spawn", choices=["spawn", "forkserver"])
    parser.add_argument("--only", nargs="+", help="run only these scenarios (kills concurrent disk_full conversions "
                        "fuzz pickles)")
    parser.add_argument("--workdir", help="keep the scratch files here (default: a temporary folder, removed)")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--output", default=str(RESULTS), help=f"RESULTS.md to update ({PARENT} / {TITLE})")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--from-json", help="render the section from a run saved with --json (runs nothing)")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        run_args = argparse.Namespace(**{**vars(args), **saved.get("args", {})})
        body = section(saved["results"], saved["command"], saved["started"], saved["took_s"], saved["machine"],
                       run_args)
        print(body)
        if not args.no_write:
            write_subsection(Path(args.output), body)
        return

    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    info = machine()
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_faults.py", *sys.argv[1:]])
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["LLMEMBED_CACHE"] = str(work / "parent-cache")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    backbones = build_backbones(work / "backbones")
    head = faults.save_tiny_head(backbones, work / "head")
    context = faults.process_context(args.start_method)
    scenarios = {
        "kills": lambda: scenario_kills(context, head, work / "kills", args),
        "concurrent": lambda: scenario_concurrent(context, head, work / "concurrent", args),
        "disk_full": lambda: scenario_disk_full(head, work / "disk_full", args),
        "conversions": lambda: scenario_conversions(context, backbones, work / "conversions", args),
        "fuzz": lambda: scenario_fuzz(head, work / "fuzz", args),
        "pickles": lambda: scenario_pickles(backbones, head, work / "pickles"),
    }
    results: dict[str, Any] = {}
    for name, run in scenarios.items():
        if args.only and name not in args.only:
            continue
        (work / name).mkdir(exist_ok=True)
        timed(results, name, run)
    took = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "started": started, "took_s": took,
                                               "command": command, "args": vars(args), "results": results},
                                              indent=1, default=str))
    body = section(results, command, started, took, info, args)
    print(body)
    if not args.no_write:
        write_subsection(Path(args.output), body)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if all(r.get("passed") for r in results.values()) else 1)


if __name__ == "__main__":
    main()
