#!/usr/bin/env bash
# Side-by-side benchmarks of tq against llama.cpp (issue 9): speed and KV-cache quality on the
# same machine, model, threads and text, printed as Markdown tables.
#
#   bench/peers/run.sh                      # build llama.cpp (cached), CPU speed + quality, tables
#   bench/peers/run.sh --build              # only obtain and build llama.cpp
#   bench/peers/run.sh --cpu-speed          # speed table only (builds what is missing)
#   bench/peers/run.sh --quality            # quality table only
#   bench/peers/run.sh --gpu                # GPU part (issue 7): builds llama.cpp with CUDA
#   bench/peers/run.sh --report [DIR]       # reprint the tables of a finished run (default: latest)
#
# Options (environment or flags):
#   --model PATH     (TQ_MODEL)    default ~/.cache/tq/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   --threads N      (THREADS)     default 2
#   --reps N         (REPS)        speed repetitions per configuration, default 3 (min and median)
#   --chunks N       (CHUNKS)      quality: first N chunks of the text, default 16
#   --ctx N          (CTX)         quality: chunk length, default 512
#   --text PATH      (TEXT)        default ../shared/data/text/pride-and-prejudice.txt
#   --tq PATH        (TQ_BIN)      the tq binary; default: build /work/main/build-peers (CPU)
#   --out DIR        (OUT)         where raw outputs go; default $CACHE/runs/<timestamp>
#   --depth N        (DEPTH)       speed: the second depth, default 4096; 0 runs depth 0 only
#   TQ_KV_FORMATS="f16/f16 tq4/tq3 ..."  LLAMA_KV_FORMATS="f16 q8_0 q4_0"  (environment only)
#   LLAMA_QUALITY_EXTRA="q8_0-norot q4_0-norot"  quality: llama.cpp runs with LLAMA_ATTN_ROT_DISABLE=1
#
# llama.cpp comes from the PyPI sdist of llama-cpp-python (pinned below): its vendor/llama.cpp is
# the whole tree. It is unpacked and built under $CACHE (default ~/.cache/tq/peers), never in the
# repository; the build is cached per (version, backend) and only llama-bench, llama-perplexity
# and llama-batched-bench are built.
set -uo pipefail

LCP_VERSION=0.3.36            # llama-cpp-python release
LCP_LLAMA_COMMIT=0c1e57098    # the llama.cpp commit it vendors (its CHANGELOG.md)
LCP_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/bench/peers"
CACHE=${TQ_PEERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tq/peers}
TQ_MODEL=${TQ_MODEL:-$HOME/.cache/tq/models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
CHUNKS=${CHUNKS:-16}
CTX=${CTX:-512}
TEXT=${TEXT:-$ROOT/../shared/data/text/pride-and-prejudice.txt}
[ -f "$TEXT" ] || TEXT=/work/shared/data/text/pride-and-prejudice.txt
TQ_BIN=${TQ_BIN:-}
OUT=${OUT:-}
JOBS=${JOBS:-2}

ARGS="$*"
do_build=0 do_speed=0 do_quality=0 do_gpu=0 do_report=0 report_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build|--build-peers) do_build=1 ;;
    --cpu-speed) do_speed=1 ;;
    --quality) do_quality=1 ;;
    --gpu) do_gpu=1 ;;
    --report) do_report=1; if [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; then report_dir=$2; shift; fi ;;
    --model) TQ_MODEL=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --chunks) CHUNKS=$2; shift ;;
    --ctx) CTX=$2; shift ;;
    --text) TEXT=$2; shift ;;
    --tq) TQ_BIN=$2; shift ;;
    --out) OUT=$2; shift ;;
    --depth) DEPTH=$2; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ $((do_build + do_speed + do_quality + do_gpu + do_report)) -eq 0 ]; then
  do_build=1 do_speed=1 do_quality=1
fi

