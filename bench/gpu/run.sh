#!/usr/bin/env bash
# One device call: configure a CUDA build (sm_90a), build tq_cuda_tests, tq_gpu_bench and the tq
# CLI, run the CUDA tests, then
#   - TQ_GPU_ATTN_BENCH=1 (default): the decode-attention / quantize-on-write benchmark and
#     PyTorch's SDPA on the same shapes (TQ_GPU_SDPA=0 skips it), joined into $OUT/results.md,
#     then ragged batches with and without splits by length (TQ_GPU_RAGGED=0 skips them);
#   - TQ_GPU_MODEL_BENCH=1 (default): the whole-model GPU forward pass end to end: perplexity of
#     README.md + docs/*.md on the CPU and on the GPU for a small random model (tq ppl), then a
#     Llama-3-8B-shaped random Q4_0 model written on the device (tq make-model, never
#     transferred), one `tq run --device cuda` and `tq bench decode` (batch-1 decode tokens/s at
#     TQ_DECODE_DEPTHS for the K/V pairs TQ_DECODE_KV) into $OUT/decode_bench.md, then f16 KV
#     with cuBLAS for the one-token matmuls (decode_bench_cublas.md; TQ_GPU_CUBLAS_COMPARE=0
#     skips it); TQ_GPU_PROFILE_DECODE=1 adds ncu kernel times of TQ_PROFILE_STEPS (2) decode
#     steps at TQ_PROFILE_DEPTH (1024) for each K/V pair of TQ_PROFILE_KV ("f16/f16 tq4/tq3"),
#     graphs off, TQ_PROFILE_FLAGS (--gpu-weights quant), per kernel into ncu_decode.md.
#   - TQ_GPU_CONCURRENT_BENCH=1 (default 0): batched decode of many sessions on the same
#     Llama-3-8B-shaped model (made in the background while the tests run): `tq bench concurrent`
#     (TQ_CONC_SESSIONS sessions at each of TQ_CONC_CONTEXTS, decode batches TQ_CONC_BATCHES, K/V
#     pairs TQ_CONC_KV, extra flags TQ_CONC_FLAGS such as --gpu-weights quant; slot 0
#     prefilled, copied to the others on the device) and the sessions
#     of each context that fit in 60 GiB, into $OUT/concurrent_bench.md (+ .log).
#   - TQ_GPU_SERVE_CHECK=1 (default 0): `tq serve --device cuda` end to end (bench/gpu/serve_check.py:
#     8 concurrent greedy completions equal to their solo runs, a streaming chat, /metrics) on
#     TQ_SERVE_MODEL (default: a random smollm2-135m-shaped q8_0 model made here), with f16 and
#     with tq4/tq3 KV, into $OUT/serve_check.md (+ server logs). Builds the server (cpp-httplib and
#     nlohmann-json from the system or build-deps/usr).
#   - TQ_GPU_REAL_MODEL=path (default unset): the default model (SmolLM2-135M Q4_1 GGUF) is on
#     the device: tq_cuda_tests compares GPU and CPU logits on it (ModelCudaRealTest), `tq ppl`
#     of README.md + docs/*.md runs on both devices (f16 and tq4/tq3 KV) into
#     $OUT/ppl_real_cpu_vs_cuda.jsonl, `tq verify` and `tq compare` on both devices into
#     verify_real_{cpu,cuda}.json and compare_real_{cpu,cuda}.md, and the serve check uses it.
#   - TQ_GPU_WRITE_AB=1 (default 0, with the model bench): the decode bench again with the
#     previous quantize-on-write kernel (--gpu-write legacy) into decode_bench_legacy_write.md.
#   - TQ_DECODE_VARIANTS (with the model bench): the decode bench once per variant, each a
#     "name:extra tq bench decode flags" and separated by ';', all into decode_bench.md; default
#     "default:" (one run as configured). E.g. "graphs:--gpu-weights quant;eager:--gpu-weights
#     quant --gpu-graphs off".
#   - TQ_GPU_BIG_TEST=1 (default 0): the Llama-3-8B-shaped model is made while the tests run, then
#     ModelCudaBigTest compares its GPU and CPU logits (TQ_TEST_BIG_MODEL), into tests.log.
#   - TQ_GPU_VOICE=1 (default 0, after the model bench): `tq bench voice --device cuda` on the
#     8B-shaped model (TQ_VOICE_SESSIONS, TQ_VOICE_TURNS, TQ_VOICE_KV, TQ_VOICE_FLAGS, or
#     TQ_VOICE_VARIANTS "name:flags;..." for several runs, e.g. with --no-prefix-cache) into
#     $OUT/voice_bench.md; needs a tq built with the server (a prebuilt one with its libraries).
#   TQ_GPU_PREBUILT=dir: take tq and tq_cuda_tests (and tq_gpu_bench for the attention bench, and
#     dir/lib/*.so) built elsewhere for sm_90a with the same CUDA instead of building here, when
#     they start; saves the device build.
#   OUT=/some/dir bench/gpu/run.sh [extra tq_gpu_bench args]
# GoogleTest / Google Benchmark / CLI11 / nlohmann-json packages: taken from the system, or from
# build-deps/usr when present (carried to machines that lack them).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/build-gpu/out}
BUILD=${BUILD:-$ROOT/build-gpu}
ATTN_BENCH=${TQ_GPU_ATTN_BENCH:-1}
MODEL_BENCH=${TQ_GPU_MODEL_BENCH:-1}
CONC_BENCH=${TQ_GPU_CONCURRENT_BENCH:-0}
SERVE_CHECK=${TQ_GPU_SERVE_CHECK:-0}
SERVER=OFF
if [ "$SERVE_CHECK" = 1 ]; then
  SERVER=ON
  # Debian's cpp-httplib is a compiled library found by pkg-config; its .pc is relocatable.
  DEPS_LIB="$ROOT/build-deps/usr/lib/x86_64-linux-gnu"
  if [ -d "$DEPS_LIB" ]; then
    export PKG_CONFIG_PATH="$DEPS_LIB/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    export LD_LIBRARY_PATH="$DEPS_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi
