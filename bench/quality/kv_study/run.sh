#!/usr/bin/env bash
# KV-cache key/value quantization study on SmolLM2-135M-Instruct: channel-group bit splits
# (analyze.py) and a full-matrix key transform (fullmat.py) vs the engine's diagonal key scaling.
# A research study, not part of CI or the test suite.
#
# Needs: python3 with numpy torch transformers accelerate gguf (pip install numpy torch transformers
# accelerate gguf); CPU only, ~45 min on one core.  Model: $MODEL, else scripts/fetch-model.sh
# (downloads it into the tq model cache).  Text: $TEXT, else ../shared/data/text/pride-and-prejudice.txt
# next to the repo.  Outputs (acts.npz ~400 MB, res_*.json, fm_*.json, log_*.txt) go to $1, default /tmp/kv_study.
#
# Usage: bench/quality/kv_study/run.sh [OUT_DIR]      (PYTHON=... to pick the interpreter)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=${1:-/tmp/kv_study}
py=${PYTHON:-python3}
model=${MODEL:-$(bash "$repo/scripts/fetch-model.sh")}
text=${TEXT:-$repo/../shared/data/text/pride-and-prejudice.txt}
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$out"
cd "$here"
run() { local log=$1; shift; echo "== $*"; "$py" "$@" --out "$out" 2>&1 | tee "$out/$log"; }

# 6 chunks x 512 tokens; everything below fits on chunk 0 and measures on chunks 1-5.
run log_capture.txt capture.py --chunks 6 --model "$model" --text "$text"
# Channel splits, groups ranked by sigma_k*sigma_q (keys) / sigma_v*|W_o col| (values), all configs.
run log_keys.txt analyze.py keys --groups chunk0 --rank w
run log_values.txt analyze.py values --groups chunk0 --rank w
# The best key splits again, ranked by sigma_k only, and with groups fitted on the measured chunk.
best='(16@6\+48@2|32@4\+32@2|48@4\+16@0|32@5\+32@3|16@7\+48@3|24@5\+40@3|16@4\+48@3|24@4\+40@2|8@4\+56@3) onenorm'
run log_keys_k.txt analyze.py keys --groups chunk0 --rank k --configs "$best"
run log_keys_self.txt analyze.py keys --groups self --rank w --configs "$best"
# Full-matrix key transform (layer ranges can also run as parallel jobs: --layers 0 15, --layers 15 30).
rm -f "$out"/fm_*_*.json
run log_fm.txt fullmat.py

for f in "$out"/res_*.json; do
  "$py" report.py "$f" --top 40 | tee "$out/report_$(basename "$f" .json).txt"
done
"$py" fullmat_report.py --out "$out" | tee "$out/report_fullmat.txt"
