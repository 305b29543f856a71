#!/usr/bin/env bash
# A/B of prebuilt binary sets on one device, side by side in one call: each set is a folder
# with tq and/or tq_gpu_bench (built for sm_90 or sm_90a with the same CUDA, e.g. the commit before a
# change and the change), run in turn TQ_AB_ROUNDS times (A B C A B C ...) so that clock and
# thermal drift hit every set alike.
#   TQ_AB_SETS="A=dir B=dir ..."  the sets, by name; "B=dir:--flag,value,..." adds that set's own
#                                 tq_gpu_bench arguments (commas for spaces): one binary's runtime
#                                 variants side by side
#   TQ_AB_TESTS=name              run that set's tq_cuda_tests first (into tests.log)
#   TQ_AB_ATTN="args"             tq_gpu_bench args for the attention / write bench (every set
#                                 with a tq_gpu_bench); each run's CSVs in $OUT/attn_<set>_<round>/
#   TQ_AB_DECODE="args"           `tq bench decode` args on the Llama-3-8B-shaped Q4_0 model
#                                 (made once here with the first set's tq), every set with a tq,
#                                 into $OUT/decode_<set>_<round>.md
#   TQ_AB_ROUNDS=2
#   OUT=dir bench/gpu/ab.sh
# Then: python3 bench/gpu/ab_report.py $OUT (medians per set and the ratios to the first set).
set -uo pipefail
OUT=${OUT:?OUT must name the output folder}
ROUNDS=${TQ_AB_ROUNDS:-2}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
declare -a NAMES=() DIRS=() EXTRA=()
for kv in ${TQ_AB_SETS:?}; do
  NAMES+=("${kv%%=*}")
  d=${kv#*=}
  if [[ "$d" == *:* ]]; then EXTRA+=("${d#*:}"); d=${d%%:*}; else EXTRA+=(""); fi
  DIRS+=("$d")
done
rc=0
if [ -n "${TQ_AB_TESTS:-}" ]; then
  for i in "${!NAMES[@]}"; do
    [ "${NAMES[$i]}" = "$TQ_AB_TESTS" ] || continue
    "${DIRS[$i]}/tq_cuda_tests" 2>&1 | tee "$OUT/tests.log" | grep -E '^\[  (PASSED|FAILED) |^\[  FAILED|tests ran'
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
  done
fi
MODEL=/tmp/ab-models/llama3-8b-q4_0.gguf
if [ -n "${TQ_AB_DECODE:-}" ] && [ ! -f "$MODEL" ]; then
  mkdir -p /tmp/ab-models
  for i in "${!NAMES[@]}"; do
    if [ -x "${DIRS[$i]}/tq" ]; then
      "${DIRS[$i]}/tq" make-model --shape llama3-8b --type q4_0 --seed 1 -o "$MODEL" > "$OUT/make_model.log" 2>&1 || rc=1
      break
    fi
  done
fi
for r in $(seq 1 "$ROUNDS"); do
  for i in "${!NAMES[@]}"; do
    n=${NAMES[$i]} d=${DIRS[$i]}
    if [ -n "${TQ_AB_ATTN:-}" ] && [ -x "$d/tq_gpu_bench" ]; then
      mkdir -p "$OUT/attn_${n}_$r"
      # shellcheck disable=SC2086
      "$d/tq_gpu_bench" --out "$OUT/attn_${n}_$r" $TQ_AB_ATTN ${EXTRA[$i]//,/ } > "$OUT/attn_${n}_$r/log.txt" 2>&1 || rc=1
      echo "attn $n round $r: rc $?"
    fi
    if [ -n "${TQ_AB_DECODE:-}" ] && [ -x "$d/tq" ] && [ -f "$MODEL" ]; then
      # shellcheck disable=SC2086
      "$d/tq" bench decode -m "$MODEL" --device cuda $TQ_AB_DECODE > "$OUT/decode_${n}_$r.md" 2>&1 || rc=1
      echo "decode $n round $r: rc $?"
    fi
  done
done
exit $rc
