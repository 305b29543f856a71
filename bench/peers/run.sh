#!/usr/bin/env bash
# Side-by-side benchmarks of tq against llama.cpp (issue 9): speed and KV-cache quality on the
# same machine, model, threads and text, printed as Markdown tables.
#
#   bench/peers/run.sh                      # build llama.cpp (cached), CPU speed + quality, tables
#   bench/peers/run.sh --build              # only obtain and build llama.cpp (CPU)
#   bench/peers/run.sh --cpu-speed          # speed table only (builds what is missing)
#   bench/peers/run.sh --quality            # quality table only
#   bench/peers/run.sh --report [DIR]       # reprint the tables of a finished run (default: latest)
#
# GPU (issue 9's GPU tables). The device has no network and no time to build llama.cpp, so its
# CUDA tools are built here and carried there with the lead's CUDA build of tq:
#   bench/peers/run.sh --build-gpu          # build llama.cpp's three tools with CUDA, here (no GPU
#                                           # needed; CUDA_ARCH, default 90; ~1 h on 2 cores)
#   bench/peers/run.sh --pack-gpu DIR [--tq PATH]  # them + libllama/libggml* (stripped), and
#                                           # that tq, as xz tarballs in DIR; prints the sizes
#                                           # and the libraries the device must provide
#   bench/peers/run.sh --gpu --tq PATH      # on the device: both parts below, then the tables
#   bench/peers/run.sh --gpu-llama --tq PATH  # llama-bench + llama-batched-bench only
#   bench/peers/run.sh --gpu-tq --tq PATH     # tq bench decode + tq bench concurrent only
# The lead's device call, once (~5-6 min expected, inside one call's 10 minutes):
#   here:   bench/peers/run.sh --pack-gpu build-carry --tq PATH/TO/CUDA/tq   # (1 min) writes
#             build-carry/llama-gpu.tar.xz (40 MiB: the tools, 68 MiB unpacked) and
#             build-carry/tq-gpu.tar.xz (4 MiB: tq + the lib/ beside it), PACKED.txt
#   device: LLAMA_BIN=$PWD/build-carry bash bench/peers/run.sh --gpu \
#             --tq $PWD/build-carry/tq-gpu.tar.xz          # carry: build-carry; timeout_s 600
#   here:   bench/peers/run.sh --report FILES_AT   # the tables again, from the returned $OUT
# The tarballs are unpacked under $TMPDIR/tq-peers-gpu on the device. $OUT (the device sets it)
# receives gpu/ (raw outputs, meta-*.txt, stages.txt: each stage's seconds and exit status) and
# tables.md. Every stage runs under a timeout and stages that would start past GPU_DEADLINE_S
# (540 s) are skipped, so the tables are written before the limit. If it does not fit, run
# --gpu-tq and --gpu-llama as two calls (the model stays while the machine is warm), then:
#   mkdir -p R && cp -r CALL1/. R/ && cp -r CALL2/. R/ && bench/peers/run.sh --report R
# The model: a random Llama-3-8B-shaped Q4_0 GGUF (`tq make-model --shape llama3-8b --type q4_0
# --seed 1`, 4.3 GB, ~40 s) at GPU_MODEL (default build-peers-gpu/models/, ignored by git, so
# kept between calls on a warm machine), reused when present. Then:
#   llama.cpp: llama-bench -ngl 99 -fa 1 -ctk F -ctv F -p 512 -n 128 -d 0,8192,32768 -r GPU_REPS
#              llama-batched-bench -ngl 99 -fa on -ctk F -ctv F -c 32*(8192+128) -npp 8192
#                -ntg 128 -npl 16,32 -pps   (F in LLAMA_KV_FORMATS)
#   tq:        tq bench decode --device cuda --depths 1,8192,32768 --steps 128, and
#              tq bench concurrent --device cuda --sessions 32 --contexts 8192 --batches 16,32
#              (one process per K/V pair of TQ_GPU_KV_FORMATS, so one failure loses one column)
#
# Options (environment or flags):
#   --model PATH     (TQ_MODEL)    default ~/.cache/tq/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   --threads N      (THREADS)     default 2
#   --reps N         (REPS)        speed repetitions per configuration, default 3 (min and median)
#   --chunks N       (CHUNKS)      quality: first N chunks of the text, default 16
#   --ctx N          (CTX)         quality: chunk length, default 512
#   --text PATH      (TEXT)        default ../shared/data/text/pride-and-prejudice.txt
#   --tq PATH        (TQ_BIN)      the tq binary; default: build /work/main/build-peers (CPU);
#                                  the GPU modes need one built with CUDA (or tq-gpu.tar.xz)
#   --out DIR        (OUT)         where raw outputs go; default $CACHE/runs/<timestamp>
#   --depth N        (DEPTH)       speed: the second depth, default 4096; 0 runs depth 0 only
#   TQ_KV_FORMATS="f16/f16 tq4/tq3 ..."  LLAMA_KV_FORMATS="f16 q8_0 q4_0"  (environment only)
#   LLAMA_QUALITY_EXTRA="q8_0-norot q4_0-norot"  quality: llama.cpp runs with LLAMA_ATTN_ROT_DISABLE=1
#   GPU: LLAMA_BIN=DIR (prebuilt llama.cpp tools + libs, or the folder of llama-gpu.tar.xz;
#        LD_LIBRARY_PATH is set to them),
#        CUDA_ARCH (90), GPU_MODEL, GPU_REPS (llama-bench repetitions, 3: the depth prefill is
#        done once per depth and cached by llama-bench, so repetitions are cheap),
#        TQ_GPU_KV_FORMATS ("f16/f16 q8_0/q8_0 q4_0/q4_0 tq4/tq4 tq4/tq3 tq3/tq3"),
#        TQ_GPU_DECODE_FLAGS ("--gpu-weights quant"), TQ_GPU_CONC_FLAGS (""): tq's device flags,
#        GPU_DEADLINE_S (540), GPU_CMD_TIMEOUT_S (300); GPU_DEPTHS (0,8192,32768), GPU_CTX
#        (8192), GPU_TG (128), GPU_SESSIONS (32), GPU_BATCHES (16,32): smaller ones check the
#        whole path quickly on any host (with no GPU llama.cpp's CUDA build runs on the CPU)
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

