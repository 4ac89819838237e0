#!/usr/bin/env bash
# Records what hft writes for a fixed set of commands on the bundled fixtures, so a refactor can
# prove behaviour unchanged: run it before and after, then `diff -r BEFORE AFTER`.
#   scripts/snapshot.sh target/debug/hft /tmp/snap-before
# Both runs use the same binary path and output folder (they are recorded in checkpoint
# metadata), then the result moves to DEST. Timings and versions are normalised (see `scrub`).
set -euo pipefail
DEST=$(realpath -m "$2")
BIN=/tmp/hft-snapshot-bin
OUT=/tmp/hft-snapshot
ROOT=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$OUT" "$BIN" "$DEST"
mkdir -p "$OUT" "$BIN"
cp "$1" "$BIN/hft"
HFT=$BIN/hft
cd "$ROOT"
F=fixtures
export RAYON_NUM_THREADS=1

scrub() { # normalise what legitimately differs between runs
    sed -E -e "s#$OUT#OUT#g" -e "s#$ROOT#ROOT#g" \
        -e 's/"(seconds|step_seconds|tokens_per_second|peak_rss_mib|eval_seconds)": [0-9.e+-]+/"\1": T/g' \
        -e 's/[0-9]+\.[0-9]+ ?s(\/step)?\b/Ts/g' -e 's/hft [0-9]+\.[0-9]+\.[0-9]+/hft V/g'
}
cmd() { # NAME ARGS...: stdout, stderr and exit code of one command
    local name=$1
    shift
    set +e
    "$HFT" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
    echo $? >"$OUT/$name.rc"
    set -e
    for f in "$OUT/$name.out" "$OUT/$name.err"; do scrub <"$f" >"$f.s" && mv "$f.s" "$f"; done
}
cmd diff-table diff $F/llama-base $F/llama-tuned
cmd diff-json diff $F/llama-base $F/llama-tuned --format json
cmd diff-csv-layer diff $F/llama-base $F/llama-tuned --by layer --format csv
cmd diff-csv-tensor diff $F/llama-base-sharded $F/llama-tuned-sharded --format csv --sort rel-delta
cmd diff-listing diff $F/qwen2-base $F/qwen2-tuned --by category
cmd diff-gpt2 diff $F/gpt2-base $F/gpt2-tuned --format json
cmd diff-resized diff $F/llama-base $F/llama-tied-resized
cmd diff-plot diff $F/llama-base $F/llama-tuned --plot "$OUT/heat.svg"
cmd plan-map plan $F/llama-base
for s in category layer element matrix full none; do
    cmd plan-$s plan $F/llama-base --strategy $s --seed 3 --stage 1 -o "$OUT/plan-$s.yaml"
done
cmd plan-balance plan $F/llama-base --balance params --ratio 0.4
cmd plan-magnitude plan $F/llama-base --strategy magnitude --emit names
cmd plan-lisa plan $F/llama-base --strategy lisa --emit torch
cmd plan-config plan $F/llama-base/config.json --emit json
cmd plan-qwen2 plan $F/qwen2-base --emit yaml
cmd plan-gpt2 plan $F/gpt2-base --emit regex
for e in names regex axolotl llamafactory torch json; do
    cmd emit-$e plan $F/llama-base --emit $e --seed 5
done
"$HFT" diff $F/llama-base $F/llama-tuned --format json >"$OUT/d.json"
cmd plan-delta plan $F/llama-tuned --strategy delta --diff "$OUT/d.json" --emit yaml
cmd plan-check plan --check "$OUT/plan-category.yaml" $F/llama-base
cmd plan-bad plan $F/llama-base --ratio 1.5
cmd reset-category reset --base $F/llama-base --tuned $F/llama-tuned --seed 7 -o "$OUT/reset-category"
cmd reset-element reset --base $F/llama-base --tuned $F/llama-tuned --strategy element --ratio 0.3 -o "$OUT/reset-element.safetensors"
cmd reset-plan reset --base $F/llama-base --tuned $F/llama-tuned --plan "$OUT/plan-layer.yaml" -o "$OUT/reset-plan"
cmd reset-sharded reset --base $F/llama-base-sharded --tuned $F/llama-tuned-sharded --max-shard-size 20000 -o "$OUT/reset-sharded"
cmd average-alpha average $F/llama-base $F/llama-tuned --alpha 0.3 -o "$OUT/average-alpha" --dtype f32
cmd average-resized average $F/llama-base $F/llama-tied-resized --allow-missing -o "$OUT/average-resized"
cmd merge-ta merge --method task-arithmetic --base $F/llama-base $F/llama-tuned $F/llama-tied-resized --allow-missing --lambda 0.8 -o "$OUT/merge-ta"
cmd merge-ties merge --method ties --base $F/llama-base $F/llama-tuned --density 0.3 -o "$OUT/merge-ties"
cmd merge-dare merge --method dare --base $F/llama-base $F/llama-tuned --drop 0.5 --seed 1 -o "$OUT/merge-dare"
cmd merge-select merge --method select $F/llama-base $F/llama-tuned --probs 0.5,0.5 --seed 7 -o "$OUT/merge-select"
cmd merge-bad merge --method ties --base $F/llama-base $F/llama-tuned --drop 0.5 -o "$OUT/never"
if "$HFT" run --help >/dev/null 2>&1; then
    # A short run of the bundled recipe: the same stages, fewer steps.
    mkdir -p "$OUT/recipe"
    sed -E -e "s#\.\./fixtures#$ROOT/fixtures#" -e "s#data/#$ROOT/recipes/data/#" \
        -e "s#^output: .*#output: $OUT/run#" -e 's/steps: [0-9]+/steps: 12/' -e 's/log_every: 50/log_every: 4/' \
        recipes/tiny-continual.yaml >"$OUT/recipe/r.yaml"
    cmd run --threads 1 run "$OUT/recipe/r.yaml"
    cmd grid --threads 1 run "$OUT/recipe/r.yaml" --compare full,category --seeds 0,1 -o "$OUT/grid"
    for f in $(find "$OUT/run" "$OUT/grid" -name '*.json' -o -name '*.md'); do scrub <"$f" >"$f.s" && mv "$f.s" "$f"; done
fi
mv "$OUT" "$DEST"
echo "snapshot: $(find "$DEST" -type f | wc -l) files in $DEST"
