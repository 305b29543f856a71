#!/usr/bin/env bash
# Per-layer sensitivity of a KV format pair, and a --kv-layer-types allocation from it.
#
# Every layer in turn is stored in LOW (default tq3/tq3) with all others in HIGH (tq4/tq4);
# one `tq compare` measures each against the f16 cache on the first CHUNKS chunks (default 4) of
# TEXT (one configuration per layer, the f16 logits computed once).
# The layers whose LOW costs the least KLD take LOW, the others HIGH, half each (for tq4/tq4 and
# tq3/tq3: tq4/tq3's bits), and the script prints the --kv-layer-types string. docs/quality.md,
# "Bits where the layers need them", has a run and its out-of-sample check.
#
# Usage: bench/quality/layer_scan.sh OUT_DIR [extra tq compare flags]
#   env: TQ (default ./build/tq), MODEL (default: scripts/fetch-model.sh), TEXT (default
#        ../shared/data/text/pride-and-prejudice.txt), CHUNKS (4), HIGH (tq4/tq4), LOW (tq3/tq3),
#        LOW_LAYERS (how many layers take LOW; default half)
# CPU: ~10 s a layer for SmolLM2-135M with 4 chunks on 2 cores.
set -euo pipefail
out=${1:?usage: layer_scan.sh OUT_DIR [tq compare flags]}
shift
source "$(dirname "$0")/common.sh" layer_scan
chunks=${CHUNKS:-4}
high=${HIGH:-tq4/tq4}
low=${LOW:-tq3/tq3}
mkdir -p "$out"
layers=$("$tq" capacity -m "$model" 2>/dev/null | sed -n 's/^model: .*(\([0-9]*\) layers,.*/\1/p')
[ -n "$layers" ] || { echo "layer_scan: could not read the layer count (tq capacity -m)" >&2; exit 1; }
configs="$high"
for ((l = 0; l < layers; ++l)); do configs+=";$high --kv-layer-types $l:$low"; done
"$tq" compare -m "$model" -f "$text" --ctx 512 --chunks "$chunks" "$@" --configs "$configs" \
  > "$out/scan.md" 2> "$out/scan.log"
python3 - "$out" "$layers" "$high" "$low" "${LOW_LAYERS:-}" <<'EOF'
import sys

out, layers, high, low, n_low = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]


rows = {}
for line in open(f"{out}/scan.md"):
    cells = [c.strip() for c in line.split("|")]
    if len(cells) > 8 and cells[1].startswith(high):
        rows[cells[1]] = float(cells[8])  # | config | B/token | vs f16 | K b | V b | PPL | dPPL | KLD |


def kld(label):
    if label not in rows:
        raise SystemExit(f"layer_scan: no '{label}' row in {out}/scan.md")
    return rows[label]


base = kld(high)
cost = sorted((kld(f"{high} --kv-layer-types {l}:{low}") - base, l) for l in range(layers))
n = int(n_low) if n_low else layers // 2
print(f"KLD with every layer {high}: {base:.5f}")
print("extra KLD with one layer in " + low + ", least first: " +
      " ".join(f"{l}:{c:+.5f}" for c, l in cost))
chosen = sorted(l for _, l in cost[:n])
ranges, i = [], 0
while i < len(chosen):
    j = i
    while j + 1 < len(chosen) and chosen[j + 1] == chosen[j] + 1:
        j += 1
    ranges.append(f"{chosen[i]}" if i == j else f"{chosen[i]}-{chosen[j]}")
    i = j + 1
print(f"predicted KLD (sum of the chosen layers' costs): {base + sum(c for c, _ in cost[:n]):.5f}")
print("--kv-layer-types " + ",".join(f"{r}:{low}" for r in ranges) + f"  (with -ctk/-ctv = {high})")
EOF