CUDA_ARCH=${CUDA_ARCH:-90}
GPU_MODEL=${GPU_MODEL:-$ROOT/build-peers-gpu/models/llama3-8b-q4_0.gguf}
GPU_REPS=${GPU_REPS:-3}
GPU_DEADLINE_S=${GPU_DEADLINE_S:-540}
GPU_CMD_TIMEOUT_S=${GPU_CMD_TIMEOUT_S:-300}
TQ_GPU_KV_FORMATS=${TQ_GPU_KV_FORMATS:-"f16/f16 q8_0/q8_0 q4_0/q4_0 tq4/tq4 tq4/tq3 tq3/tq3"}
# tq's device flags, each scenario its faster setting today: one session multiplies the Q4_0
# blocks as stored (as llama.cpp does with the same file); batches of 16-32 run f16 weights
# through cuBLAS (with Q4_0 blocks each step would dequantize them: docs/benchmarks.md).
TQ_GPU_DECODE_FLAGS=${TQ_GPU_DECODE_FLAGS:---gpu-weights quant}
TQ_GPU_CONC_FLAGS=${TQ_GPU_CONC_FLAGS:-}
T_START=$(date +%s)
LLAMA_BIN_GIVEN=${LLAMA_BIN:-}  # a prebuilt llama.cpp (the GPU modes; see --pack-gpu)

