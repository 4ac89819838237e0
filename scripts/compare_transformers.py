#!/usr/bin/env python3
"""Compare hft's forward pass with transformers' on an imported (or any Llama) checkpoint.

Why: hft trains with its own Llama implementation; agreement with an independent one is the
evidence that a checkpoint `hft import` wrote computes what the original model computes.

    python scripts/compare_transformers.py models/smollm2-135m
    python scripts/compare_transformers.py models/smollm2-135m --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf

Runs `hft logits DIR --prompt ... -o FILE` (hft's tokens and logits for every position), then
loads DIR with transformers (CPU, float32) and feeds it the same token ids. Reports, per prompt,
whether transformers' tokenizer (of DIR and, with --gguf, of the GGUF) gives the same ids, the maximum absolute logit difference, and
whether the greedy next tokens agree. With --gguf, transformers also loads the GGUF file itself
(its own dequantisation and Q/K un-permutation; needs the `gguf` package) as a second reference.
Exits 1 when a difference exceeds --tol, 2 when something it needs is missing.

Needs: torch, transformers, safetensors, numpy (CPU builds are enough).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

PROMPTS = [
    "The capital of France is",
    "Water boils at 100 degrees Celsius, and ice melts at",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "<|im_start|>user\nWhat is 12 plus 30?<|im_end|>\n<|im_start|>assistant\n",
]


def find_hft(explicit):
    if explicit:
        return explicit
    if os.environ.get("HFT_BIN"):
        return os.environ["HFT_BIN"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for d in (os.environ.get("CARGO_TARGET_DIR"), os.path.join(root, "target")):
        if not d:
            continue
        for profile in ("release", "debug"):
            p = os.path.join(d, profile, "hft")
            if os.access(p, os.X_OK):
                return p
    return shutil.which("hft")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="checkpoint directory (config.json, safetensors, tokenizer.json)")
    ap.add_argument("--hft", help="path of the hft binary (default: $HFT_BIN, target/*/hft, PATH)")
    ap.add_argument("--prompt", action="append", help="a prompt (repeatable; default: four built in)")
    ap.add_argument("--gguf", help="also compare with transformers loading this GGUF file")
    ap.add_argument("--tol", type=float, default=2e-3, help="largest allowed |logit difference|")
    a = ap.parse_args()

    try:
        import numpy as np
        import torch
        from safetensors.numpy import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        print(f"compare_transformers: missing Python package ({e}); pip install torch transformers safetensors numpy", file=sys.stderr)
        return 2
    hft = find_hft(a.hft)
    if not hft:
        print("compare_transformers: no hft binary found (build it, or pass --hft / set HFT_BIN)", file=sys.stderr)
        return 2
    prompts = a.prompt or PROMPTS

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.safetensors")
        cmd = [hft, "logits", a.model, "-o", out]
        for p in prompts:
            cmd += ["--prompt", p]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"compare_transformers: {' '.join(cmd[:3])} failed:\n{r.stderr}", file=sys.stderr)
            return 2
        ours = load_file(out)

    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(a.model)
    refs = [("transformers(dir)", model)]
    toks = [tok]
    if a.gguf:
        gdir, gname = os.path.split(os.path.abspath(a.gguf))
        try:
            gm = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32).eval()
        except Exception as e:  # the optional `gguf` package, or an unsupported file
            print(f"compare_transformers: transformers cannot load {a.gguf}: {e}", file=sys.stderr)
            return 2
        refs.append(("transformers(gguf)", gm))
        # transformers' own tokenizer conversion from the GGUF: an independent check of the
        # tokenizer.json hft wrote.
        toks.append(AutoTokenizer.from_pretrained(gdir, gguf_file=gname))

    worst = {name: 0.0 for name, _ in refs}
    ok = True
    print(f"{'prompt':<34} {'tokens':>6} {'same ids':>8} " + " ".join(f"{n + ' maxdiff':>26} {'argmax':>6}" for n, _ in refs))
    for i, p in enumerate(prompts):
        ids = ours[f"tokens.{i}"].astype(np.int64)
        hl = ours[f"logits.{i}"]
        same = all(list(t(p, add_special_tokens=False)["input_ids"]) == ids.tolist() for t in toks)
        ok &= same
        cols = []
        for name, m in refs:
            tl = m(input_ids=torch.from_numpy(ids)[None]).logits[0].float().numpy()
            d = float(np.abs(tl - hl).max())
            agree = float((tl.argmax(-1) == hl.argmax(-1)).mean())
            worst[name] = max(worst[name], d)
            cols.append(f"{d:>26.3e} {agree:>6.0%}")
        label = p.replace("\n", "\\n")
        label = label if len(label) <= 34 else label[:31] + "..."
        print(f"{label:<34} {len(ids):>6} {str(same):>8} " + " ".join(cols))
    for name, d in worst.items():
        print(f"max |logit difference| hft vs {name}: {d:.3e} (tolerance {a.tol:g})")
        ok &= d <= a.tol
    if not ok:
        print("compare_transformers: MISMATCH", file=sys.stderr)
        return 1
    print("compare_transformers: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
