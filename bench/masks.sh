#!/usr/bin/env bash
# Times element-level surgery against whole-tensor surgery on the benchmark pair (~1 GiB each):
# `hft reset --strategy element` against `--strategy category`, and `hft merge --method dare`
# against `--method task-arithmetic` (the same arithmetic without the random drop). The commands
# run interleaved, ROUNDS rounds (default 3), inputs in the page cache and the previous run's
# writeback flushed first; the medians and bests are printed. The disk speed of a shared
# machine moves from round to round, so compare medians of interleaved rounds.
#
#   bash bench/masks.sh            # ROUNDS; BENCH_DIMS / BENCH_VOCAB change the pair (bench/common.sh)
#
# Set HFT_OLD to another hft binary to time its element reset in the same rounds and to check
# that it writes the same values (the headers differ only in the command recorded).
source "$(dirname "$0")/common.sh"
build
make_pair

ROUNDS=${ROUNDS:-3}
RESET=(reset --base "$PAIR_A" --tuned "$PAIR_B" --ratio 0.5 --seed 7)
MERGE=(merge --base "$PAIR_A" "$PAIR_B" --seed 7)
declare -A CMD=(
  [reset-category]="$HFT ${RESET[*]} --strategy category"
  [reset-element]="$HFT ${RESET[*]} --strategy element"
  [merge-task-arithmetic]="$HFT ${MERGE[*]} --method task-arithmetic"
  [merge-dare]="$HFT ${MERGE[*]} --method dare --drop 0.9"
)
LABELS=(reset-category reset-element merge-task-arithmetic merge-dare)
if [ -n "${HFT_OLD:-}" ]; then
  CMD[reset-element-old]="$HFT_OLD ${RESET[*]} --strategy element"
  LABELS=(reset-category reset-element reset-element-old merge-task-arithmetic merge-dare)
fi

TIMES=$OUTDIR/masks-times.txt
: > "$TIMES"
for r in $(seq 1 "$ROUNDS"); do
  for label in "${LABELS[@]}"; do
    rm -rf "${OUTDIR:?}/masks-out"
    sync
    warm_cache "$PAIR_A" "$PAIR_B"
    # The paths contain no spaces (bench/common.sh), so word splitting rebuilds the command.
    # shellcheck disable=SC2086
    measure "$label-$r" ${CMD[$label]} -o "$OUTDIR/masks-out" -q > /dev/null
    echo "$label $SECS" >> "$TIMES"
  done
done
rm -rf "${OUTDIR:?}/masks-out"

awk '{ t[$1] = t[$1] " " $2 }
  function median(s,   a, n, i, j, x) {
    n = split(s, a, " ")
    for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
    BEST = a[1]
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    for (l in t) { m[l] = median(t[l]); b[l] = BEST; printf "%-24s median %6.2f s  best %6.2f s\n", l, m[l], b[l] }
    printf "element reset %.2fx the time of category reset (medians; bests %.2fx)\n",
      m["reset-element"] / m["reset-category"], b["reset-element"] / b["reset-category"]
    if ("reset-element-old" in m)
      printf "old element reset %.2fx (medians; bests %.2fx)\n",
        m["reset-element-old"] / m["reset-category"], b["reset-element-old"] / b["reset-category"]
    printf "dare %.2fx the time of task arithmetic (medians)\n", m["merge-dare"] / m["merge-task-arithmetic"]
  }' "$TIMES"

if [ -n "${HFT_OLD:-}" ]; then
  rm -rf "$OUTDIR/masks-new" "$OUTDIR/masks-old"
  "$HFT" "${RESET[@]}" --strategy element -o "$OUTDIR/masks-new" -q > /dev/null
  "$HFT_OLD" "${RESET[@]}" --strategy element -o "$OUTDIR/masks-old" -q > /dev/null
  venv
  echo "element reset against $HFT_OLD: $("$PY" "$ROOT/bench/compare_bf16.py" "$OUTDIR/masks-new" "$OUTDIR/masks-old")"
  rm -rf "$OUTDIR/masks-new" "$OUTDIR/masks-old"
fi
