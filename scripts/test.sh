#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Extra arguments go to pytest, e.g. the fast lane alone:
#   bash scripts/test.sh -m "not integration and not slow"
# pytest exits 5 when it collected no test: that is a failure here, like any other non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -ra "$@"
