#!/usr/bin/env python3
"""Check hft's mixture-of-experts layouts against transformers' own models.

Why: `hft plan config.json` computes every tensor name and shape of Mixtral, Qwen2-MoE, Qwen3-MoE
and DeepSeek-V2/V3 from the config alone, and the committed MoE fixtures are written from that
computation. Here transformers builds each model from the same config and saves it; the saved
checkpoint must carry exactly hft's names and shapes (compared through the plan's `model.hash`,
FNV-1a over every `name:shape`, and the plan's tensor list), and transformers must load every
fixture, and hft's reset, average and TIES merge of each fixture pair, without a missing or
unexpected tensor and with finite logits. The average is recomputed in torch. Last, each
fixture's category plan exported with `--emit torch` is applied to transformers' model (whose
experts are fused 3-d parameters in transformers 5), one AdamW step is taken and the model is
saved: every tensor the plan freezes (and every frozen row of `kv_b_proj`) must come back bit
for bit, every tensor it trains must have moved.

    bench/.venv/bin/python scripts/check_moe_layouts.py [--hft target/release/hft]

Exits 1 on a difference, 2 when something it needs is missing. Needs torch, transformers,
safetensors and PyYAML (CPU builds are enough).
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile

FIXTURES = ["mixtral", "qwen2-moe", "qwen3-moe", "deepseek-v3"]


def fail(msg, code=2):
    print(f"check_moe_layouts: {msg}", file=sys.stderr)
    sys.exit(code)


def variants():
    """The fixtures' configs and a few more the fixtures do not cover."""
    out = []
    for f in FIXTURES:
        with open(os.path.join("fixtures", f + "-base", "config.json")) as fh:
            out.append((f, json.load(fh)))
    base = dict(out)
    q2 = copy.deepcopy(base["qwen2-moe"])
    q2.update({"decoder_sparse_step": 2, "mlp_only_layers": [], "num_hidden_layers": 4})
    out.append(("qwen2-moe sparse step 2", q2))
    q3 = copy.deepcopy(base["qwen3-moe"])
    q3.update({"mlp_only_layers": [1]})
    out.append(("qwen3-moe mlp_only_layers [1]", q3))
    v2 = copy.deepcopy(base["deepseek-v3"])
    v2.update({
        "model_type": "deepseek_v2",
        "architectures": ["DeepseekV2ForCausalLM"],
        "q_lora_rank": None,
        "first_k_dense_replace": 2,
        "num_hidden_layers": 4,
        "topk_method": "greedy",
    })
    out.append(("deepseek-v2 without q_lora_rank", v2))
    return out


