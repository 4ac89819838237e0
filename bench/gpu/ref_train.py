"""The PyTorch side of the GPU training benchmark: what a user would otherwise run. A
`transformers` LlamaForCausalLM loaded from the same checkpoint as hft (f32 master weights),
AdamW (torch's default implementation: foreach on CUDA), gradient clipping at 1.0, bf16 autocast,
the same token sequences and batch, and the same tensors frozen via `requires_grad` (from the
plan `hft plan --emit torch` writes, which is the plan `hft run` trains with).

    python3 bench/gpu/ref_train.py --model DIR --plan plan.py --steps 20 --batch 8 --seq 512

Prints one JSON line: tokens/s and s/step over the steps after --warmup, peak memory (CUDA:
torch.cuda.max_memory_allocated; CPU: peak RSS), first and last loss.
"""

import argparse
import importlib.util
import json
import resource
import time

import torch
from transformers import LlamaForCausalLM

BOS, EOS = 256, 257


def batches(path, batch, seq, device):
    rows = []
    with open(path) as f:
        for line in f:
            text = json.loads(line)["text"].encode()
            ids = [BOS, *text, EOS]
            if len(ids) != seq:
                raise SystemExit(f"{path}: a line gives {len(ids)} tokens, not --seq {seq}")
            rows.append(ids)
    i = 0
    while True:
        b = [rows[(i + k) % len(rows)] for k in range(batch)]
        i += batch
        yield torch.tensor(b, dtype=torch.long, device=device)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", help="default: MODEL/data.jsonl")
    ap.add_argument("--plan", help="a plan from `hft plan --emit torch` (default: train all)")
    ap.add_argument("--label", default="")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--attn", default="sdpa", help="transformers attn_implementation (sdpa, eager)")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    model = LlamaForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32,
                                             attn_implementation=a.attn).to(dev)
    model.train()
    partial = []
    if a.plan:
        spec = importlib.util.spec_from_file_location("hft_plan", a.plan)
        plan = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(plan)
        partial = plan.apply_hft_plan(model)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    data = batches(a.data or f"{a.model}/data.jsonl", a.batch, a.seq, dev)
    cuda = dev.type == "cuda"
    losses = []
    t0 = None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
        x = next(data)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    print(json.dumps({
        "side": "pytorch", "label": a.label, "device": str(dev), "precision": a.precision,
        "attn": a.attn, "batch": a.batch, "seq": a.seq, "steps": a.steps,
        "trainable": trainable, "total": total, "partial": len(partial),
        "step_s": secs / a.steps, "tokens_per_s": a.steps * a.batch * a.seq / secs,
        "peak_mib": peak, "peak_kind": "torch.cuda.max_memory_allocated" if cuda else "peak RSS",
        "loss_first": losses[0], "loss_last": losses[-1],
    }))


if __name__ == "__main__":
    main()
