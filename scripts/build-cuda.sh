#!/usr/bin/env bash
# Build hft with the `cuda` feature on a machine that has neither a GPU nor a CUDA toolkit.
#
#   scripts/build-cuda.sh [CARGO_ARGS...]      e.g. scripts/build-cuda.sh --target-dir target/cuda
#
# What it does (see docs/gpu.md):
#   1. installs NVIDIA's CUDA 13.0.2 toolkit wheels from PyPI (nvcc, headers, cudart, cuBLAS,
#      cuRAND, NVRTC) into a Python venv;
#   2. makes link stubs: unversioned `libX.so` names for the wheels' `libX.so.N`, and a
#      `libcuda.so` (SONAME libcuda.so.1) defining every `cu*` driver symbol cudarc may reference,
#      since the driver library is not on PyPI;
#   3. runs `cargo build --release --features cuda CARGO_ARGS...` against them.
# At run time the GPU machine's own CUDA libraries and driver are used (scripts/run-on-device.sh).
#
# Use a separate --target-dir: the RUSTFLAGS set here would otherwise rebuild the CPU build.
#
# Environment:
#   HFT_CUDA_VENV     venv for the toolkit wheels     (default /tmp/hft-cuda13-venv)
#   HFT_CUDA_STUBS    folder for the link stubs        (default /tmp/hft-cuda13-stubs)
#   CUDA_COMPUTE_CAP  GPU compute capability           (default 90: H100/H200, kernels for sm_90a)
#   PYTHON            interpreter that creates the venv (default python3)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv=${HFT_CUDA_VENV:-/tmp/hft-cuda13-venv}
stubs=${HFT_CUDA_STUBS:-/tmp/hft-cuda13-stubs}
python=${PYTHON:-python3}

# The toolkit matches the device's driver 580 (CUDA 13.0) and its PyTorch (cu130):
# nvcc 13.0.88, cudart 13.0.96, cuBLAS 13.1.0.3, cuRAND 10.4.0.35, NVRTC 13.0.88.
# nvcc must stay at 13.0.x: a newer one writes PTX that driver 580 cannot JIT-compile.
toolkit='cuda-toolkit[nvcc,crt,nvvm,cccl,cudart,cublas,curand,nvrtc]==13.0.2'

say() { echo "build-cuda: $*" >&2; }

# Prints the toolkit root inside the venv (the `nvidia/cu13` package folder).
install_toolkit() {
    # Only the toolkit root goes to stdout: everything else is sent to stderr.
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" >&2
    say "installing $toolkit into $venv"
    "$venv/bin/python" -m pip install --quiet "$toolkit" >&2
    local root
    root=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
    [ -x "$root/bin/nvcc" ] || { say "no nvcc under $root"; exit 1; }
    echo "$root"
}

# The source folder of the cudarc crate this build resolves to.
cudarc_dir() {
    cargo metadata --format-version 1 --features cuda |
        "$venv/bin/python" -c '
import json, os, sys
meta = json.load(sys.stdin)
dirs = [os.path.dirname(p["manifest_path"]) for p in meta["packages"] if p["name"] == "cudarc"]
if not dirs:
    sys.exit("cudarc is not in the dependency graph of --features cuda")
print(dirs[0])'
}

make_stubs() {
    local root=$1 lib name
    mkdir -p "$stubs"
    # -lcublas etc. look for libX.so; the wheels ship only libX.so.N.
    for lib in "$root"/lib/lib{cublas,cublasLt,curand,nvrtc,cudart}.so.*; do
        [ -e "$lib" ] || continue
        name=$(basename "$lib")
        ln -sf "$lib" "$stubs/${name%%.so.*}.so"
    done
    # libcuda comes with the driver, not with the toolkit: link against a stub that defines
    # every driver entry point cudarc declares. It is never loaded at run time.
    local src
    src=$(cudarc_dir)
    grep -ohP '^\s*(pub(\([a-z]+\))?\s+)?(unsafe\s+)?fn\s+\Kcu[A-Za-z0-9_]+(?=\s*\()' \
        "$src/src/driver/sys/mod.rs" | sort -u |
        sed 's/.*/int &(void) { return 999; }/' > "$stubs/libcuda_stub.c"
    local n
    n=$(wc -l < "$stubs/libcuda_stub.c")
    [ "$n" -gt 0 ] || { say "found no cu* functions in $src/src/driver/sys/mod.rs"; exit 1; }
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"
    say "libcuda stub with $n symbols in $stubs"
}

root=$(install_toolkit)
make_stubs "$root"

export PATH="$root/bin:$PATH"            # nvcc, for the kernel build and cudarc's version check
export CUDA_HOME="$root"                 # headers and $CUDA_HOME/lib for linking
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}  # no nvidia-smi here; 90 builds sm_90a kernels
export CUDARC_CUDA_VERSION=13000         # cudarc's bindings for the CUDA 13.0 API
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$stubs"
nvcc --version | tail -n 2
say "cargo build --release --features cuda $*"
cargo build --release --features cuda "$@"