def plan(hft, model, out):
    r = subprocess.run(
        [hft, "-q", "plan", model, "--strategy", "category", "--seed", "1", "-o", out],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        fail(f"hft plan {model}: {r.stderr.strip()}", 1)
    import yaml

    with open(out) as f:
        return yaml.safe_load(f)


def load_and_run(path, torch, AutoModelForCausalLM):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    logits = model(torch.tensor([[1, 2, 3, 4, 5]])).logits
    return model, bad, bool(torch.isfinite(logits).all())


def replay_torch_export(hft, f, tmp, torch, AutoModelForCausalLM, load_file):
    """Trains one step under the plan's torch export; returns the number of failures."""
    base = f"fixtures/{f}-base"
    code = subprocess.run(
        [hft, "-q", "plan", base, "--seed", "9", "--emit", "torch"], capture_output=True, text=True
    )
    if code.returncode != 0:
        fail(f"hft plan --emit torch: {code.stderr.strip()}", 1)
    ns = {}
    exec(code.stdout, ns)
    plan = ns["PLAN"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    partial = ns["apply_hft_plan"](model)
    opt = torch.optim.AdamW(ns["hft_param_groups"](model, partial, 0.1), lr=1e-2)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    out = os.path.join(tmp, f + "-stepped")
    model.save_pretrained(out)
    before = load_file(os.path.join(base, "model.safetensors"))
    after = load_file(os.path.join(out, "model.safetensors"))
    bad = []
    for name, entry in plan.items():
        a, b = before[name].float(), after[name].float()
        if entry == "freeze":
            ok = torch.equal(a, b)
        elif entry == "train":
            ok = not torch.equal(a, b)
        elif entry[0] == "rows":
            _, axis, rows = entry
            keep = torch.zeros(a.shape[axis], dtype=torch.bool)
            for lo, hi in rows:
                keep[lo:hi] = True
            frozen_same = torch.equal(a[~keep], b[~keep])
            ok = frozen_same and not torch.equal(a[keep], b[keep])
        else:
            ok = False
        if not ok:
            bad.append(name)
    fused = sum(1 for n, _ in model.named_parameters() if n.endswith("experts.gate_up_proj"))
    print(
        f"{f:12} torch export, one AdamW step: {len(plan) - len(bad)} of {len(plan)} tensors as the "
        f"plan says ({fused} fused expert parameters, {len(partial)} trained in part)"
        + (f"; wrong: {bad[:4]}" if bad else "")
    )
    return int(bool(bad))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hft", default="target/release/hft")
    args = ap.parse_args()
    try:
        import torch
        import transformers
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        fail(f"needs torch, transformers and safetensors ({e})")
    if not os.path.exists(args.hft):
        fail(f"{args.hft} not found; build it with `cargo build --release`")
    transformers.logging.set_verbosity_error()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, cfg) in enumerate(variants()):
            cdir = os.path.join(tmp, f"cfg{i}")
            tdir = os.path.join(tmp, f"tf{i}")
            os.makedirs(cdir)
            with open(os.path.join(cdir, "config.json"), "w") as f:
                json.dump(cfg, f)
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cdir))
            model.save_pretrained(tdir)
            ours = plan(args.hft, os.path.join(cdir, "config.json"), os.path.join(tmp, f"a{i}.yaml"))
            theirs = plan(args.hft, tdir, os.path.join(tmp, f"b{i}.yaml"))
            same = ours["model"] == theirs["model"] and ours["tensors"] == theirs["tensors"]
            failed += not same
            print(
                f"{label:34} {ours['model']['tensors']:4} tensors  config-only plan "
                f"{'=' if same else '!='} transformers' checkpoint ({ours['model']['hash']})"
            )
        for f in FIXTURES:
            base, tuned = f"fixtures/{f}-base", f"fixtures/{f}-tuned"
            outs = {
                "fixture": base,
                "reset": os.path.join(tmp, f + "-reset"),
                "average": os.path.join(tmp, f + "-avg"),
                "ties": os.path.join(tmp, f + "-ties"),
            }
            cmds = [
                ["reset", "--base", base, "--tuned", tuned, "--strategy", "category", "-o", outs["reset"]],
                ["average", base, tuned, "-o", outs["average"]],
                ["merge", tuned, "--base", base, "--method", "ties", "--density", "0.5", "-o", outs["ties"]],
            ]
            for c in cmds:
                r = subprocess.run([args.hft, "-q", *c], capture_output=True, text=True)
                if r.returncode != 0:
                    fail(f"hft {' '.join(c)}: {r.stderr.strip()}", 1)
            for what, path in outs.items():
                _, bad, finite = load_and_run(path, torch, AutoModelForCausalLM)
                ok = not bad and finite
                failed += not ok
                print(f"{f:12} {what:8} transformers loads it: {'yes' if not bad else bad}, finite logits: {finite}")
            a = load_file(os.path.join(base, "model.safetensors"))
            b = load_file(os.path.join(tuned, "model.safetensors"))
            avg = load_file(os.path.join(outs["average"], "model.safetensors"))
            worst = max(
                (((a[k].float() + b[k].float()) / 2).to(a[k].dtype).float() - avg[k].float()).abs().max().item()
                for k in a
            )
            failed += worst != 0
            print(f"{f:12} average  equals torch's (a + b) / 2 in bf16: max difference {worst}")
        for f in FIXTURES:
            failed += replay_torch_export(args.hft, f, tmp, torch, AutoModelForCausalLM, load_file)
    if failed:
        print(f"{failed} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
