#!/usr/bin/env bash
# Times `hft diff` on a ~1 GiB BF16 Llama-shaped pair against (a) the safetensors + torch script
# a user would otherwise write (bench/ref_diff.py) and (b) reading both files once with dd, the
# I/O floor; all with a warm page cache, in one run. Usage: bash bench/diff.sh
source "$(dirname "$0")/common.sh"
build
venv
make_pair
echo "pair: $(du -sh "$PAIR_A" | cut -f1) + $(du -sh "$PAIR_B" | cut -f1), $(nproc) cores"
warm_cache "$PAIR_A" "$PAIR_B"

measure dd-floor bash -c "dd if=$PAIR_A/model.safetensors of=/dev/null bs=4M status=none && dd if=$PAIR_B/model.safetensors of=/dev/null bs=4M status=none"
DD=$SECS
measure hft-diff "$HFT" diff "$PAIR_A" "$PAIR_B" --format json
HFT_S=$SECS; HFT_RSS=$RSS_MB
measure python-torch-diff "$PY" "$ROOT/bench/ref_diff.py" "$PAIR_A" "$PAIR_B"
PY_S=$SECS; PY_RSS=$RSS_MB

# The two must agree on the headline figure.
"$PY" - "$OUTDIR/hft-diff.out" "$OUTDIR/python-torch-diff.out" <<'PYEOF'
import json, sys
h = json.load(open(sys.argv[1])); p = json.loads(open(sys.argv[2]).read())
a, b = h["total"]["rel_delta"], p["total_rel_delta"]
print(f"total rel_delta: hft {a:.6g}, python {b:.6g} (relative difference {abs(a-b)/b:.1e})")
assert abs(a - b) / b < 1e-3
PYEOF
awk -v h="$HFT_S" -v p="$PY_S" -v d="$DD" -v hr="$HFT_RSS" -v pr="$PY_RSS" 'BEGIN {
  printf "hft is %.1fx faster than the Python reference, %.2fx the dd read time; peak RSS %d MiB vs %d MiB\n", p/h, h/d, hr, pr }'
