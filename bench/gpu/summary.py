"""Table of bench/gpu/run.sh's results.jsonl: per shape and strategy, hft and PyTorch side by
side, with hft/PyTorch (tokens/s) and category/full (s/step, memory) ratios."""

import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {(r["side"], r["label"]): r for r in rows}
labels = list(dict.fromkeys(r["label"] for r in rows))


def mem(r):
    if r is None:
        return None
    return r.get("smi_peak_mib") if r["side"] == "pytorch" and r.get("smi_peak_mib") is not None else r.get("peak_mib")


def f(v, d=1):
    return "–" if v is None else f"{v:.{d}f}"


print("| shape strategy | trainable (hft / torch) | hft tok/s | torch tok/s | hft/torch | hft s/step | torch s/step | hft peak MiB | torch peak MiB | loss first→last (hft; torch) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
for label in labels:
    h, t = by.get(("hft", label)), by.get(("pytorch", label))
    ratio = h["tokens_per_s"] / t["tokens_per_s"] if h and t else None
    same = "" if h and t and h["trainable"] == t["trainable"] else " (differ!)"
    print(f"| {label} | {h and h['trainable']:,} / {t and t['trainable']:,}{same} | {f(h and h['tokens_per_s'], 0)} | "
          f"{f(t and t['tokens_per_s'], 0)} | {f(ratio, 2)}x | {f(h and h['step_s'], 4)} | {f(t and t['step_s'], 4)} | "
          f"{f(mem(h), 0)} | {f(mem(t), 0)} | {f(h and h['loss_first'], 3)}→{f(h and h['loss_last'], 3)}; "
          f"{f(t and t['loss_first'], 3)}→{f(t and t['loss_last'], 3)} |")
print()
shapes = list(dict.fromkeys(label.rsplit(" ", 1)[0] for label in labels))
for side in ["hft", "pytorch"]:
    for s in shapes:
        full, cat = by.get((side, f"{s} full")), by.get((side, f"{s} category"))
        if full and cat:
            mf, mc = mem(full), mem(cat)
            mr = f"{mc / mf:.2f}x" if mf and mc else "–"
            print(f"- {side} {s}: category/full step time {cat['step_s'] / full['step_s']:.2f}x, memory {mr}")
print()
print("Peak memory: on a GPU, both sides from nvidia-smi polled every 100 ms (device memory in use "
      "minus what was in use before the run; PyTorch's own max_memory_allocated is in results.jsonl); "
      "on a CPU, each process's peak RSS. Losses: first and last training step (the two sides draw "
      "batches in a different order from the same data).")
