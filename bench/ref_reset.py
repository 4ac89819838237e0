"""HFT half-reset as a user would write it with safetensors + torch: the paper's category rule
(per layer 2 of 4 attention matrices, 1 or 2 of 3 FFN matrices in alternate halves of the
layers, 1 of 2 norms) drawn with Python's random, reset tensors copied from BASE.

Usage: python ref_reset.py BASE_DIR TUNED_DIR SEED OUT_DIR
"""
import os
import random
import re
import sys

from safetensors.torch import load_file, save_file

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
FFN = ["gate_proj", "up_proj", "down_proj"]
NORMS = ["input_layernorm", "post_attention_layernorm"]


def main():
    base_dir, tuned_dir, seed, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)
    base = load_file(os.path.join(base_dir, "model.safetensors"))
    tuned = load_file(os.path.join(tuned_dir, "model.safetensors"))
    layers = sorted({int(m.group(1)) for n in tuned for m in [re.search(r"layers\.(\d+)\.", n)] if m})
    two_ffn_reset = set(rng.sample(layers, len(layers) // 2))
    reset = set()
    for l in layers:
        p = f"model.layers.{l}."
        reset |= {f"{p}self_attn.{m}.weight" for m in rng.sample(ATTN, 2)}
        reset |= {f"{p}mlp.{m}.weight" for m in rng.sample(FFN, 2 if l in two_ffn_reset else 1)}
        reset |= {f"{p}{m}.weight" for m in rng.sample(NORMS, 1)}
    result = {n: (base[n] if n in reset else t) for n, t in tuned.items()}
    n_reset = sum(base[n].numel() for n in reset)
    total = sum(t.numel() for t in tuned.values())
    print(f"reset {len(reset)} tensors, {100 * n_reset / total:.2f}% of parameters")
    os.makedirs(out, exist_ok=True)
    save_file(result, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