DEPTHS=${TQ_DECODE_DEPTHS:-1024,8192,32768}
KV_PAIRS=${TQ_DECODE_KV:-f16/f16,tq4/tq4,tq4/tq3,tq3/tq3}
mkdir -p "$OUT"
JOBS=$(nproc 2>/dev/null || echo 16)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
t0=$(date +%s)
PRE=${TQ_GPU_PREBUILT:-}
if [ -n "$PRE" ] && { [ "$ATTN_BENCH" != 1 ] || [ -x "$PRE/tq_gpu_bench" ]; } && [ -x "$PRE/tq_cuda_tests" ] &&
  LD_LIBRARY_PATH="$PRE/lib:${LD_LIBRARY_PATH:-}" "$PRE/tq" info > "$OUT/prebuilt_info.txt" 2>&1 &&
  { [ "$SERVE_CHECK" != 1 ] || LD_LIBRARY_PATH="$PRE/lib:${LD_LIBRARY_PATH:-}" "$PRE/tq" serve --help >/dev/null 2>&1; }; then
  export LD_LIBRARY_PATH="$PRE/lib:${LD_LIBRARY_PATH:-}"
  BUILD=$PRE
  echo "build: prebuilt binaries from $PRE"
else
  [ -n "$PRE" ] && echo "prebuilt binaries in $PRE do not start here: building"
  cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DTQ_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a -DTQ_BUILD_TOOLS=ON -DTQ_BUILD_SERVER=$SERVER -DTQ_BUILD_BENCH=ON \
    -DCMAKE_PREFIX_PATH="$ROOT/build-deps/usr" || exit 1
  TARGETS=(tq_cuda_tests)
  [ "$ATTN_BENCH" = 1 ] && TARGETS+=(tq_gpu_bench)
  { [ "$MODEL_BENCH" = 1 ] || [ "$CONC_BENCH" = 1 ] || [ "$SERVE_CHECK" = 1 ] ||
    [ -n "${TQ_GPU_REAL_MODEL:-}" ]; } && TARGETS+=(tq)
  cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" || exit 1
  echo "build: $(( $(date +%s) - t0 )) s"
