#!/usr/bin/env bash
# Fails when a C++/CUDA source differs from clang-format's output (.clang-format; Debian 12's
# clang-format 14, which scripts/install-deps.sh installs). Fix with:
#   git ls-files '*.cpp' '*.h' '*.cu' '*.cuh' | xargs clang-format -i
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
while IFS= read -r f; do
  if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
    echo "not clang-formatted: $f"
    bad=1
  fi
done < <(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh')
[ "$bad" = 0 ] && echo "format: ok"
exit "$bad"
