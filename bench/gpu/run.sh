#!/usr/bin/env bash
# One device call: configure a CUDA build (sm_90), build only tq_cuda_tests and tq_gpu_bench,
# run the CUDA tests, then the decode-attention / quantize-on-write benchmark and PyTorch's SDPA
# on the same shapes, and join them into $OUT/results.md.
#   OUT=/some/dir bench/gpu/run.sh [extra tq_gpu_bench args]
# GoogleTest / Google Benchmark packages: taken from the system, or from build-deps/usr when
# present (carried to machines that lack them).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/build-gpu/out}
BUILD=${BUILD:-$ROOT/build-gpu}
mkdir -p "$OUT"
JOBS=$(nproc 2>/dev/null || echo 16)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv || true
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DTQ_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DTQ_BUILD_TOOLS=OFF -DTQ_BUILD_SERVER=OFF -DTQ_BUILD_BENCH=ON \
  -DCMAKE_PREFIX_PATH="$ROOT/build-deps/usr" || exit 1
cmake --build "$BUILD" -j "$JOBS" --target tq_cuda_tests tq_gpu_bench || exit 1
"$BUILD/tq_cuda_tests" --gtest_output=xml:"$OUT/tests.xml" 2>&1 | tail -n 80
tests_rc=${PIPESTATUS[0]}
"$BUILD/tq_gpu_bench" --out "$OUT" "$@"
bench_rc=$?
PYTHONUNBUFFERED=1 python3 "$ROOT/bench/gpu/sdpa_ref.py" --out "$OUT/sdpa.csv"
if [ "${TQ_GPU_PROFILE:-0}" = 1 ]; then
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
  for f in tq4/tq4 tq3/tq3 f16/f16; do
    timeout 150 ncu -k regex:attention_kernel -c 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
      --section SchedulerStats --section WarpStateStats --section Occupancy --section InstructionStats \
      "$BUILD/tq_gpu_bench" --out /tmp --contexts 32768 --batches 8 --formats "$f" --reps 2 --write 0
  done > "$OUT/ncu.txt" 2>&1
fi
python3 "$ROOT/bench/gpu/report.py" "$OUT" > "$OUT/results.md"
cat "$OUT/results.md"
echo "tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
