#!/usr/bin/env bash
# Idempotent set-up of .venv-setfit (repo root, git-ignored): SetFit for benchmarks/bench_fewshot.py, which runs it
# as a subprocess (benchmarks/fewshot_setfit_worker.py), so the project's .venv never sees it. Safe to run again; pip
# only installs what is missing. Its body is the MPNet folder the project already resolves offline (no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${SETFIT_VENV:-.venv-setfit}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
"${PIP[@]}" torch==2.13.0
# SetFit 1.2.0 (transformers 5 / sentence-transformers 6 era) with the versions the project's own .venv tests
# (scripts/constraints.txt: transformers, tokenizers, huggingface-hub, datasets, evaluate, scikit-learn, accelerate),
# so both sides load the weights through the same transformers.
"${PIP[@]}" -c scripts/constraints.txt setfit==1.2.0 sentence-transformers==6.2.0 numpy scikit-learn
"$VENV/bin/python" -c "import setfit, sentence_transformers, transformers, torch; print('setfit', setfit.__version__, \
'| sentence-transformers', sentence_transformers.__version__, '| transformers', transformers.__version__, \
'| torch', torch.__version__)"