ARGS="$*"
do_build=0 do_speed=0 do_quality=0 do_gpu_llama=0 do_gpu_tq=0 do_report=0 report_dir=""
do_build_gpu=0 pack_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build|--build-peers) do_build=1 ;;
    --cpu-speed) do_speed=1 ;;
    --quality) do_quality=1 ;;
    --gpu) do_gpu_llama=1 do_gpu_tq=1 ;;
    --gpu-llama) do_gpu_llama=1 ;;
    --gpu-tq) do_gpu_tq=1 ;;
    --build-gpu) do_build_gpu=1 ;;
    --pack-gpu) [ $# -gt 1 ] || { echo "run.sh: --pack-gpu needs a directory" >&2; exit 2; }
                pack_dir=$2; shift ;;
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
do_gpu=$((do_gpu_llama + do_gpu_tq))
if [ $((do_build + do_speed + do_quality + do_gpu + do_report + do_build_gpu)) -eq 0 ] &&
   [ -z "$pack_dir" ]; then
  do_build=1 do_speed=1 do_quality=1
fi

exec 3>&2  # the script's stderr, for log lines written while a command's stderr is redirected
log() { echo "[peers $(date +%H:%M:%S)] $*" >&3; }
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

llama_build_dir() {
  if [ "$1" = cuda ]; then echo "$CACHE/build-$LCP_VERSION-cuda-sm$CUDA_ARCH"
  else echo "$CACHE/build-$LCP_VERSION-$1"; fi
}
LLAMA_TARGETS=(llama-bench llama-perplexity llama-batched-bench)

# $1 = cpu | cuda. Prints the directory holding the binaries.
build_llama() {
  local backend=$1 bdir
  bdir=$(llama_build_dir "$1")
  local missing=0 t
  for t in "${LLAMA_TARGETS[@]}"; do [ -x "$bdir/bin/$t" ] || missing=1; done
  if [ $missing = 1 ]; then
    fetch_llama
    log "configuring llama.cpp ($backend) in $bdir"
    local launcher=() flags=()
    command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache
                                              -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    if [ "$backend" = cuda ]; then
      command -v ccache >/dev/null && launcher+=(-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
      # Built here, run on the device: portable CPU code (GGML_NATIVE=OFF), one CUDA arch, shared
      # libraries (carried beside the binaries), and NO_VMM: without it libggml-cuda calls the
      # driver API (cuMemCreate...) and links libcuda.so.1, which only a machine with the driver
      # has; with it the binaries start anywhere (no GPU: CPU only). NCCL only serves several
      # GPUs and would make a 208 MB libnccl a dependency (the first build, 2026-12-02, had it
      # ON; --gpu finds libnccl on the device when needed).
      flags=(-DGGML_NATIVE=OFF -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH"
             -DGGML_CUDA_NO_VMM=ON -DGGML_CUDA_NCCL=OFF -DBUILD_SHARED_LIBS=ON)
    else
      flags=(-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DBUILD_SHARED_LIBS=OFF)
    fi
    # LLAMA_CURL is deprecated at this version (a warning); LLAMA_OPENSSL=OFF is its equivalent:
    # no HTTP(S) client. The UI, server, tests and examples are not configured at all.
    cmake -S "$(llama_src)" -B "$bdir" -DCMAKE_BUILD_TYPE=Release "${flags[@]}" \
      -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
      -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_CCACHE=OFF "${launcher[@]}" \
      -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT="$LCP_LLAMA_COMMIT" >"$bdir.configure.log" 2>&1 ||
      { tail -30 "$bdir.configure.log" >&2; die "llama.cpp configure failed"; }
    log "building ${LLAMA_TARGETS[*]} with -j$JOBS (log: $bdir.build.log)"
    cmake --build "$bdir" -j "$JOBS" --target "${LLAMA_TARGETS[@]}" >"$bdir.build.log" 2>&1 ||
      { tail -30 "$bdir.build.log" >&2; die "llama.cpp build failed"; }
  fi
  echo "$bdir/bin"
}

# --pack-gpu DIR: what a device call carries, as DIR/llama-gpu.tar.xz: the CUDA build's three
# binaries and the shared libraries of the build that they load (libllama*, libggml*), stripped;
# with --tq PATH also DIR/tq-gpu.tar.xz: that tq and the lib/ folder beside it, if any. The CUDA
# runtime, cuBLAS (and libnccl if the build links it) are not packed: the device has CUDA 13 and
# its own; DIR/PACKED.txt lists sizes and those libraries. xz because the unpacked tools are
# ~68 MiB (libggml-cuda alone 58 MiB: host code 16, sm_90 code + PTX 37), more than a call carries.
pack_gpu() {
  local dir=$1 bdir bin t
  bdir=$(llama_build_dir cuda)
  bin="$bdir/bin"
  for t in "${LLAMA_TARGETS[@]}"; do
    [ -x "$bin/$t" ] || die "no $bin/$t: run --build-gpu first (CUDA_ARCH=$CUDA_ARCH)"
  done
  command -v xz >/dev/null || die "--pack-gpu needs xz"
  local tmp
  tmp=$(mktemp -d) || die "mktemp failed"
  local st="$tmp/llama-gpu"
  mkdir -p "$st" "$dir" || die "cannot create $dir"
  for t in "${LLAMA_TARGETS[@]}"; do cp -L "$bin/$t" "$st/$t"; done
  # ldd lists every library loaded, transitively; keep those found in the build, under the
  # name the loader asks for (the soname, e.g. libggml.so.0).
  local deps name path needs=""
  deps=$(cd "$bin" && LD_LIBRARY_PATH="$bin" ldd "${LLAMA_TARGETS[@]}" | awk '$2 == "=>" {print $1, $3}' | sort -u)
  while read -r name path; do
    [ -n "$name" ] || continue
    case "$path" in
      "$bdir"/*) cp -L "$path" "$st/$name" ;;
      not) needs+="  $name (not found here)"$'\n' ;;
      /lib/*|/usr/lib/*|/lib64/*) ;;  # the C/C++ runtime and libgomp: every Linux has them
      *) needs+="  $name (here: $path)"$'\n' ;;
    esac
  done <<<"$deps"
  strip --strip-unneeded "$st"/* 2>/dev/null
  rm -f "$dir/llama-gpu.tar.xz" "$dir/tq-gpu.tar.xz"
  log "compressing the llama.cpp tools (xz -9, a minute)"
  tar -C "$tmp" -cf - llama-gpu | xz -9 -T"$JOBS" >"$dir/llama-gpu.tar.xz" || die "xz failed"
  if [ -n "$TQ_BIN" ]; then
    [ -x "$TQ_BIN" ] || die "no tq binary at $TQ_BIN"
    mkdir -p "$tmp/tq-gpu"
    cp -L "$TQ_BIN" "$tmp/tq-gpu/tq"
    [ -d "$(dirname "$TQ_BIN")/lib" ] && cp -rL "$(dirname "$TQ_BIN")/lib" "$tmp/tq-gpu/lib"
    tar -C "$tmp" -cf - tq-gpu | xz -9 -T"$JOBS" >"$dir/tq-gpu.tar.xz" || die "xz failed"
  fi
  mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
  local unpacked packed
  unpacked=$(cat "$st"/* | wc -c)
  packed=$(cat "$dir"/*.tar.xz | wc -c)
  {
    echo "llama.cpp $LCP_LLAMA_COMMIT (llama-cpp-python $LCP_VERSION), CUDA sm_$CUDA_ARCH, packed $(date -u +%F)"
    ls -l "$st" | awk 'NR > 1 {printf "  %-30s %6.1f MiB\n", $NF, $5 / 1048576}'
    echo "llama-gpu unpacked: $(mib "$unpacked")"
    [ -f "$dir/tq-gpu.tar.xz" ] && echo "tq-gpu: $TQ_BIN ($(mib "$(cat "$tmp"/tq-gpu/tq | wc -c)") unpacked)"
    ls -l "$dir"/*.tar.xz | awk '{n = split($NF, p, "/"); printf "%s: %.1f MiB\n", p[n], $5 / 1048576}'
    echo "needed from the device (not packed):"
    printf '%s' "$needs"
  } >"$dir/PACKED.txt"
  rm -rf "$tmp"
  cat "$dir/PACKED.txt" >&3
  log "packed $dir: $(mib "$packed") to carry"
  if [ "$packed" -gt $((50 * 1048576)) ]; then
    log "WARNING: over 50 MiB: with the repository (~4 MiB) near a call's 64 MiB carry limit"
  fi
}

# A .tar.xz made by --pack-gpu, unpacked once per machine under $TMPDIR; prints the folder.
unpack_carried() {
  local tarball=$1 dest="${TMPDIR:-/tmp}/tq-peers-gpu"
  local name
  name=$(basename "$tarball" .tar.xz)
  if [ ! -d "$dest/$name" ] || [ "$tarball" -nt "$dest/$name" ]; then
    rm -rf "${dest:?}/$name"
    mkdir -p "$dest"
    # tar -J needs the xz program; Python's tarfile (lzma) is the fallback.
    tar -C "$dest" -xJf "$tarball" 2>/dev/null ||
      python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
        "$tarball" "$dest" || die "cannot unpack $tarball"
  fi
  echo "$dest/$name"
}

# LLAMA_BIN=DIR given: the tools and their libraries (a folder of them, or the folder holding
# --pack-gpu's llama-gpu.tar.xz), with the libraries first on the loader's path. A library they
# need that the loader cannot find (libcudart/libcublas when CUDA is not on its default path,
# libnccl from an NCCL-enabled build) is looked for in the CUDA toolkit and the Python
# environment's nvidia-* wheels, which the device has.
use_prebuilt_llama() {
  if [ ! -x "$LLAMA_BIN/llama-bench" ] && [ -f "$LLAMA_BIN/llama-gpu.tar.xz" ]; then
    LLAMA_BIN=$(unpack_carried "$LLAMA_BIN/llama-gpu.tar.xz") || exit 1
  fi
  [ -x "$LLAMA_BIN/llama-bench" ] || die "no llama-bench (or llama-gpu.tar.xz) in LLAMA_BIN=$LLAMA_BIN"
  LLAMA_BIN=$(cd "$LLAMA_BIN" && pwd)
  export LD_LIBRARY_PATH="$LLAMA_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local missing lib d roots=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib
                             /usr/local/cuda/lib)
  local site
  site=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
  for d in $site; do [ -d "$d/nvidia" ] && roots+=("$d/nvidia"); done
  missing=$(ldd "$LLAMA_BIN"/llama-* 2>/dev/null | awk '$3 == "not" {print $1}' | sort -u)
  for lib in $missing; do
    d=$(find "${roots[@]}" -maxdepth 3 -name "$lib" 2>/dev/null | head -1)
    if [ -n "$d" ]; then
      d=$(dirname "$d")
      log "LLAMA_BIN: $lib from $d"
      export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
    fi
  done
  missing=$(ldd "$LLAMA_BIN"/llama-* 2>/dev/null | awk '$3 == "not" {print $1}' | sort -u)
  [ -z "$missing" ] || die "LLAMA_BIN: libraries not found: $(echo $missing)"
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
  # (the gguf reader: the gguf-py llama.cpp's sdist vendors, ahead of any installed package)
  fetch_llama >/dev/null
  python3 -c "import tokenizers" 2>/dev/null || python3 -c "import transformers" 2>/dev/null ||
    pip install --quiet tokenizers >&2 || die "cannot install the tokenizers package"
  PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(llama_src)/gguf-py" \
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
# gpu: both tools on the same random Llama-3-8B-shaped Q4_0 model, every layer on the GPU.
# Decode of one session at depth 0, 8k, 32k; aggregate decode of 16 and 32 sessions of 8k; KV
# bytes per token and the 8k sessions that fit in 60 GiB. Raw outputs in $OUT/gpu.
# ---------------------------------------------------------------------------------------------
# The issue's sizes; smaller ones (environment) make a quick check of the whole path on any host.
GPU_DEPTHS=${GPU_DEPTHS:-0,8192,32768}
GPU_CTX=${GPU_CTX:-8192} GPU_TG=${GPU_TG:-128} GPU_SESSIONS=${GPU_SESSIONS:-32}
GPU_BATCHES=${GPU_BATCHES:-16,32}

elapsed() { echo $(( $(date +%s) - T_START )); }

# stage NAME CMD...: runs CMD under a timeout that ends before GPU_DEADLINE_S, logs and records
# its seconds and exit status in $OUT/gpu/stages.txt; past the deadline it is skipped.
stage() {
  local name=$1; shift
  local left=$(( GPU_DEADLINE_S - $(elapsed) ))
  if [ "$left" -le 5 ]; then
    log "stage $name: skipped (past GPU_DEADLINE_S=$GPU_DEADLINE_S s)"
    echo "$name skipped deadline" >>"$OUT/gpu/stages.txt"
    return 1
  fi
  [ "$left" -gt "$GPU_CMD_TIMEOUT_S" ] && left=$GPU_CMD_TIMEOUT_S
  local t0 rc
  t0=$(date +%s)
  log "stage $name (limit ${left} s)"
  timeout "$left" "$@"
  rc=$?
  log "stage $name: $(( $(date +%s) - t0 )) s, rc $rc (total $(elapsed) s)"
  echo "$name $(( $(date +%s) - t0 )) $rc" >>"$OUT/gpu/stages.txt"
  return $rc
}

write_gpu_meta() {
  local part=$1
  {
    echo "date: $(date -u +'%Y-%m-%d %H:%M UTC')"
    echo "command: bench/peers/run.sh $ARGS"
    echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
    echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores visible"
    echo "gpu_model: $(basename "$GPU_MODEL") (tq make-model --shape llama3-8b --type q4_0 --seed 1)"
    echo "tq: $("$TQ_BIN" --version 2>/dev/null | head -1), git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '+dirty')"
    echo "llama.cpp: llama-cpp-python $LCP_VERSION sdist, llama.cpp $LCP_LLAMA_COMMIT, CUDA sm_$CUDA_ARCH"
    echo "gpu_reps: $GPU_REPS"
  } >"$OUT/gpu/meta-$part.txt"
}

# The 4.3 GB model, written once per machine (kept out of $OUT, which travels back).
gpu_model() {
  [ -s "$GPU_MODEL" ] && { log "model: $GPU_MODEL (reused)"; return 0; }
  mkdir -p "$(dirname "$GPU_MODEL")"
  stage make-model "$TQ_BIN" make-model --shape llama3-8b --type q4_0 --seed 1 -o "$GPU_MODEL" \
    --no-check >"$OUT/gpu/make_model.log" 2>&1 || die "tq make-model failed: $(tail -2 "$OUT/gpu/make_model.log")"
}

# llama.cpp, one session: tg128 (and pp512) at each depth; llama-bench prefills each depth once
# and restores it for the other test and the repetitions.
gpu_llama_decode() {
  local f g="$OUT/gpu"
  for f in $LLAMA_KV_FORMATS; do
    stage "llama-bench-$f" "$LLAMA_BIN/llama-bench" -m "$GPU_MODEL" -ngl 99 -fa 1 -ctk "$f" \
      -ctv "$f" -p 512 -n "$GPU_TG" -d "$GPU_DEPTHS" -r "$GPU_REPS" -o jsonl \
      >"$g/llama_bench_$f.jsonl" 2>"$g/llama_bench_$f.log" ||
      log "llama-bench $f failed: $(tail -1 "$g/llama_bench_$f.log")"
  done
}

# llama.cpp, many sessions. -pps: one prompt of GPU_CTX tokens, copied into every session's own
# KV stream (the cache is not unified, so each session reads its own copy), as tq bench
# concurrent copies slot 0's pages; then GPU_TG decode steps of all sessions (S_TG).
gpu_llama_batched() {
  local f g="$OUT/gpu"
  local ctx=$(( GPU_SESSIONS * (GPU_CTX + GPU_TG) ))
  for f in $LLAMA_KV_FORMATS; do
    stage "llama-batched-bench-$f" "$LLAMA_BIN/llama-batched-bench" -m "$GPU_MODEL" -ngl 99 \
      -fa on -ctk "$f" -ctv "$f" -c "$ctx" -npp "$GPU_CTX" -ntg "$GPU_TG" -npl "$GPU_BATCHES" -pps \
      --output-format jsonl >"$g/llama_batched_$f.jsonl" 2>"$g/llama_batched_$f.log" ||
      log "llama-batched-bench $f failed: $(tail -1 "$g/llama_batched_$f.log")"
  done
}

# tq, one session; one process per K/V pair, so that a failing pair loses only its column.
# tq bench decode wants positive depths: depth "0" is one token of context.
gpu_tq_decode() {
  local kv tag g="$OUT/gpu"
  for kv in $TQ_GPU_KV_FORMATS; do
    tag=${kv/\//-}
    stage "tq-decode-$tag" "$TQ_BIN" bench decode -m "$GPU_MODEL" --device cuda \
      --depths "${GPU_DEPTHS/#0,/1,}" --kv "$kv" --steps "$GPU_TG" --warmup 4 $TQ_GPU_DECODE_FLAGS \
      >"$g/tq_decode_$tag.md" 2>"$g/tq_decode_$tag.log" ||
      log "tq bench decode $kv failed: $(tail -1 "$g/tq_decode_$tag.log")"
  done
}

# tq, many sessions, and its capacity table (sessions of GPU_CTX in 60 GiB).
gpu_tq_concurrent() {
  local kv tag g="$OUT/gpu"
  for kv in $TQ_GPU_KV_FORMATS; do
    tag=${kv/\//-}
    stage "tq-concurrent-$tag" "$TQ_BIN" bench concurrent -m "$GPU_MODEL" --device cuda \
      --sessions "$GPU_SESSIONS" --contexts "$GPU_CTX" --batches "$GPU_BATCHES" --kv "$kv" \
      --steps 32 --warmup 2 --budget-gib 60 $TQ_GPU_CONC_FLAGS \
      >"$g/tq_concurrent_$tag.md" 2>"$g/tq_concurrent_$tag.log" ||
      log "tq bench concurrent $kv failed: $(tail -1 "$g/tq_concurrent_$tag.log")"
  done
}

# ---------------------------------------------------------------------------------------------
if [ $do_build_gpu = 1 ]; then
  gpu_bin=$(build_llama cuda) || exit 1
  log "llama.cpp CUDA binaries: $gpu_bin"
fi
if [ -n "$pack_dir" ]; then
  pack_gpu "$pack_dir"
fi
if [ $do_build = 1 ]; then
  need_llama cpu
  log "llama.cpp binaries: $LLAMA_BIN"
fi
if [ $do_speed = 1 ] || [ $do_quality = 1 ]; then
  [ -f "$TQ_MODEL" ] || die "no model at $TQ_MODEL (scripts/fetch-model.sh)"
  ensure_tq
  new_out
  need_llama cpu
  write_meta
  log "raw outputs: $OUT"
  # Quality first: its numbers do not depend on the machine's load, the speed ones do.
  [ $do_quality = 1 ] && run_quality
  [ $do_speed = 1 ] && run_speed
  echo "load_after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/meta.txt"
  python3 "$HERE/tables.py" "$OUT" | tee "$OUT/tables.md"
fi
if [ $do_gpu -gt 0 ]; then
  [ -n "$TQ_BIN" ] || die "the GPU modes need --tq PATH: a tq built with CUDA"
  case "$TQ_BIN" in *.tar.xz) TQ_BIN="$(unpack_carried "$TQ_BIN")/tq" || exit 1 ;; esac
  [ -x "$TQ_BIN" ] || die "no tq binary at $TQ_BIN"
  # A prebuilt tq's own shared libraries (cpp-httplib...) sit in lib/ beside it (bench/gpu/run.sh's
  # TQ_GPU_PREBUILT layout).
  tq_lib="$(cd "$(dirname "$TQ_BIN")" && pwd)/lib"
  [ -d "$tq_lib" ] && export LD_LIBRARY_PATH="$tq_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  "$TQ_BIN" --version >/dev/null 2>&1 || die "$TQ_BIN does not start: $("$TQ_BIN" --version 2>&1 | tail -1)"
  command -v nvidia-smi >/dev/null || log "nvidia-smi not found: is there a GPU?"
  new_out
  mkdir -p "$OUT/gpu"
  log "raw outputs: $OUT/gpu"
  if [ $do_gpu_llama = 1 ]; then
    LLAMA_BIN=$LLAMA_BIN_GIVEN
    if [ -n "$LLAMA_BIN" ]; then use_prebuilt_llama; else LLAMA_BIN=$(build_llama cuda) || exit 1; fi
    log "llama.cpp: $LLAMA_BIN"
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv \
    >"$OUT/gpu/device.csv" 2>&1
  gpu_model
  [ $do_gpu_llama = 1 ] && write_gpu_meta llama
  [ $do_gpu_tq = 1 ] && write_gpu_meta tq
  # One table at a time, both tools: if the deadline cuts the run, the first tables are whole.
  [ $do_gpu_llama = 1 ] && gpu_llama_decode
  [ $do_gpu_tq = 1 ] && gpu_tq_decode
  [ $do_gpu_llama = 1 ] && gpu_llama_batched
  [ $do_gpu_tq = 1 ] && gpu_tq_concurrent
  log "GPU part done in $(elapsed) s"
  python3 "$HERE/tables.py" "$OUT" | tee "$OUT/tables.md"
fi
if [ $do_report = 1 ] && [ $((do_speed + do_quality + do_gpu)) = 0 ]; then
  python3 "$HERE/tables.py" "${report_dir:-$CACHE/runs/latest}"
fi
