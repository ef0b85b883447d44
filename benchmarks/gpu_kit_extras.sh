#!/usr/bin/env bash
# Adds to .gpu-kit/ (made by ../shared/tools/gpu-kit.sh) what bench_gpu.py reads beyond it:
# pets37, its source photos (mixed sizes, as real folders have), and nvImageCodec with nvJPEG
# and TorchCodec for its `decoders` part (the device decoder's candidates), as .gpu-kit/extra.tar.xz: only
# what decoding JPEGs with Python 3.12 loads (its CPU, nvJPEG and libjpeg-turbo backends).
#
#   PYTHON=.venv/bin/python bash ../shared/tools/gpu-kit.sh && bash benchmarks/gpu_kit_extras.sh  # here
#   on the device (carry [".gpu-kit"]):
#     source .gpu-kit/setup.sh && tar -xJf .gpu-kit/extra.tar.xz -C /tmp/site && python3 benchmarks/bench_gpu.py
#
# What travels is capped at 64 MiB: this prints the kit's size.
set -eu
root=$(git rev-parse --show-toplevel); cd "$root"
[ -f .gpu-kit/setup.sh ] || { echo "no .gpu-kit/setup.sh: run bash ../shared/tools/gpu-kit.sh first" >&2; exit 1; }
if [ ! -d .gpu-kit/pets37 ]; then
  [ -d ../shared/datasets/pets37 ] || { echo "../shared/datasets/pets37 is missing" >&2; exit 1; }
  cp -r ../shared/datasets/pets37 .gpu-kit/
fi
# flowers12 (made by gpu-kit.sh) leaves room under the cap: pets37 serves the tests' JPEGs too
# (tests/test_gpu.py `_jpegs`) and bench_gpu.py's images
rm -rf .gpu-kit/flowers12
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
plat="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps $plat -d "$tmp/whl" "nvidia-nvimgcodec-cu13" "nvidia-nvjpeg>=13" \
  "torchcodec==$(sed -n 's/^torchcodec==//p' constraints/ci.txt)" 2>&1 | grep -v "is ignored" || true
mkdir -p "$tmp/site"
for w in "$tmp"/whl/*.whl; do
  # nvImageCodec's nvidia/__init__.py extends nvidia's path: the machine's own nvidia.* stay visible
  python3 -m zipfile -e "$w" "$tmp/site"
done
n="$tmp/site/nvidia/nvimgcodec"
find "$n" -name 'nvimgcodec_impl.cpython-*.so' ! -name '*cpython-312-*' -delete
rm -rf "$n/tools" "$n/include" "$tmp/site/nvidia/cu13/include" "$tmp"/site/*.dist-info
rm -f "$n"/extensions/lib{opencv,tiff,nvtiff,nvjpeg2k,nvbmp,nvpnm}_ext.so.*
# TorchCodec (fne's device decoder where installed): its image decoders only, not the video
# libraries built for each FFmpeg release
rm -f "$tmp"/site/torchcodec/libtorchcodec_{core,custom_ops}[0-9]*.so
tar -cJf .gpu-kit/extra.tar.xz -C "$tmp/site" nvidia torchcodec torchcodec.libs
ls "$n" "$n/extensions"
du -sh .gpu-kit .gpu-kit/extra.tar.xz
