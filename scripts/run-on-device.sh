#!/usr/bin/env bash
# Run a CUDA build of hft on the GPU machine, against that machine's own CUDA 13 libraries.
#
#   bash scripts/run-on-device.sh BINARY[.xz] HFT_ARGS...
#   e.g. bash scripts/run-on-device.sh .gpu/hft.xz run recipes/tiny-continual.yaml --device cuda
#
# BINARY is the output of scripts/build-cuda.sh, usually packed with xz (the CUDA build is ~50 MB,
# mostly PTX text; xz makes it about ten times smaller) into the ignored folder .gpu/ that the
# device call carries (see docs/gpu.md). A packed or non-executable binary is unpacked or copied
# to /tmp first. The libraries come from the NVIDIA packages installed next to the device's
# PyTorch (python3 there); the driver's libcuda.so.1 is found by the loader as usual.
set -u

[ $# -ge 1 ] || { echo "usage: $0 BINARY[.xz] HFT_ARGS..." >&2; exit 2; }
bin=$1
shift

case $bin in
*.xz)
    xz -dc "$bin" > /tmp/hft-cuda || { echo "run-on-device: cannot unpack $bin" >&2; exit 1; }
    bin=/tmp/hft-cuda
    ;;
esac
if [ ! -x "$bin" ]; then
    cp "$bin" /tmp/hft-cuda-bin || exit 1
    bin=/tmp/hft-cuda-bin
fi
chmod +x "$bin" 2>/dev/null

# Every lib/ folder of the `nvidia` namespace package (nvidia/cu13/lib, nvidia/cublas/lib, ...).
nvidia_root=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
libdirs=
if [ -n "$nvidia_root" ] && [ -d "$nvidia_root" ]; then
    libdirs=$(find "$nvidia_root" -mindepth 2 -maxdepth 2 -type d -name lib | sort | paste -sd: -)
fi
if [ -z "$libdirs" ]; then
    echo "run-on-device: no NVIDIA library packages found for python3 (is PyTorch with CUDA installed?)" >&2
    exit 1
fi
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ldd "$bin" | grep -q 'not found'; then
    ldd "$bin"
    echo "run-on-device: shared libraries missing (above)" >&2
    exit 1
fi
exec "$bin" "$@"
