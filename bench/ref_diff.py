"""The script a user would otherwise write for `hft diff`: per-tensor change figures between two
safetensors checkpoints with safetensors + torch (float32 math, torch's own threads), aggregated
per layer and in total from sums of squares. Prints a JSON summary."""
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open


def files(path):
    p = Path(path)
    if p.is_dir():
        idx = p / "model.safetensors.index.json"
        if idx.exists():
            wm = json.loads(idx.read_text())["weight_map"]
            return {n: p / f for n, f in wm.items()}
        p = p / "model.safetensors"
    with safe_open(p, "pt") as f:
        return {n: p for n in f.keys()}


def main(a, b):
    fa, fb = files(a), files(b)
    layer_re = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
    per_tensor = {}
    layers = defaultdict(lambda: [0.0, 0.0])
    tot = [0.0, 0.0]
    handles = {}

    def get(m, name):
        path = m[name]
        if path not in handles:
            handles[path] = safe_open(path, "pt")
        return handles[path].get_tensor(name)

    for name in sorted(set(fa) & set(fb)):
        x = get(fa, name).float()
        y = get(fb, name).float()
        d = y - x
        la, lb, ld = x.norm().item(), y.norm().item(), d.norm().item()
        per_tensor[name] = {
            "l2_a": la,
            "l2_b": lb,
            "l2_delta": ld,
            "rel_delta": ld / la if la > 0 else None,
            "cosine": (torch.dot(x.flatten(), y.flatten()).item() / (la * lb)) if la > 0 and lb > 0 else None,
            "max_abs_delta": d.abs().max().item(),
            "mean_abs_delta": d.abs().mean().item(),
            "changed_frac": (x != y).float().mean().item(),
        }
        m = layer_re.search(name)
        if m:
            acc = layers[int(m.group(1))]
            acc[0] += la * la
            acc[1] += ld * ld
        tot[0] += la * la
        tot[1] += ld * ld
    out = {
        "tensors": len(per_tensor),
        "total_rel_delta": (tot[1] ** 0.5) / (tot[0] ** 0.5),
        "layers": {k: (v[1] ** 0.5) / (v[0] ** 0.5) for k, v in sorted(layers.items())},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
