#!/usr/bin/env bash
# The prepared GPU check (issue 15): kernel tests on CUDA in fp32/fp16/bf16, then the kernel
# benchmarks against eager PyTorch and torch.compile, with the copy bandwidth of the same run;
# every CSV/JSON and a one-screen summary under OUT_DIR. Under 8 minutes on an H100/H200.
#
#   scripts/gpu_check.sh OUT_DIR [--dry-run] [--budget-s 450] [--skip-tests] [--skip-bench]
#
# Runs varmem from this checkout (nothing is installed: `pip install -e .` would pull in Ray, and
# the GPU machines have none). Needs torch 2.11-2.13, triton 3.6-3.9, numpy, pytest (and hypothesis
# for test_extreme_values.py). Without network on the GPU machine, bring pure-Python test
# dependencies in a folder: `pip install --target .gpu_deps pytest pytest-timeout hypothesis` here,
# carry `.gpu_deps` along; it is put on PYTHONPATH when present.
# --dry-run: on a CPU, collects the tests and runs the reference benchmarks at tiny sizes (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: scripts/gpu_check.sh OUT_DIR [--dry-run] [--budget-s S] [--skip-tests] [--skip-bench]" >&2
    exit 2
fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpu_deps ]; then export PYTHONPATH="$PYTHONPATH:$PWD/.gpu_deps"; fi
exec "$PY" -m varmem.benchmarks.gpu_check "$@"
