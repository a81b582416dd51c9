#!/usr/bin/env bash
# Set up what is missing, then run the whole test suite (host, QEMU Cortex-M4, TFLite Micro oracle).
# Extra arguments go to pytest, e.g. scripts/test.sh -k conv -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check edgec tests examples
exec .venv/bin/python -m pytest -q "$@"
