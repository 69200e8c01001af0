"""Shared by the benchmarks: machine description, dataset reading, and `benchmarks/RESULTS.md` sections (each
benchmark owns some sections and rewrites only those)."""

from __future__ import annotations

import ctypes
import datetime as dt
import gc
import gzip
import json
import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def machine() -> dict[str, Any]:
    """What the figures were measured on (quoted with every result)."""
    import transformers

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "loadavg_before": os.getloadavg(),
    }


def read_texts(name: str, n: int, split: str = "train") -> list[str]:
    """The first ``n`` texts of a shared dataset split."""
    texts: list[str] = []
    with gzip.open(DATASETS / name / f"{split}.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            texts.append(json.loads(line)["text"])
            if len(texts) >= n:
                break
    if len(texts) < n:
        raise SystemExit(f"{name}/{split} has only {len(texts)} rows, {n} asked for.")
    return texts


def replace_section(text: str, title: str, body: str) -> str:
    """Replace the section that starts with ``title`` (up to the next ``## `` heading) or append it."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == title), None)
    if start is None:
        prefix = text.rstrip("\n")
        return (prefix + "\n\n" if prefix else "") + body.rstrip("\n") + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    new = lines[:start] + body.rstrip("\n").splitlines() + ([""] if end < len(lines) else []) + lines[end:]
    return "\n".join(new).rstrip("\n") + "\n"


def write_sections(path: Path, sections: list[tuple[str, str]]) -> None:
    """Replace (or append) the given ``(title, body)`` sections atomically; other sections are left as they are."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    for title, body in sections:
        text = replace_section(text, title, body)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def timed_run(script: str, run: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], str, float, str]:
    """Run a benchmark: its result, the machine it ran on, when it started (UTC), its wall seconds and the command line
    that reproduces it (``python <script> <this process's arguments>``)."""
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    info = machine()
    t0 = time.perf_counter()
    result = run()
    took = time.perf_counter() - t0
    command = "python " + " ".join(shlex.quote(a) for a in [script, *sys.argv[1:]])
    return result, info, started, took, command


def publish(title: str, body: str, record: dict[str, Any], json_path: str | None, output: str | Path,
            write: bool) -> None:
    """Keep a run's raw ``record`` at ``json_path`` (if given), print its section and, with ``write``, replace the
    section ``title`` of ``output`` (a RESULTS.md)."""
    if json_path:
        Path(json_path).write_text(json.dumps(record, indent=1, default=str))
    print(body)
    if write:
        write_sections(Path(output), [(title, body)])


def _trim_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class Measure:
    """Wall time, process CPU time and peak RSS (sampled every 5 ms by a thread) of a ``with`` block."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.process = psutil.Process()

    def __enter__(self) -> "Measure":
        _trim_memory()
        self.rss_before = self.process.memory_info().rss
        self.peak = self.rss_before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.load_before = os.getloadavg()[0]
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.load_after = os.getloadavg()[0]

    def as_dict(self) -> dict:
        return {"wall_s": self.wall, "cpu_s": self.cpu, "peak_rss_mb": self.peak / 2**20,
                "peak_rise_mb": (self.peak - self.rss_before) / 2**20,
                "load_before": self.load_before, "load_after": self.load_after}
