#!/usr/bin/env bash
# Everything issue 7 measures, in ONE device call (docs/gpu.md describes the build and the run):
#   scripts/build-cuda.sh --target-dir target/cuda
#   mkdir -p .gpu && xz -T2 -6 -c target/cuda/release/hft > .gpu/hft.xz
#   then on the GPU machine, carrying .gpu/ (ignored by git):  bash bench/gpu/device.sh
#   (device tool: run(command="bash bench/gpu/device.sh", carry=[".gpu"], timeout_s=540))
# The binary runs through scripts/run-on-device.sh, with the device's own CUDA libraries.
# 1. The bundled tiny recipe (shortened) trains on the GPU with bf16 products; its checkpoints
#    are diffed on the CPU against the fixture model (they must load and diff cleanly).
# 2. bench/gpu/run.sh: hft against PyTorch, SmolLM2-135M and 1.1B Llama shapes, full and
#    category. Results land in $OUT (results.md, results.jsonl, logs); models stay in /tmp.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
HFT() { bash scripts/run-on-device.sh .gpu/hft.xz "$@"; }
{
  date -u
  HFT --version
  sed -e 's/steps: 1200/steps: 300/' -e 's#output: .*#output: /tmp/tiny-gpu#' \
    recipes/tiny-continual.yaml > recipes/tiny-gpu.yaml
  /usr/bin/time -v bash scripts/run-on-device.sh .gpu/hft.xz run recipes/tiny-gpu.yaml --device cuda \
    --precision bf16 --force > "$OUT/tiny-gpu-report.md"
  echo "tiny recipe on cuda: exit $?"
  cp /tmp/tiny-gpu/report.json "$OUT/tiny-gpu-report.json"
  HFT diff fixtures/tiny-llama /tmp/tiny-gpu/00-general --top 3
  HFT diff /tmp/tiny-gpu/00-general /tmp/tiny-gpu/01-facts --top 3
  echo "diff on the CPU of GPU-written checkpoints: exit $?"
  nvidia-smi
  OUT=/tmp/gpubench HFT_XZ=.gpu/hft.xz PYTHON=python3 bash bench/gpu/run.sh
  cp /tmp/gpubench/results.md /tmp/gpubench/results.jsonl "$OUT/"
  date -u
} 2>&1 | tee "$OUT/device.log"
