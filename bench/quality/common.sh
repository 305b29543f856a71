# Sourced by the bench/quality scripts: the tq binary, the model and the text they measure with,
# from the environment (TQ, MODEL, TEXT) or the defaults, checked. $1: the script's name, for
# errors. Sets repo, tq, model, text.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tq=${TQ:-$repo/build/tq}
model=${MODEL:-$("$repo/scripts/fetch-model.sh")}
text=${TEXT:-$repo/../shared/data/text/pride-and-prejudice.txt}
[ -x "$tq" ] || { echo "$1: no tq binary at $tq (set TQ)" >&2; exit 1; }
[ -f "$text" ] || { echo "$1: no text at $text (set TEXT)" >&2; exit 1; }
