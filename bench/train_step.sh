#!/usr/bin/env bash
# Step time and optimizer memory of `category` against `full` with `hft run --compare`, on the
# PyTorch timing shape of the earlier experiments in docs/results.md (hidden 256, FFN 688,
# 4 layers, 4 heads, 2 key-value heads, vocab 512, sequences of up to 128 bytes, batch 8) and on
# the bundled tiny recipe's first task (results in docs/benchmarks.md). Run from the repository
# root:
#   bash bench/train_step.sh            # THREADS=1 by default (see docs/run.md)
# Uses CARGO_TARGET_DIR if set. Prints the two compare tables.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${BENCH_OUT:-$ROOT/bench/out}/train-step
THREADS=${THREADS:-1}
STEPS=${STEPS:-40}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build --release --quiet --features train --bin hft --example synth)
HFT=$TARGET/release/hft
mkdir -p "$OUT"
"$TARGET/release/examples/synth" llama "$OUT/model-256" --dims 256,4,4,2,688 --vocab 512 \
  --dtype f32 --seed 1 --force >/dev/null
# Texts of 2 sentences of the bundled general language (up to 121 bytes + BOS/EOS).
sed -e 's/^{"text":"//' -e 's/"}$//' "$ROOT/recipes/data/general-train.jsonl" | paste -d' ' - - |
  sed -e 's/^/{"text":"/' -e 's/$/"}/' > "$OUT/text128.jsonl"
cat > "$OUT/shape256.yaml" <<YAML
model: model-256
output: runs-256
defaults: {lr: 1.0e-3, steps: $STEPS, seq_len: 128, log_every: $STEPS}
plan: {strategy: category, seed: 1}
eval: [{name: text, path: text128.jsonl, max_examples: 8}]
stages:
  - {name: lm, tasks: [text], data: [{path: text128.jsonl, batch: 8}]}
YAML
sed -e "s#model: ../fixtures/tiny-llama#model: $ROOT/fixtures/tiny-llama#" \
    -e "s#data/#$ROOT/recipes/data/#g" -e "s#output: .*#output: runs-tiny#" \
    "$ROOT/recipes/tiny-continual.yaml" | awk '/^  - name: count/{exit} {print}' |
  grep -v '^post:' > "$OUT/tiny-facts.yaml"
sed -i -e 's/steps: 1200/steps: 1/' -e "s/steps: 300/steps: $STEPS/" "$OUT/tiny-facts.yaml"
cd "$OUT"
for r in shape256 tiny-facts; do
  echo "== $r (threads $THREADS, $STEPS steps)"
  RAYON_NUM_THREADS=$THREADS "$HFT" --threads "$THREADS" -q run "$r.yaml" --force \
    --compare full,category | sed -n '/^| strategy/,/^$/p'
done
