#!/usr/bin/env bash
# Set up llama2 on a fresh machine: a virtual environment in .venv with the
# package built from this checkout (C backends included) and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch: the CPU build; where a local wheel of 2.13.0 exists pip takes it from disk.
.venv/bin/python -m pip install --quiet "torch==2.13.0" || .venv/bin/python -m pip install --quiet "torch>=2.2"
.venv/bin/python -m pip install --quiet "scikit-build-core>=0.11" "cffi>=1.16" cmake ninja
.venv/bin/python -m pip install --quiet --no-build-isolation -e ".[test]"
echo "llama2 is installed in .venv: run .venv/bin/llama2 --help"
