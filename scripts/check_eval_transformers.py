#!/usr/bin/env python3
"""Re-score a finished `hft run` with Hugging Face transformers and compare with hft's figures.

Why: the retention experiment's conclusions rest on hft's eval (greedy exact match, answer
log-probability, text loss) and on its checkpoints being the models it says. Here an independent
implementation loads every checkpoint the run wrote (and the recipe's model for the `before` row),
decodes greedily with `generate` (not the teacher-forced shortcut hft uses) and recomputes every
loss, on the same eval sets tokenised by the model's own tokenizer.

    bench/.venv/bin/python scripts/check_eval_transformers.py runs/smollm2-sft-dpo/full/lr=x1/seed-0

Per eval set it prints hft's and transformers' exact match and loss, and by how many examples the
two exact-match counts differ. Exits 1 when a loss differs by more than --tol (relative) or the
counts by more than --flips (a near-tie of two logits may flip between float orders), 2 when
something it needs is missing. Needs torch, transformers and PyYAML (CPU builds are enough).
"""

import argparse
import json
import os
import sys


def fail(msg, code=2):
    print(f"check_eval_transformers: {msg}", file=sys.stderr)
    sys.exit(code)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def eval_sets(recipe_path, quick):
    import yaml

    with open(recipe_path) as f:
        recipe = yaml.safe_load(f)
    sets = {e["name"]: dict(e) for e in recipe["eval"]}
    if quick:
        for e in recipe.get("quick", {}).get("eval", []):
            sets[e["name"]].update(e)
    root = os.path.dirname(os.path.abspath(recipe_path))
    out = {}
    for name, e in sets.items():
        rows = read_jsonl(os.path.join(root, e["path"]))
        if e.get("max_examples"):
            rows = rows[: e["max_examples"]]
        out[name] = (e.get("kind", "task"), rows)
    model = os.path.join(root, recipe["model"])
    return model, out


def encode(tok, eos, kind, r):
    """(token ids, prompt length, the target greedy decoding must give or None) as hft reads it."""
    if "text" in r:
        return tok(r["text"], add_special_tokens=False)["input_ids"] + [eos], 1, None
    p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
    a = tok(r["completion"], add_special_tokens=False)["input_ids"]
    # A task's completion ends the turn (EOS); a retention answer is followed by nothing.
    target = a + [eos] if kind == "task" else a
    return p + target, len(p), target


def score(model, tok, eos, kind, rows, batch=32):
    """(exact match or None, mean loss per scored token, per-example verdicts)."""
    import torch

    items = [encode(tok, eos, kind, r) for r in rows]
    nll_sum, tokens, verdicts = 0.0, 0, []
    for k in range(0, len(items), batch):
        chunk = items[k : k + batch]
        # The loss: right-padded sequences, every target after the prompt.
        n = max(len(ids) for ids, _, _ in chunk)
        x = torch.tensor([ids + [eos] * (n - len(ids)) for ids, _, _ in chunk])
        mask = torch.tensor([[1] * len(ids) + [0] * (n - len(ids)) for ids, _, _ in chunk])
        with torch.no_grad():
            logp = model(x, attention_mask=mask).logits.double().log_softmax(-1)
        for b, (ids, start, _) in enumerate(chunk):
            for i in range(start, len(ids)):
                nll_sum -= float(logp[b, i - 1, ids[i]])
                tokens += 1
        if chunk[0][2] is None:
            continue
        # Exact match: greedy decoding with `generate`, prompts left-padded.
        m = max(start for _, start, _ in chunk)
        x = torch.tensor([[eos] * (m - s) + ids[:s] for ids, s, _ in chunk])
        mask = torch.tensor([[0] * (m - s) + [1] * s for _, s, _ in chunk])
        with torch.no_grad():
            gen = model.generate(
                x,
                attention_mask=mask,
                max_new_tokens=max(len(t) for _, _, t in chunk),
                do_sample=False,
                pad_token_id=eos,
            )[:, m:].tolist()
        verdicts += [g[: len(t)] == t for g, (_, _, t) in zip(gen, chunk)]
    em = sum(verdicts) / len(verdicts) if verdicts else None
    return em, nll_sum / max(tokens, 1), verdicts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory of `hft run` (holds report.json)")
    ap.add_argument("--recipe", help="the recipe (default: the one report.json names)")
    ap.add_argument("--quick", action="store_true", help="the run was made with --quick")
    ap.add_argument("--tol", type=float, default=2e-3, help="relative loss tolerance")
    ap.add_argument("--flips", type=int, default=1, help="verdicts allowed to differ per set")
    ap.add_argument("--json", help="also write the comparison to this file")
    ap.add_argument("--only", help="comma-separated checkpoints to check (before, stage and "
                    "post names; default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        fail(f"needs torch and transformers ({e})")
    report_path = os.path.join(args.run, "report.json")
    if not os.path.isfile(report_path):
        fail(f"{report_path}: not found (is {args.run} a finished run?)")
    with open(report_path) as f:
        report = json.load(f)
    recipe = args.recipe or report["recipe"]
    if not os.path.isfile(recipe):
        fail(f"{recipe}: recipe not found; pass --recipe")
    model_dir, sets = eval_sets(recipe, args.quick)
    torch.set_num_threads(max(1, args.threads))
    rows = [("before", model_dir, report["before"])]
    rows += [(s["name"], os.path.join(args.run, s["checkpoint"]), s["scores"]) for s in report["stages"]]
    rows += [(p["name"], os.path.join(args.run, p["checkpoint"]), p["scores"]) for p in report.get("post", [])]
    if args.only:
        keep = args.only.split(",")
        unknown = [k for k in keep if k not in [r[0] for r in rows]]
        if unknown:
            fail(f"--only: no checkpoint named {', '.join(unknown)} in {report_path}")
        rows = [r for r in rows if r[0] in keep]
    tok = AutoTokenizer.from_pretrained(model_dir)
    bad, out = 0, []
    print(f"{'checkpoint':<28} {'eval set':<10} {'EM hft':>8} {'EM HF':>8} {'flips':>5} {'loss hft':>9} {'loss HF':>9}")
    for name, path, hft_scores in rows:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        eos = model.config.eos_token_id
        for set_name, (kind, examples) in sets.items():
            em, loss, verdicts = score(model, tok, eos, kind, examples)
            h = hft_scores[set_name]
            flips = 0 if em is None else round(abs(em - h["exact_match"]) * len(verdicts))
            rel = abs(loss - h["loss"]) / max(abs(h["loss"]), 1e-9)
            ok = rel <= args.tol and flips <= args.flips
            bad += not ok
            f = lambda v: "–" if v is None else f"{v:.4f}"
            print(f"{name:<28} {set_name:<10} {f(h['exact_match']):>8} {f(em):>8} {flips:>5} "
                  f"{h['loss']:>9.4f} {loss:>9.4f}{'' if ok else '  DIFFERS'}")
            out.append({"checkpoint": name, "set": set_name, "hft": h, "transformers":
                        {"exact_match": em, "loss": loss}, "ok": ok})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if bad:
        fail(f"{bad} comparisons differ beyond the tolerance", 1)
    print("every figure agrees")


if __name__ == "__main__":
    main()
