#!/usr/bin/env bash
# shellcheck disable=SC2086  # $quick and $emb hold zero or more options, split on purpose
# The whole device check of the GPU path in one command (run on the device machine, repository root; the
# kit travels with carry=[".gpu_kit"]); every result lands in $OUT. About 5 minutes on one H200 plus
# start-up. Each step has its own time limit (450 s together, under the tool's 600 s per command), and a
# failed step does not stop the next.
#   bash benchmarks/gpu_kit/run.sh
# DEVICE=cpu QUICK=1 runs the same steps on a CPU, small (a check of the script itself).
set -uo pipefail
out=${OUT:-/tmp/gpu-out}
device=${DEVICE:-cuda}
quick=${QUICK:+--quick}
mkdir -p "$out"
eval "$(bash benchmarks/gpu_kit/install.sh .gpu_kit/wheels /tmp/skdfl-kit | grep '^export ')"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, timm.__version__)" \
  >> "$out/gpu.txt" 2>&1
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "   exit $? ($name)"
  tail -n 25 "$out/$name.log"
}
# The CUDA-only tests (nvJPEG, prefetching on a side stream) and the device-path tests around them.
step tests 90 python3 -m pytest -q -o addopts="" -p no:cacheprovider tests/test_prefetch.py \
  tests/test_device_decode.py tests/test_gpu_path.py
step bench_gpu 240 python3 benchmarks/bench_gpu.py --device "$device" $quick --data-dir .gpu_kit/data \
  --out "$out/gpu.json"
step bench_gpu_loader 60 python3 benchmarks/bench_gpu_loader.py --device "$device" $quick --data-dir .gpu_kit/data \
  --out "$out/gpu_loader.json"
emb=$([[ -f .gpu_kit/data/emb/idc_densenet121.npz ]] && echo "--embeddings .gpu_kit/data/emb" || echo "--data-dir /nonexistent")
step bench_fold_batching 60 python3 benchmarks/bench_fold_batching.py --device "$device" $quick $emb --repeats 5 \
  --out "$out/fold_batching.json"
