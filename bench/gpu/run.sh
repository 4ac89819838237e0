#!/usr/bin/env bash
# GPU training benchmark: hft against PyTorch on the same machine, same weights, same data, same
# plan, in one call. For each shape (SmolLM2-135M; a 1.1B Llama) and strategy (full, category):
# hft trains STEPS steps with `hft run --precision bf16 --device cuda`, and bench/gpu/ref_train.py
# does the same with transformers + AdamW + bf16 autocast. Prints tokens/s, s/step and peak GPU
# memory for each, and the ratios hft/PyTorch and category/full; writes them to $OUT/results.md
# and the raw JSON lines to $OUT/results.jsonl.
#
# On the GPU machine (after scripts/build-cuda.sh --target-dir target/cuda and packing the binary
# into .gpu/hft.xz, see docs/gpu.md), in one device call that carries .gpu/:
#   HFT_XZ=.gpu/hft.xz bash bench/gpu/run.sh
# The binary runs through scripts/run-on-device.sh (the device's own CUDA libraries).
# On a CPU, to check the scripts (tiny shape, a few steps, the release build):
#   bash bench/gpu/run.sh --cpu
#
# Env: SHAPES (default "smollm2 llama1b"), STEPS (20), WARMUP (3), BATCH (8), SEQ (512),
#      PRECISION (bf16 on the GPU, f32 with --cpu; both sides use it), THREADS (--cpu: 1),
#      OUT (default bench/out/gpu), PYTHON (python3; needs torch, transformers, safetensors).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/bench/out/gpu}
mkdir -p "$OUT"
DEVICE=cuda
if [ "${1:-}" = "--cpu" ]; then
  DEVICE=cpu
  SHAPES=${SHAPES:-tiny}; STEPS=${STEPS:-4}; BATCH=${BATCH:-2}; SEQ=${SEQ:-64}
  HFT=${HFT:-$ROOT/target/release/hft}
  THREADS=${THREADS:-1}
  PRECISION=${PRECISION:-f32}
  [ -x "$HFT" ] || (cd "$ROOT" && cargo build --release --quiet)
  run_hft() { RAYON_NUM_THREADS=$THREADS "$HFT" --threads "$THREADS" "$@"; }
  TORCH_THREADS=$THREADS
else
  SHAPES=${SHAPES:-smollm2 llama1b}; STEPS=${STEPS:-20}; BATCH=${BATCH:-8}; SEQ=${SEQ:-512}
  : "${HFT_XZ:?set HFT_XZ to the xz-packed CUDA build (see the header)}"
  HFT_XZ=$(realpath "$HFT_XZ") # hft runs from inside each model's folder
  run_hft() { bash "$ROOT/scripts/run-on-device.sh" "$HFT_XZ" "$@"; }
  TORCH_THREADS=0
  PRECISION=${PRECISION:-bf16}
fi
WARMUP=${WARMUP:-3}
RESULTS=$OUT/results.jsonl
: > "$RESULTS"

# Peak GPU memory of whatever runs while it polls (nvidia-smi, every 100 ms), minus the
# memory in use before: the same yardstick for both sides.
poll_start() {
  [ "$DEVICE" = cuda ] || return 0
  BASE=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/poll.txt" &
  POLL=$!
}
poll_stop() {
  if [ "$DEVICE" != cuda ]; then echo null; return; fi
  kill "$POLL" 2>/dev/null; wait "$POLL" 2>/dev/null || true
  sort -n "$OUT/poll.txt" | tail -1 | awk -v b="$BASE" '{print $1 - b}'
}

for shape in $SHAPES; do
  M=$OUT/$shape
  echo "== $shape: making the model and data" >&2
  "$PY" "$ROOT/bench/gpu/make_model.py" "$shape" "$M" --seq "$SEQ" --examples $((BATCH * (STEPS + WARMUP)))
  for strategy in full category; do
    run_hft -q plan "$M" --strategy "$strategy" --ratio 0.5 --seed 1 --stage 0 --emit torch \
      -o "$OUT/$shape-plan-$strategy.py"
    cat > "$M/$strategy.yaml" <<YAML
model: .
output: ../$shape-runs-$strategy
tokenizer: bytes
precision: $PRECISION
defaults: {lr: 1.0e-4, steps: $((STEPS + WARMUP)), seq_len: $SEQ, log_every: 1, clip: 1.0}
plan: {strategy: $strategy, ratio: 0.5, seed: 1}
eval: [{name: text, path: data.jsonl, max_examples: $BATCH}]
stages:
  - {name: train, tasks: [text], data: [{path: data.jsonl, batch: $BATCH}]}
YAML
    echo "== $shape $strategy: hft" >&2
    poll_start
    (cd "$M" && run_hft -q run "$strategy.yaml" --device "$DEVICE" --force > /dev/null)
    mem=$(poll_stop)
    "$PY" - "$OUT/$shape-runs-$strategy/report.json" "$shape" "$strategy" "$BATCH" "$SEQ" "$mem" "$DEVICE" "$PRECISION" >> "$RESULTS" <<'PY'
import json, sys
path, shape, strategy, batch, seq, mem, device, precision = sys.argv[1:]
r = json.load(open(path))
s = r["stages"][0]
step = s["step_seconds"]
print(json.dumps({
    "side": "hft", "label": f"{shape} {strategy}", "device": device, "precision": precision,
    "batch": int(batch), "seq": int(seq), "steps": s["steps"],
    "trainable": s["plan"]["trainable"], "total": s["plan"]["total"],
    "step_s": step, "tokens_per_s": int(batch) * int(seq) / step,
    "peak_mib": s["peak_rss_mib"] if mem == "null" else float(mem),
    "peak_kind": "peak RSS" if mem == "null" else "nvidia-smi",
    "peak_rss_mib": s["peak_rss_mib"],
    "loss_first": s["curve"][0][1], "loss_last": s["curve"][-1][1],
}))
PY
    echo "== $shape $strategy: PyTorch" >&2
    poll_start
    "$PY" "$ROOT/bench/gpu/ref_train.py" --model "$M" --plan "$OUT/$shape-plan-$strategy.py" \
      --label "$shape $strategy" --steps "$STEPS" --warmup "$WARMUP" --batch "$BATCH" --seq "$SEQ" \
      --device "$DEVICE" --threads "$TORCH_THREADS" --precision "$PRECISION" > "$OUT/torch.json"
    mem=$(poll_stop)
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); d["smi_peak_mib"]=None if sys.argv[2]=="null" else float(sys.argv[2]); print(json.dumps(d))' \
      "$OUT/torch.json" "$mem" >> "$RESULTS"
  done
done
"$PY" "$ROOT/bench/gpu/summary.py" "$RESULTS" | tee "$OUT/results.md"
