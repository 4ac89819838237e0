"""Largest difference between two checkpoints, in BF16 rounding steps (units in the last place),
and the fraction of elements that differ at all. Reads tensor by tensor.

Usage: python compare_bf16.py A B     (each a directory with *.safetensors, or a file)
"""
import glob
import os
import sys

import torch
from safetensors import safe_open


def files(path):
    if os.path.isfile(path):
        return [path]
    return sorted(glob.glob(os.path.join(path, "*.safetensors")))


def index(path):
    where = {}
    for f in files(path):
        with safe_open(f, "pt") as h:
            for k in h.keys():
                where[k] = f
    return where


def ordered(t):
    # BF16 bit patterns as integers that count representable values: adjacent BF16 values
    # differ by exactly one.
    i = t.contiguous().view(torch.int16).to(torch.int32)
    return torch.where(i < 0, -(i & 0x7FFF), i)


def main():
    a, b = index(sys.argv[1]), index(sys.argv[2])
    assert a.keys() == b.keys(), (sorted(a.keys() ^ b.keys()))[:5]
    worst, differ, total = 0, 0, 0
    for name in sorted(a):
        with safe_open(a[name], "pt") as fa, safe_open(b[name], "pt") as fb:
            ta, tb = fa.get_tensor(name), fb.get_tensor(name)
        assert ta.dtype == tb.dtype == torch.bfloat16 and ta.shape == tb.shape, name
        d = (ordered(ta) - ordered(tb)).abs()
        worst = max(worst, int(d.max()))
        differ += int((d > 0).sum())
        total += d.numel()
    print(f"max difference {worst} BF16 steps; {differ} of {total} elements differ ({100 * differ / total:.4f}%)")


if __name__ == "__main__":
    main()
