#!/usr/bin/env bash
# Set up what is missing, make the bundled example model, compile it for Cortex-M4, run it under QEMU
# against TFLite Micro, and show the build report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p build
.venv/bin/python examples/kws_example.py -o build/kws_example.tflite
.venv/bin/edgec build build/kws_example.tflite --target cortex-m4 -o build/kws_example
.venv/bin/edgec verify build/kws_example.tflite --target cortex-m4 --on qemu --inputs 20
.venv/bin/edgec inspect build/kws_example
