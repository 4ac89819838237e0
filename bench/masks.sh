#!/usr/bin/env bash
# Times element-level surgery against whole-tensor surgery on the benchmark pair (~1 GiB each):
# `hft reset --strategy element` against `--strategy category`, and `hft merge --method dare`
# against `--method task-arithmetic` (the same arithmetic without the random drop). Three runs
# each, inputs in the page cache, the previous run's writeback flushed first.
#
#   bash bench/masks.sh            # BENCH_DIMS / BENCH_VOCAB change the pair (bench/common.sh)
#
# Set HFT_OLD to another hft binary to check that its element reset writes the same values
# (the headers differ only in the command recorded).
source "$(dirname "$0")/common.sh"
build
make_pair

settle() {
  sync
  warm_cache "$PAIR_A" "$PAIR_B"
}
best() { # best LABEL CMD...: the fastest of three runs in BEST
  BEST=
  for i in 1 2 3; do
    rm -rf "${OUTDIR:?}/masks-out"
    settle
    measure "$1-$i" "${@:2}" -o "$OUTDIR/masks-out" -q > /dev/null
    if [ -z "$BEST" ] || awk -v a="$SECS" -v b="$BEST" 'BEGIN { exit !(a < b) }'; then BEST=$SECS; fi
  done
  printf '%-24s best of 3: %6.2f s\n' "$1" "$BEST"
}
RESET=(reset --base "$PAIR_A" --tuned "$PAIR_B" --ratio 0.5 --seed 7)
best reset-category "$HFT" "${RESET[@]}" --strategy category; CAT=$BEST
best reset-element "$HFT" "${RESET[@]}" --strategy element; ELEM=$BEST
MERGE=(merge --base "$PAIR_A" "$PAIR_B" --seed 7)
best merge-task-arithmetic "$HFT" "${MERGE[@]}" --method task-arithmetic; TA=$BEST
best merge-dare "$HFT" "${MERGE[@]}" --method dare --drop 0.9; DARE=$BEST
awk -v c="$CAT" -v e="$ELEM" -v t="$TA" -v d="$DARE" 'BEGIN {
  printf "element reset %.2fx the time of category reset; dare %.2fx the time of task arithmetic\n", e/c, d/t }'

if [ -n "${HFT_OLD:-}" ]; then
  rm -rf "$OUTDIR/masks-new" "$OUTDIR/masks-old"
  "$HFT" "${RESET[@]}" --strategy element -o "$OUTDIR/masks-new" -q > /dev/null
  "$HFT_OLD" "${RESET[@]}" --strategy element -o "$OUTDIR/masks-old" -q > /dev/null
  venv
  echo "element reset against $HFT_OLD: $("$PY" "$ROOT/bench/compare_bf16.py" "$OUTDIR/masks-new" "$OUTDIR/masks-old")"
  rm -rf "$OUTDIR/masks-new" "$OUTDIR/masks-old"
fi
rm -rf "${OUTDIR:?}/masks-out"