log() { echo "[peers $(date +%H:%M:%S)] $*" >&2; }
die() { echo "run.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# build-peers: obtain llama.cpp (sdist of llama-cpp-python) and build the three tools, cached.
# ---------------------------------------------------------------------------------------------
llama_src() { echo "$CACHE/src/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"; }

fetch_llama() {
  local tarball="$CACHE/dl/llama_cpp_python-$LCP_VERSION.tar.gz"
  if [ ! -f "$tarball" ]; then
    log "downloading the llama-cpp-python==$LCP_VERSION sdist"
    mkdir -p "$CACHE/dl"
    pip download --no-deps --no-binary :all: "llama-cpp-python==$LCP_VERSION" -d "$CACHE/dl" >&2 ||
      die "pip download failed"
  fi
  echo "$LCP_SHA256  $tarball" | sha256sum -c --quiet - || die "checksum mismatch: $tarball"
  if [ ! -f "$(llama_src)/CMakeLists.txt" ]; then
    log "unpacking $tarball"
    mkdir -p "$CACHE/src"
    tar -xzf "$tarball" -C "$CACHE/src" || die "cannot unpack $tarball"
  fi
}

# $1 = cpu | cuda. Prints the directory holding the binaries.
build_llama() {
  local backend=$1 bdir="$CACHE/build-$LCP_VERSION-$1" cuda=OFF
  [ "$backend" = cuda ] && cuda=ON
  local targets=(llama-bench llama-perplexity llama-batched-bench)
  local missing=0 t
  for t in "${targets[@]}"; do [ -x "$bdir/bin/$t" ] || missing=1; done
  if [ $missing = 1 ]; then
    fetch_llama
    log "configuring llama.cpp ($backend) in $bdir"
    local launcher=()
    command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache
                                              -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    # LLAMA_CURL is deprecated at this version (a warning); LLAMA_OPENSSL=OFF is its equivalent:
    # no HTTP(S) client. The UI, server, tests and examples are not configured at all.
    cmake -S "$(llama_src)" -B "$bdir" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
      -DLLAMA_OPENSSL=OFF -DGGML_CUDA=$cuda -DBUILD_SHARED_LIBS=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
      -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_CCACHE=OFF "${launcher[@]}" \
      -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT="$LCP_LLAMA_COMMIT" >"$bdir.configure.log" 2>&1 ||
      { tail -30 "$bdir.configure.log" >&2; die "llama.cpp configure failed"; }
    log "building ${targets[*]} with -j$JOBS (log: $bdir.build.log)"
    cmake --build "$bdir" -j "$JOBS" --target "${targets[@]}" >"$bdir.build.log" 2>&1 ||
      { tail -30 "$bdir.build.log" >&2; die "llama.cpp build failed"; }
  fi
  echo "$bdir/bin"
}

# ---------------------------------------------------------------------------------------------
# tq binary: the given one, or a CPU build in build-peers (ccache, -j2).
# ---------------------------------------------------------------------------------------------
ensure_tq() {
  if [ -n "$TQ_BIN" ]; then [ -x "$TQ_BIN" ] || die "no tq binary at $TQ_BIN"; return; fi
  local b="$ROOT/build-peers"
  log "building tq in $b"
  mkdir -p "$b"
  # The HTTP server is not needed here (and links against cpp-httplib, which may be absent).
  cmake -S "$ROOT" -B "$b" -DCMAKE_BUILD_TYPE=Release -DTQ_CUDA=OFF -DTQ_BUILD_SERVER=OFF \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >"$b/peers-configure.log" 2>&1 ||
    { tail -20 "$b/peers-configure.log" >&2; die "tq configure failed"; }
  cmake --build "$b" -j "$JOBS" --target tq >"$b/peers-build.log" 2>&1 ||
    { tail -30 "$b/peers-build.log" >&2; die "tq build failed"; }
  TQ_BIN="$b/tq"
}


# The binaries, built once and cached.
need_llama() { [ -n "${LLAMA_BIN:-}" ] || LLAMA_BIN=$(build_llama "${1:-cpu}") || exit 1; }
new_out() {
  [ -n "$OUT" ] && { mkdir -p "$OUT"; return; }
  OUT="$CACHE/runs/$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$OUT"
  ln -sfn "$OUT" "$CACHE/runs/latest"
}

# What the tables' header says: date, machine, versions, the command.
write_meta() {
  local m="$OUT/meta.txt"
  {
    echo "date: $(date -u +'%Y-%m-%d %H:%M UTC')"
    echo "command: bench/peers/run.sh $ARGS"
    echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores visible"
    echo "flags: $(grep -o -w -E 'avx2|fma|f16c|avx512f|avx512_vnni|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo "load_before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "threads: $THREADS"
    echo "reps: $REPS"
    echo "depth: $DEPTH"
    echo "model: $TQ_MODEL"
    echo "model_sha256: $(sha256sum "$TQ_MODEL" | cut -c1-16)"
    echo "text: $TEXT"
    echo "ctx: $CTX"
    echo "chunks: $CHUNKS"
    echo "tq: $("$TQ_BIN" --version 2>/dev/null | head -1), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '+dirty')"
    echo "llama.cpp: llama-cpp-python $LCP_VERSION sdist, llama.cpp $LCP_LLAMA_COMMIT"
  } >>"$m"  # appended: a later section run into the same --out adds its lines (last one wins)
}

# ---------------------------------------------------------------------------------------------
# cpu-speed: prompt (512 tokens) and generation (128 tokens) tokens/s at depth 0 and 4096.
# Interleaved: each repetition runs every configuration of both tools once, so load that comes
# and goes on a shared machine hits all of them alike; the tables give min and median.
# ---------------------------------------------------------------------------------------------
TQ_KV_FORMATS=${TQ_KV_FORMATS:-"f16/f16 q8_0/q8_0 q4_0/q4_0 tq4/tq4 tq4/tq3 tq3/tq3"}
LLAMA_KV_FORMATS=${LLAMA_KV_FORMATS:-"f16 q8_0 q4_0"}
LLAMA_QUALITY_EXTRA=${LLAMA_QUALITY_EXTRA-"q8_0-norot q4_0-norot"}
DEPTH=${DEPTH:-4096}  # 0: depth 0 only (a quick run; the table then says depth D was not run)
DEPTHS=0
[ "$DEPTH" != 0 ] && DEPTHS="0,$DEPTH"

# Prompt files of exactly N tokens of the text (the model's own tokenizer through transformers'
# GGUF loader), cached per model file.
make_prompts() {
  local dir="$CACHE/prompts/$(basename "$TQ_MODEL" .gguf)"
  PROMPTS=$dir
  local n missing=0
  local counts=(1 512)
  [ "$DEPTH" != 0 ] && counts+=("$DEPTH" $((DEPTH + 512)))
  for n in "${counts[@]}"; do [ -f "$dir/prompt_$n.txt" ] || missing=1; done
  [ $missing = 0 ] && return
  log "writing prompt files to $dir"
  python3 "$HERE/make_prompts.py" --model "$TQ_MODEL" --text "$TEXT" --out "$dir" \
    "${counts[@]}" || die "make_prompts.py failed"
}

# One tq run: $1 = K/V, $2 = prompt tokens, $3 = tokens to generate, $4 = output file.
tq_run() {
  local k=${1%/*} v=${1#*/} ctx=$(($2 + $3 + 64))
  "$TQ_BIN" run -m "$TQ_MODEL" -f "$PROMPTS/prompt_$2.txt" -n "$3" --ignore-eos --temp 0 \
    -t "$THREADS" --ctx "$ctx" -ctk "$k" -ctv "$v" >/dev/null 2>"$4" ||
    { log "tq run failed: $(tail -1 "$4")"; return 1; }
}

# tq has no depth flag: llama-bench's pp512 at depth D (512 tokens after D cached ones) is the
# prompt time of D+512 tokens minus that of D tokens, taken from the same repetition; tg128 at
# depth D is the generation rate after a D-token prompt (and after a 1-token one for depth 0).
speed_tq() {
  local kv=$1 rep=$2 tag=${1/\//-}
  local d="$OUT/speed"
  tq_run "$kv" 512 0 "$d/tq_${tag}_pp0_r$rep.txt"
  tq_run "$kv" 1 128 "$d/tq_${tag}_tg0_r$rep.txt"
  [ "$DEPTH" = 0 ] && return
  tq_run "$kv" "$DEPTH" 128 "$d/tq_${tag}_tgD_r$rep.txt"
  tq_run "$kv" $((DEPTH + 512)) 0 "$d/tq_${tag}_ppD_r$rep.txt"
}

speed_llama() {
  local f=$1 rep=$2
  "$LLAMA_BIN/llama-bench" -m "$TQ_MODEL" -t "$THREADS" -fa 1 -ctk "$f" -ctv "$f" -p 512 -n 128 \
    -d "$DEPTHS" -r 1 -o jsonl >"$OUT/speed/llama_${f}_r$rep.jsonl" \
    2>"$OUT/speed/llama_${f}_r$rep.log" || log "llama-bench failed ($f): see $OUT/speed"
}

run_speed() {
  mkdir -p "$OUT/speed"
  make_prompts
  local rep f kv
  for rep in $(seq 1 "$REPS"); do
    for kv in $TQ_KV_FORMATS; do
      f=${kv%/*}
      # Pair each tq format with llama.cpp's run of the same format, back to back.
      if [ "$f" = "${kv#*/}" ] && [[ " $LLAMA_KV_FORMATS " == *" $f "* ]]; then
        log "speed rep $rep/$REPS: llama.cpp $f/$f"
        speed_llama "$f" "$rep"
      fi
      log "speed rep $rep/$REPS: tq $kv"
      speed_tq "$kv" "$rep"
    done
  done
}

# ---------------------------------------------------------------------------------------------
# quality: llama-perplexity's scoring on the first CHUNKS chunks of CTX tokens; each tool against
# its own f16 cache (llama.cpp: --kl-divergence-base, then --kl-divergence with -ctk/-ctv).
# ---------------------------------------------------------------------------------------------
run_quality() {
  local q="$OUT/quality" f kv tag base
  mkdir -p "$q"
  base="$q/llama_f16.kld"
  local lp=("$LLAMA_BIN/llama-perplexity" -m "$TQ_MODEL" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS"
            -t "$THREADS" -fa on)
  log "quality: llama.cpp f16 (base logits)"
  "${lp[@]}" -ctk f16 -ctv f16 --kl-divergence-base "$base" >"$q/llama_f16.txt" 2>&1 ||
    log "llama-perplexity f16 failed: see $q/llama_f16.txt"
  # X-norot: llama.cpp with its Hadamard rotation of Q/K/V off (LLAMA_ATTN_ROT_DISABLE=1). This
  # version rotates whenever the cache type is quantized; tq's q8_0/q4_0 are the plain ggml
  # blocks, so the unrotated runs are their like-for-like peers.
  for f in $LLAMA_KV_FORMATS $LLAMA_QUALITY_EXTRA; do
    [ "$f" = f16 ] && continue
    log "quality: llama.cpp $f"
    local rot=0
    [ "${f%-norot}" != "$f" ] && rot=1
    LLAMA_ATTN_ROT_DISABLE=$rot "${lp[@]}" -ctk "${f%-norot}" -ctv "${f%-norot}" \
      --kl-divergence-base "$base" --kl-divergence >"$q/llama_$f.txt" 2>&1 ||
      log "llama-perplexity $f failed: see $q/llama_$f.txt"
  done
  rm -f "$base"  # 16 chunks of full-vocabulary logits: hundreds of MB, not worth keeping
  local tqa=(-m "$TQ_MODEL" -f "$TEXT" --ctx "$CTX" --chunks "$CHUNKS" -t "$THREADS")
  if "$TQ_BIN" compare --help >/dev/null 2>&1; then
    # One pass: the f16 logits of each chunk once, every format scored against them (the same
    # numbers as `tq verify` per format, without its per-layer probes).
    local configs
    configs=$(echo "$TQ_KV_FORMATS" | tr ' ' '\n' | grep -v '^f16/f16$' | paste -sd, -)
    log "quality: tq compare --configs $configs"
    "$TQ_BIN" compare "${tqa[@]}" --configs "$configs" >"$q/tq_compare.md" 2>"$q/tq_compare.log" ||
      log "tq compare failed: see $q/tq_compare.log"
  else
    for kv in $TQ_KV_FORMATS; do
      tag=${kv/\//-}
      [ "$kv" = f16/f16 ] && continue
      log "quality: tq verify $kv"
      "$TQ_BIN" verify "${tqa[@]}" -ctk "${kv%/*}" -ctv "${kv#*/}" >"$q/tq_$tag.txt" \
        2>"$q/tq_$tag.log" || log "tq verify failed: see $q/tq_$tag.log"
    done
    "$TQ_BIN" ppl "${tqa[@]}" -ctk f16 -ctv f16 --json >"$q/tq_f16-f16.json" \
      2>"$q/tq_f16-f16.log" || log "tq ppl failed: see $q/tq_f16-f16.log"
  fi
}

# ---------------------------------------------------------------------------------------------
# gpu (issue 7, to be completed): llama.cpp built with CUDA, the same llama-bench sweep with
# every layer on the GPU, plus llama-batched-bench; tq's GPU side joins when it exists.
# ---------------------------------------------------------------------------------------------
run_gpu() {
  command -v nvidia-smi >/dev/null || die "--gpu needs an NVIDIA GPU (nvidia-smi not found)"
  LLAMA_BIN=$(build_llama cuda) || exit 1
  mkdir -p "$OUT/gpu"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/gpu/device.csv"
  local rep f
  for rep in $(seq 1 "$REPS"); do
    for f in $LLAMA_KV_FORMATS; do
      "$LLAMA_BIN/llama-bench" -m "$TQ_MODEL" -ngl 99 -fa 1 -ctk "$f" -ctv "$f" -p 512 -n 128 \
        -d "$DEPTHS" -r 1 -o jsonl >"$OUT/gpu/llama_${f}_r$rep.jsonl" 2>"$OUT/gpu/llama_${f}_r$rep.log"
    done
  done
  for f in $LLAMA_KV_FORMATS; do
    "$LLAMA_BIN/llama-batched-bench" -m "$TQ_MODEL" -ngl 99 -fa on -ctk "$f" -ctv "$f" -c 65536 \
      -npp 512,4096 -ntg 128 -npl 1,8,32 --output-format jsonl >"$OUT/gpu/batched_$f.jsonl" \
      2>"$OUT/gpu/batched_$f.log"
  done
}

# ---------------------------------------------------------------------------------------------
if [ $do_build = 1 ]; then
  need_llama cpu
  log "llama.cpp binaries: $LLAMA_BIN"
fi
if [ $do_speed = 1 ] || [ $do_quality = 1 ] || [ $do_gpu = 1 ]; then
  [ -f "$TQ_MODEL" ] || die "no model at $TQ_MODEL (scripts/fetch-model.sh)"
  ensure_tq
  new_out
  if [ $do_gpu = 1 ]; then need_llama cuda; else need_llama cpu; fi
  write_meta
  log "raw outputs: $OUT"
  # Quality first: its numbers do not depend on the machine's load, the speed ones do.
  [ $do_quality = 1 ] && run_quality
  [ $do_speed = 1 ] && run_speed
  [ $do_gpu = 1 ] && run_gpu
  echo "load_after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/meta.txt"
  python3 "$HERE/tables.py" "$OUT" | tee "$OUT/tables.md"
elif [ $do_report = 1 ]; then
  python3 "$HERE/tables.py" "${report_dir:-$CACHE/runs/latest}"
fi
