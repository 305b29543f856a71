#!/usr/bin/env bash
# Fails when a lower layer includes a higher one (see CMakeLists.txt for the order) or when a
# CUDA header is included outside src/tq/backend/cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
rank() {
  case "$1" in
    core) echo 0 ;; quant) echo 1 ;; kv) echo 2 ;; backend) echo 3 ;; model) echo 4 ;;
    runtime) echo 5 ;; server) echo 6 ;; *) echo 99 ;;
  esac
}
bad=0
while IFS= read -r file; do
  layer=$(echo "$file" | cut -d/ -f3)
  mine=$(rank "$layer")
  while IFS= read -r inc; do
    dep=$(echo "$inc" | sed -E 's|.*"tq/([a-z_]+)/.*|\1|')
    if [ "$(rank "$dep")" -gt "$mine" ]; then
      echo "layer violation: $file ($layer) includes tq/$dep"
      bad=1
    fi
  done < <(grep -E '^#include "tq/' "$file" || true)
  if [[ "$file" != src/tq/backend/cuda/* ]] && grep -qE '^#include <(cuda|cublas|cub/)' "$file"; then
    echo "CUDA header outside backend/cuda: $file"
    bad=1
  fi
done < <(find src/tq -name '*.h' -o -name '*.cpp' -o -name '*.cuh' -o -name '*.cu')
[ $bad -eq 0 ] && echo "check_layers: ok"
exit $bad