fi
# run_variants "name:flags;name:flags" OUT_MD ERR_LOG cmd args...: cmd args flags once per
# variant, each under a "### name: <cmd's first two words> flags" heading, stdout into OUT_MD
# (and the terminal), stderr appended to ERR_LOG (/dev/null: to the terminal). Fails if any run did.
run_variants() {
  local list=$1 md=$2 err=$3 rc=0 variant
  shift 3
  local -a variants vflags
  : > "$md"
  IFS=';' read -r -a variants <<< "$list"
  for variant in "${variants[@]}"; do
    read -r -a vflags <<< "${variant#*:}"
    echo "### ${variant%%:*}: $(basename "$1") $2 $3 ${variant#*:}" >> "$md"
    if [ "$err" = /dev/null ]; then
      "$@" "${vflags[@]}" | tee -a "$md"
    else
      "$@" "${vflags[@]}" 2>> "$err" | tee -a "$md"
    fi
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
  done
  return $rc
}
MODELS="$BUILD/models"  # multi-GB files: kept out of $OUT, which travels back
BIG="$MODELS/llama3-8b-q4_0.gguf"
mkdir -p "$MODELS"
make_big() {
  local t1
  t1=$(date +%s)
  "$BUILD/tq" make-model --shape llama3-8b --type q4_0 --seed 1 -o "$BIG" > "$OUT/make_model.log" 2>&1
  local rc=$?
  echo "make-model: $(( $(date +%s) - t1 )) s, rc $rc"
  return $rc
}
# The CPU writes the 8B model while the GPU runs the tests.
big_pid=""
if [ "$CONC_BENCH" = 1 ] || [ "${TQ_GPU_BIG_TEST:-0}" = 1 ]; then make_big & big_pid=$!; fi
REAL=${TQ_GPU_REAL_MODEL:-}
if [ -n "$REAL" ]; then
  export TQ_TEST_MODEL=$REAL
  [ -z "${TQ_SERVE_MODEL:-}" ] && export TQ_SERVE_MODEL=$REAL
fi
"$BUILD/tq_cuda_tests" --gtest_output=xml:"$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log" | tail -n 80
tests_rc=${PIPESTATUS[0]}
if [ "${TQ_GPU_BIG_TEST:-0}" = 1 ]; then
  if [ -n "$big_pid" ]; then wait "$big_pid" || tests_rc=1; big_pid=""; fi
  TQ_TEST_BIG_MODEL="$BIG" "$BUILD/tq_cuda_tests" --gtest_filter='ModelCudaBigTest.*' 2>&1 |
    tee -a "$OUT/tests.log" | tail -n 20
  [ "${PIPESTATUS[0]}" = 0 ] || tests_rc=1
fi
grep '^\[ measured \]' "$OUT/tests.log"
bench_rc=0
if [ "$ATTN_BENCH" = 1 ]; then
  "$BUILD/tq_gpu_bench" --out "$OUT" "$@"
  bench_rc=$?
  # The bulk write again from fp32 rows (what the model's prefill writes), into $OUT/write_f32/.
  "$BUILD/tq_gpu_bench" --out "$OUT/write_f32" --attention 0 --gemv 0 --reps 20 \
    --write-input f32 > "$OUT/write_f32.log" 2>&1 || bench_rc=1
  [ "${TQ_GPU_SDPA:-1}" = 1 ] && PYTHONUNBUFFERED=1 python3 "$ROOT/bench/gpu/sdpa_ref.py" --out "$OUT/sdpa.csv"
  if [ "${TQ_GPU_RAGGED:-1}" = 1 ]; then
    # Mixed lengths (sequence b at context x (b % 8 + 1) / 8), splits by length against every
    # sequence cut as the longest, into $OUT/ragged_bylen_{1,0}/ (docs/gpu.md, "Mixed lengths").
    for bl in 1 0; do
      echo "## ragged batches, --by-length $bl"
      "$BUILD/tq_gpu_bench" --out "$OUT/ragged_bylen_$bl" --gemv 0 --write 0 --ragged 1 \
        --by-length "$bl" --contexts 32768,131072 --batches 8,32 \
        --formats f16/f16,tq4/tq4,tq4/tq2 | grep -E '^(\||###)' || bench_rc=1
    done
  fi
