"""Writes a randomly initialised Llama-family checkpoint and a JSONL of random text for the GPU
training benchmark (bench/gpu/run.sh). Both sides of the benchmark (hft and PyTorch) start from
these same weights and train on these same token sequences.

    python3 bench/gpu/make_model.py SHAPE DIR --seq 512 --examples 256

SHAPE: smollm2 (the SmolLM2-135M shape), llama1b (a 1.1B Llama: the TinyLlama shape), tiny (for
checking the scripts on a CPU). DIR gets config.json, model.safetensors (BF16, as real
checkpoints are) and data.jsonl: `{"text": ...}` lines of seq-2 random ASCII letters, which
hft's `bytes` tokenizer turns into exactly seq tokens (BOS + bytes + EOS).
"""

import argparse
import json
import os
import random

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                    tie_word_embeddings=True, rope_theta=100000.0),
    "llama1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                    num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                    tie_word_embeddings=False, rope_theta=10000.0),
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                 tie_word_embeddings=False, rope_theta=10000.0),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("dir")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    cfg = LlamaConfig(**SHAPES[a.shape], max_position_embeddings=max(2048, a.seq),
                      rms_norm_eps=1e-5, bos_token_id=256, eos_token_id=257,
                      pad_token_id=258)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    os.makedirs(a.dir, exist_ok=True)
    model.save_pretrained(a.dir, safe_serialization=True)
    rng = random.Random(a.seed)
    letters = "abcdefghijklmnopqrstuvwxyz "
    with open(os.path.join(a.dir, "data.jsonl"), "w") as f:
        for _ in range(a.examples):
            f.write(json.dumps({"text": "".join(rng.choice(letters) for _ in range(a.seq - 2))}) + "\n")
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"shape": a.shape, "dir": a.dir, "parameters": n}))


if __name__ == "__main__":
    main()
