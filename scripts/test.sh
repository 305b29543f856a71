#!/usr/bin/env bash
# Installs the dependencies, fetches the default model, builds and runs every test.
# This is the test command of README.md; .ci/run runs it as is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fetch-model.sh >/dev/null
bash scripts/build.sh
ctest --test-dir "${TQ_BUILD_DIR:-build}" --output-on-failure -j "$(nproc)"
# End-to-end: tq serve driven by the official openai client over loopback.
TQ_BIN="${TQ_BUILD_DIR:-build}/tq" python3 -m pytest -q tests/e2e