fi
if [ "$ATTN_BENCH" = 1 ] && [ "${TQ_GPU_PROFILE:-0}" = 1 ]; then
  # Resource usage and instruction mix of the tq4/tq4 head-dim-128 kernel, then one profiled
  # launch of it at 32k context, batch 8 (DRAM throughput, issue utilisation).
  obj=$(find "$BUILD" -name 'attention_inst_k_tq4.cu.o' | head -1)
  { cuobjdump -res-usage "$obj" 2>/dev/null | grep -A1 'TqFmtILi128ELi4ELb0EEES5_Li128E'
    for fn in TqFmtILi128ELi4ELb0EEES5_Li128E TqFmtILi128ELi4ELb0EEENS4_ILi128ELi3ELb0EEELi128E; do
      echo "--- instruction mix of attention_kernel<$fn>"
      cuobjdump -sass "$obj" | awk -v f="$fn" '/Function :/{on = index($0, f) > 0} on' |
        grep -E '^ +/\*[0-9a-f]{4}\*/ ' | sed -E 's/^ +\/\*[0-9a-f]{4}\*\/ +(@!?U?P[0-9T]+ +)?([A-Z0-9_]+).*/\2/' |
        sort | uniq -c | sort -rn | head -30
    done
  } > "$OUT/sass_summary.txt" 2>&1
  for f in ${TQ_PROFILE_ATTN_FORMATS-tq4/tq4 tq3/tq3 f16/f16}; do
    timeout 150 ncu -k regex:attention_kernel -c 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
      --section SchedulerStats --section WarpStateStats --section Occupancy --section InstructionStats \
      "$BUILD/tq_gpu_bench" --out /tmp --contexts 32768 --batches 8 --formats "$f" --reps 2 --write 0
  done > "$OUT/ncu.txt" 2>&1
  # One bulk tq4 quantize-on-write launch (65536 tokens x 8 KV heads, fp16 in).
  timeout 150 ncu -k regex:tq_team_kernel -c 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section SchedulerStats --section WarpStateStats --section Occupancy --section InstructionStats \
    --section LaunchStats "$BUILD/tq_gpu_bench" --out /tmp --formats tq4/tq4 --reps 1 --attention 0 \
    > "$OUT/ncu_write.txt" 2>&1
fi
if [ "$ATTN_BENCH" = 1 ]; then
  python3 "$ROOT/bench/gpu/report.py" "$OUT" > "$OUT/results.md"
  cat "$OUT/results.md"
fi
model_rc=0
if [ -n "$REAL" ]; then
  # The default model's perplexity on both devices, same KV formats and text.
  cat "$ROOT/README.md" "$ROOT"/docs/*.md > "$MODELS/text.txt"
  for kv in f16/f16 tq4/tq3; do
    for dev in cpu cuda; do
      "$BUILD/tq" ppl -m "$REAL" --device "$dev" -f "$MODELS/text.txt" --ctx 512 --chunks 16 \
        -ctk "${kv%/*}" -ctv "${kv#*/}" --json || model_rc=1
    done
  done | tee "$OUT/ppl_real_cpu_vs_cuda.jsonl"
  # tq verify and tq compare on both devices (on cuda the K/V cosine is against the f16 run's
  # stored rows, and the attention error is not measured: see tools/cmd_verify.cpp).
  for dev in cpu cuda; do
    "$BUILD/tq" verify -m "$REAL" --device "$dev" -f "$MODELS/text.txt" --ctx 512 --chunks 4 \
      -ctk tq4 -ctv tq3 --json > "$OUT/verify_real_$dev.json" || model_rc=1
    "$BUILD/tq" compare -m "$REAL" --device "$dev" -f "$MODELS/text.txt" --ctx 512 --chunks 8 \
      --configs q8_0/q8_0,q4_0/q4_0,tq4/tq4,tq4/tq3,tq3/tq3 > "$OUT/compare_real_$dev.md" || model_rc=1
  done
  cat "$OUT"/verify_real_*.json "$OUT"/compare_real_*.md
