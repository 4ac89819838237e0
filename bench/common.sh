# Shared by the benchmark scripts: paths, the Python venv, the benchmark model pair, timing.
# Source it from bench/*.sh; run those from the repository root.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTDIR=${BENCH_OUT:-$ROOT/bench/out}
VENV=${BENCH_VENV:-$ROOT/bench/.venv}
PY=$VENV/bin/python
HFT=$ROOT/target/release/hft
mkdir -p "$OUTDIR"

# Llama-shaped BF16 pair of ~1 GiB each (TinyLlama widths, 9 layers): 527 M parameters.
DIMS=${BENCH_DIMS:-2048,9,32,4,5632}
VOCAB=${BENCH_VOCAB:-32000}
PAIR_A=$OUTDIR/pair-base
PAIR_B=$OUTDIR/pair-tuned

# diff, reset, average and merge never touch candle: the lean build (no `train` feature) has the
# same code paths and builds in a minute instead of ten.
build() {
  (cd "$ROOT" && cargo build --release --quiet --no-default-features --bin hft --example synth)
}

venv() {
  if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
  fi
  if ! "$PY" -c 'import torch, safetensors, numpy' 2>/dev/null; then
    "$VENV/bin/pip" install -q torch safetensors numpy
  fi
}

make_pair() {
  local synth=$ROOT/target/release/examples/synth
  [ -f "$PAIR_A/model.safetensors" ] || "$synth" llama "$PAIR_A" --dims "$DIMS" --vocab "$VOCAB" --seed 1
  [ -f "$PAIR_B/model.safetensors" ] || "$synth" llama "$PAIR_B" --dims "$DIMS" --vocab "$VOCAB" --seed 1 --tune 2
}

# measure LABEL CMD...: runs CMD under GNU time; sets SECS and RSS_MB; output to $OUTDIR/LABEL.out
measure() {
  local label=$1; shift
  /usr/bin/time -f '%e %M' -o "$OUTDIR/$label.time" "$@" > "$OUTDIR/$label.out" 2> "$OUTDIR/$label.err" \
    || { echo "$label failed:"; tail -5 "$OUTDIR/$label.err"; return 1; }
  read -r SECS KB < "$OUTDIR/$label.time"
  RSS_MB=$((KB / 1024))
  printf '%-28s %8.2f s  %7d MiB peak RSS\n' "$label" "$SECS" "$RSS_MB"
}

warm_cache() {
  for f in "$@"; do cat "$f"/*.safetensors > /dev/null; done
}
