#!/usr/bin/env python3
"""Makes the mergekit golden outputs that tests/hft/mergekit.rs compares `hft merge --config` with.

    bench/.venv/bin/python scripts/make-mergekit-golden.py      # needs mergekit==0.1.5 there

Inputs: three small Llama checkpoints (BF16) written by hft's own generator, a base and two
fine-tunes of it:

    synth llama DIR --dims 32,2,2,1,64 --vocab 128 --seed 11 [--tune 12 | --tune 13]

(the test writes the same three through `hft::fixtures::synth::write_model` and checks their
CRC-32 against `manifest.json` first). For every config `fixtures/mergekit/*.yml` ($BASE,
$TUNED_A and $TUNED_B stand for the three paths) this runs `mergekit-yaml` on the CPU and keeps
its `model.safetensors` as `fixtures/mergekit/NAME.safetensors`. `manifest.json` records the
versions, the commands and the CRC-32 of inputs and outputs. Deterministic for the TIES and task-arithmetic
configs; the DARE config is drawn with `--random-seed 0` (torch's generator).
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN = os.path.join(ROOT, "fixtures", "mergekit")
SYNTH = ["--dims", "32,2,2,1,64", "--vocab", "128", "--seed", "11"]
INPUTS = {"BASE": [], "TUNED_A": ["--tune", "12"], "TUNED_B": ["--tune", "13"]}
MERGEKIT = "0.1.5"


def crc32(path):
    with open(path, "rb") as f:
        return zlib.crc32(f.read())


def main():
    import mergekit  # noqa: F401  (fails early when mergekit is missing)
    import torch
    from importlib.metadata import version

    if version("mergekit") != MERGEKIT:
        sys.exit(f"mergekit {version('mergekit')} found; the goldens are made with {MERGEKIT}")
    bindir = os.path.dirname(sys.executable)
    mk = os.path.join(bindir, "mergekit-yaml")
    tmp = tempfile.mkdtemp(prefix="hft-mk-")
    try:
        paths = {}
        for name, extra in INPUTS.items():
            out = os.path.join(tmp, name.lower())
            subprocess.run(
                ["cargo", "run", "-q", "--release", "--no-default-features", "--features",
                 "fixtures", "--example", "synth", "--", "llama", out, *SYNTH, *extra],
                cwd=ROOT, check=True)
            paths[name] = out
        manifest = {
            "mergekit": MERGEKIT,
            "torch": torch.__version__,
            "synth": "synth llama DIR " + " ".join(SYNTH) + " [--tune 12 | --tune 13]",
            "inputs": {k: crc32(os.path.join(v, "model.safetensors")) for k, v in paths.items()},
            "outputs": {},
        }
        for cfg in sorted(glob.glob(os.path.join(GOLDEN, "*.yml"))):
            name = os.path.splitext(os.path.basename(cfg))[0]
            text = open(cfg).read()
            for k, v in paths.items():
                text = text.replace(f"${k}", v)
            local = os.path.join(tmp, f"{name}.yml")
            with open(local, "w") as f:
                f.write(text)
            out = os.path.join(tmp, f"out-{name}")
            cmd = [mk, local, out, "--no-copy-tokenizer", "--random-seed", "0"]
            subprocess.run(cmd, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
            shards = sorted(glob.glob(os.path.join(out, "*.safetensors")))
            if len(shards) != 1:
                sys.exit(f"{name}: expected one safetensors file, got {shards}")
            dest = os.path.join(GOLDEN, f"{name}.safetensors")
            shutil.copyfile(shards[0], dest)
            manifest["outputs"][name] = {
                "command": "mergekit-yaml CONFIG OUT --no-copy-tokenizer --random-seed 0",
                "crc32": crc32(dest),
            }
            print(f"{name}: {os.path.getsize(dest)} bytes")
        with open(os.path.join(GOLDEN, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
