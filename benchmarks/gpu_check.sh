#!/usr/bin/env bash
# Every GPU check of minivgg in one command, for the few minutes a GPU is lent (issue 12):
# environment, the kernel tests on the GPU, compute-sanitizer, the benchmarks, a short
# training run; logs and tables in one directory; exit 0 when no part failed.
#
#   benchmarks/gpu_check.sh [OUT_DIR] [--dry-run]      (from anywhere; runs in the repo root)
#
# PYTHON picks the interpreter (default: python3, the one that has CuPy and torch on the GPU
# machine); --dry-run checks the script itself on a machine without a GPU.
# The parts: benchmarks/gpu_parts.py; the runner: benchmarks/gpu_check.py.
set -u
cd "$(dirname "$0")/.." || exit 2
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
