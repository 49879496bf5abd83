#!/usr/bin/env bash
# Builds the GPU kit in .gpu_kit/ (git-ignored): what benchmarks/gpu_kit/run.sh needs on a device machine
# that reaches nothing outside it (see benchmarks/gpu_kit/README.md). Run from the repository root, here,
# where the package registries are reachable:
#   bash benchmarks/gpu_kit/build.sh [DATA=../shared/data] [EMBEDDINGS_DIR]
# DEVICE_PYTHON (default 3.12) is the device machine's Python version, for simplejpeg's binary wheel.
set -euo pipefail
data=${1:-../shared/data}
embeddings=${2:-}
kit=.gpu_kit
pyver=${DEVICE_PYTHON:-3.12}
rm -rf "$kit/wheels" && mkdir -p "$kit/wheels" "$kit/download"
pip download -q --no-deps -d "$kit/wheels" skorch tabulate
pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --platform manylinux2014_x86_64 \
  -d "$kit/wheels" simplejpeg
pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --platform manylinux_2_28_x86_64 \
  -d "$kit/download" imagecodecs
python benchmarks/gpu_kit/slim_imagecodecs.py "$kit"/download/imagecodecs-*.whl "$kit/wheels"
rm -rf "$kit/download"
python benchmarks/gpu_kit/make_data.py --src "$data" --dst "$kit/data" ${embeddings:+--embeddings "$embeddings"}
du -sh "$kit"