fi
if [ "$MODEL_BENCH" = 1 ]; then
  TQ="$BUILD/tq"
  "$TQ" info
  # The same perplexity on both devices (same KV formats): the CLI path end to end.
  "$TQ" make-model --shape smollm2-135m --type q8_0 --seed 3 -o "$MODELS/smol.gguf" >/dev/null || model_rc=1
  cat "$ROOT/README.md" "$ROOT"/docs/*.md > "$MODELS/text.txt"
  # The defaults (4 f16 sinks, key and value scaling), the plain method, and the defaults with a
  # window (the exact rows beside the pages) (TQ_PPL_EXTRAS: ';'-separated lists of extra flags).
  IFS=';' read -r -a ppl_extras <<< "${TQ_PPL_EXTRAS-;--kv-sinks 0 --kv-key-scaling off --kv-value-scaling off;--kv-window 64}"
  for extra in "${ppl_extras[@]}"; do
    for dev in cpu cuda; do
      # shellcheck disable=SC2086 # extra is a list of flags
      "$TQ" ppl -m "$MODELS/smol.gguf" --device "$dev" -f "$MODELS/text.txt" --ctx 256 --chunks 4 \
        -ctk tq4 -ctv tq3 $extra --json || model_rc=1
    done
  done | tee "$OUT/ppl_cpu_vs_cuda.jsonl"
  if [ -n "$big_pid" ]; then wait "$big_pid" || model_rc=1; big_pid=""; else make_big || model_rc=1; fi
  "$TQ" run -m "$MODELS/llama3-8b-q4_0.gguf" --device cuda -p "The KV cache" -n 32 --temp 0 \
    --ignore-eos -ctk tq4 -ctv tq3 > "$OUT/run_8b.txt" || model_rc=1
  run_variants "${TQ_DECODE_VARIANTS:-default:}" "$OUT/decode_bench.md" /dev/null \
    "$TQ" bench decode -m "$MODELS/llama3-8b-q4_0.gguf" --device cuda --depths "$DEPTHS" \
    --kv "$KV_PAIRS" --steps 64 --warmup 4 || model_rc=1
  if [ "${TQ_GPU_WRITE_AB:-0}" = 1 ]; then
    "$TQ" bench decode -m "$MODELS/llama3-8b-q4_0.gguf" --device cuda --gpu-write legacy \
      --depths "$DEPTHS" --kv "$KV_PAIRS" --steps 64 --warmup 4 | tee "$OUT/decode_bench_legacy_write.md"
  fi
  # The same decode with cuBLAS for the one-token matmuls instead of tq's GEMV kernel.
  [ "${TQ_GPU_CUBLAS_COMPARE:-1}" = 1 ] && "$TQ" bench decode -m "$MODELS/llama3-8b-q4_0.gguf" --device cuda --depths 1024,32768 \
    --kv f16/f16 --steps 64 --warmup 4 --cublas-gemv | tee "$OUT/decode_bench_cublas.md"
  if [ "${TQ_GPU_PROFILE_DECODE:-0}" = 1 ]; then
    # Kernel times of TQ_PROFILE_STEPS decode steps after a TQ_PROFILE_DEPTH-token prefill, one
    # ncu run per K/V pair of TQ_PROFILE_KV (launched one by one: graphs off), summed per kernel
    # and step by ncu_decode.py into ncu_decode.md.
    psteps=${TQ_PROFILE_STEPS:-2}
    pargs=()
    for kv in ${TQ_PROFILE_KV:-f16/f16 tq4/tq3}; do
      csvf="$OUT/ncu_decode_${kv/\//-}.csv"
      timeout 240 ncu --clock-control none --metrics gpu__time_duration.sum --csv \
        "$TQ" bench decode -m "$MODELS/llama3-8b-q4_0.gguf" --device cuda \
        --depths "${TQ_PROFILE_DEPTH:-1024}" --kv "$kv" --steps "$psteps" --warmup 0 \
        --gpu-graphs off ${TQ_PROFILE_FLAGS:---gpu-weights quant} > "$csvf" 2> "${csvf%.csv}.err"
      echo "ncu $kv rc=$? rows=$(wc -l < "$csvf")"
      pargs+=("$kv=$csvf")
    done
    python3 "$ROOT/bench/gpu/ncu_decode.py" "$psteps" "${pargs[@]}" | tee "$OUT/ncu_decode.md"
  fi
fi
if [ "${TQ_GPU_VOICE:-0}" = 1 ] && [ -f "$BIG" ]; then
  # Many short multi-turn sessions through the scheduler on the GPU (tq bench voice; needs a tq
  # built with the server): TTFT p50/p95 and tokens/s per K/V pair.
  # TQ_VOICE_VARIANTS: "name:flags;..." as TQ_DECODE_VARIANTS, all into voice_bench.md.
  : > "$OUT/voice_bench.log"
  run_variants "${TQ_VOICE_VARIANTS:-default:${TQ_VOICE_FLAGS:---gpu-weights quant}}" \
    "$OUT/voice_bench.md" "$OUT/voice_bench.log" \
    "$BUILD/tq" bench voice -m "$BIG" --device cuda --sessions "${TQ_VOICE_SESSIONS:-32}" \
    --turns "${TQ_VOICE_TURNS:-3}" --tokens 32 --kv "${TQ_VOICE_KV:-f16/f16,tq4/tq3}" || model_rc=1
fi
conc_rc=0
if [ "$CONC_BENCH" = 1 ]; then
  if [ -n "$big_pid" ]; then wait "$big_pid" || conc_rc=1; fi
  "$BUILD/tq" bench concurrent -m "$BIG" --device cuda --sessions "${TQ_CONC_SESSIONS:-16}" \
    --contexts "${TQ_CONC_CONTEXTS:-8192,32768}" --batches "${TQ_CONC_BATCHES:-1,16}" \
    --kv "${TQ_CONC_KV:-f16/f16,tq4/tq3,tq4/tq4,tq3/tq3}" --steps "${TQ_CONC_STEPS:-16}" \
    --warmup 2 --budget-gib 60 ${TQ_CONC_FLAGS:-} 2> >(tee "$OUT/concurrent_bench.log" >&2) |
    tee "$OUT/concurrent_bench.md"
  [ "${PIPESTATUS[0]}" = 0 ] || conc_rc=1
fi
serve_rc=0
if [ "$SERVE_CHECK" = 1 ]; then
  SERVE_MODEL=${TQ_SERVE_MODEL:-$MODELS/serve_smol.gguf}
  if [ -z "${TQ_SERVE_MODEL:-}" ] && [ ! -f "$SERVE_MODEL" ]; then
    "$BUILD/tq" make-model --shape smollm2-135m --type q8_0 --seed 5 -o "$SERVE_MODEL" >/dev/null ||
      serve_rc=1
  fi
  : > "$OUT/serve_check.md"
  for kv in f16/f16 tq4/tq3; do
    python3 "$ROOT/bench/gpu/serve_check.py" --tq "$BUILD/tq" -m "$SERVE_MODEL" --device cuda \
      -ctk "${kv%/*}" -ctv "${kv#*/}" --log "$OUT/serve_check_${kv/\//_}.log" \
      --md "$OUT/serve_check.md" || serve_rc=1
  done
fi
echo "tests rc=$tests_rc bench rc=$bench_rc model rc=$model_rc concurrent rc=$conc_rc" \
  "serve rc=$serve_rc, total $(( $(date +%s) - t0 )) s"
exit $(( tests_rc != 0 || bench_rc != 0 || model_rc != 0 || conc_rc != 0 || serve_rc != 0 ))
