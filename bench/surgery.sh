#!/usr/bin/env bash
# Times `hft average --alpha 0.5` against mergekit's `linear` merge and a plain safetensors +
# torch script (bench/ref_average.py), and `hft reset` (category rule) against a torch script
# (bench/ref_reset.py), on the ~1 GiB BF16 Llama-shaped pair of bench/common.sh, all with a warm
# page cache and no dirty pages left by the previous run, in one run; then the largest difference
# of the averages in BF16 rounding steps. hft fsyncs its output before renaming it into place; the
# others do not sync, so the comparison favours them slightly.
# mergekit is installed into the benchmark venv only. Usage: bash bench/surgery.sh
source "$(dirname "$0")/common.sh"
build
venv
if [ ! -x "$VENV/bin/mergekit-yaml" ]; then
  "$VENV/bin/pip" install -q mergekit
fi
make_pair
echo "pair: $(du -sh "$PAIR_A" | cut -f1) + $(du -sh "$PAIR_B" | cut -f1), $(nproc) cores"

MK_CFG=$OUTDIR/mergekit-linear.yml
cat > "$MK_CFG" <<YAML
merge_method: linear
models:
  - model: $PAIR_A
    parameters: {weight: 0.5}
  - model: $PAIR_B
    parameters: {weight: 0.5}
dtype: bfloat16
YAML
# Before each run: flush the previous run's dirty pages (so no tool pays for another's
# writeback) and warm the page cache with the inputs.
settle() {
  sync
  warm_cache "$PAIR_A" "$PAIR_B"
}
for d in avg-hft avg-mergekit avg-torch reset-hft reset-torch; do rm -rf "${OUTDIR:?}/$d"; done

settle
measure hft-average "$HFT" average "$PAIR_A" "$PAIR_B" --alpha 0.5 -o "$OUTDIR/avg-hft"
AVG_S=$SECS; AVG_RSS=$RSS_MB
settle
measure mergekit-linear "$VENV/bin/mergekit-yaml" "$MK_CFG" "$OUTDIR/avg-mergekit" --no-copy-tokenizer
MK_S=$SECS; MK_RSS=$RSS_MB
settle
measure python-torch-average "$PY" "$ROOT/bench/ref_average.py" "$PAIR_A" "$PAIR_B" 0.5 "$OUTDIR/avg-torch"
PYA_S=$SECS; PYA_RSS=$RSS_MB
settle
measure hft-reset "$HFT" reset --base "$PAIR_A" --tuned "$PAIR_B" --strategy category --ratio 0.5 --seed 7 -o "$OUTDIR/reset-hft"
RS_S=$SECS; RS_RSS=$RSS_MB
settle
measure python-torch-reset "$PY" "$ROOT/bench/ref_reset.py" "$PAIR_A" "$PAIR_B" 7 "$OUTDIR/reset-torch"
PYR_S=$SECS; PYR_RSS=$RSS_MB

grep '^total' "$OUTDIR/hft-reset.out" | sed 's/^/hft reset: /'
sed 's/^/torch reset: /' "$OUTDIR/python-torch-reset.out"
echo "hft average vs mergekit linear: $("$PY" "$ROOT/bench/compare_bf16.py" "$OUTDIR/avg-hft" "$OUTDIR/avg-mergekit")"
echo "hft average vs torch script:    $("$PY" "$ROOT/bench/compare_bf16.py" "$OUTDIR/avg-hft" "$OUTDIR/avg-torch")"
awk -v h="$AVG_S" -v m="$MK_S" -v p="$PYA_S" -v hr="$AVG_RSS" -v mr="$MK_RSS" -v pr="$PYA_RSS" \
    -v r="$RS_S" -v q="$PYR_S" -v rr="$RS_RSS" -v qr="$PYR_RSS" 'BEGIN {
  printf "average: hft %.1fx faster than mergekit, %.1fx faster than torch; peak RSS %d MiB vs %d (mergekit), %d (torch)\n", m/h, p/h, hr, mr, pr
  printf "reset:   hft %.1fx faster than torch; peak RSS %d MiB vs %d MiB\n", q/r, rr, qr }'
