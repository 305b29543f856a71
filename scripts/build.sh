#!/usr/bin/env bash
# Configures and builds tq in ./build (Release). Extra arguments go to cmake's configure step.
# CUDA sources are compiled when nvcc is found (they run only where a GPU is).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${TQ_BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
