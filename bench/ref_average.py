"""The average a user would write with safetensors + torch: (1-a)*A + a*B, in f32, saved as BF16.

Usage: python ref_average.py A_DIR B_DIR ALPHA OUT_DIR
"""
import os
import sys

import torch
from safetensors.torch import load_file, save_file


def main():
    a_dir, b_dir, alpha, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    a = load_file(os.path.join(a_dir, "model.safetensors"))
    b = load_file(os.path.join(b_dir, "model.safetensors"))
    result = {}
    for name, ta in a.items():
        tb = b[name]
        result[name] = ((1 - alpha) * ta.float() + alpha * tb.float()).to(ta.dtype)
    os.makedirs(out, exist_ok=True)
    save_file(result, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
