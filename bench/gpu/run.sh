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
  sym=$(cuobjdump -symbols "$BUILD/tq_gpu_bench" 2>/dev/null | grep -o '_ZN2tq7backend4cuda16attention_kernelINS1_3dev5TqFmtILi128ELi4ELb0EEES5_Li128EEEvNS1_8AttnArgsE' | head -1)
  { cuobjdump -res-usage "$BUILD/tq_gpu_bench" 2>/dev/null | grep -A1 attention_kernel | head -80
    echo "--- instruction mix of $sym"
    cuobjdump -sass -fun "$sym" "$BUILD/tq_gpu_bench" | grep -oE '^\s+/\*[0-9a-f]+\*/\s+[A-Z0-9_.]+' | awk '{print $2}' | sed 's/\..*//' | sort | uniq -c | sort -rn | head -40
  } > "$OUT/sass_summary.txt" 2>&1
  for f in tq4/tq4 f16/f16; do
    timeout 150 ncu -k regex:attention_kernel -c 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
      --section SchedulerStats --section WarpStateStats --section Occupancy --section InstructionStats \
      "$BUILD/tq_gpu_bench" --out /tmp --contexts 32768 --batches 8 --formats "$f" --reps 2 --write 0
  done > "$OUT/ncu.txt" 2>&1
fi
python3 "$ROOT/bench/gpu/report.py" "$OUT" > "$OUT/results.md"
cat "$OUT/results.md"
echo "tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
