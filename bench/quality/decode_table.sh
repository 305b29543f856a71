#!/usr/bin/env bash
# The issue's quality table in one pass and in decode steps (docs/quality.md, "Decode steps"):
# `tq compare` of every K/V pair against the f16 cache with the plain method (no sinks, no
# scaling) at window 0 and 128, the defaults (4 sinks, key and value scaling) and the best flags
# (the defaults and window 128), each in one pass per chunk and with
# --decode (the chunk's scored half one token per pass, as generation appends), plus `tq verify`
# of tq4/tq4 with the best flags under --decode. One markdown/JSON file per run in OUT_DIR.
#
# Usage: bench/quality/decode_table.sh OUT_DIR [extra tq flags, e.g. --device cuda]
#   env: TQ (default ./build/tq), MODEL (default: scripts/fetch-model.sh), TEXT (default
#        ../shared/data/text/pride-and-prejudice.txt), CHUNKS (40), RUNS (default: all of
#        "w0_one w128_one w128_decode defaults_one best_one best_decode verify_best_decode")
# H200 (--device cuda): ~2 min per one-pass compare, ~5 min per --decode compare at 40 chunks.
# CPU (2 cores): ~2x those per chunk; use CHUNKS=16.
set -euo pipefail
out=${1:?usage: decode_table.sh OUT_DIR [extra tq flags]}
shift
source "$(dirname "$0")/common.sh" decode_table
chunks=${CHUNKS:-40}
runs=${RUNS:-w0_one w128_one w128_decode defaults_one best_one best_decode verify_best_decode}
mkdir -p "$out"
common=(-m "$model" -f "$text" --ctx 512 --chunks "$chunks" "$@")
configs=q8_0/q8_0,q4_0/q4_0,tq4/tq4,tq4/tq3,tq3/tq3,tq4/tq2,tq3j/tq3
plain=(--kv-sinks 0 --kv-key-scaling off --kv-value-scaling off)
best=(--kv-sinks 4 --kv-window 128 --kv-key-scaling on --kv-value-scaling on)
for run in $runs; do
  case $run in
    w0_one) args=(compare "${plain[@]}" --configs "$configs") ;;
    w128_one) args=(compare "${plain[@]}" --kv-window 128 --configs "$configs") ;;
    w128_decode) args=(compare "${plain[@]}" --kv-window 128 --decode --configs "$configs") ;;
    defaults_one) args=(compare --configs "$configs") ;;
    best_one) args=(compare "${best[@]}" --configs "$configs") ;;
    best_decode) args=(compare "${best[@]}" --decode --configs "$configs") ;;
    verify_best_decode) args=(verify "${best[@]}" --decode -ctk tq4 -ctv tq4 --json) ;;
    *) echo "decode_table: unknown run '$run'" >&2; exit 1 ;;
  esac
  start=$(date +%s)
  "$tq" "${args[0]}" "${common[@]}" "${args[@]:1}" > "$out/$run.md" 2> "$out/$run.log"
  echo "$run: $(($(date +%s) - start)) s -> $out/$run.md"
done
