#!/usr/bin/env bash
# The GPU benchmark (issue 8, part 7): MFU of GPT-2-124M in bf16 with torch.compile, peak memory
# against `lmspec check`'s estimate for 3 stage shapes, FSDP2 on one GPU, and generation with the
# KV cache against transformers. Meant for one H100/H200-class GPU; finishes in under 8 minutes.
#
#   benchmarks/gpu/run.sh [OUT.json] [bench_gpu.py options, e.g. --peak-tflops 989]
#
# Prints every figure and writes them all to OUT.json (default benchmarks/gpu/result-DATE.json).
# Copy the figures into benchmarks/RESULTS.md with the date and the hardware.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-benchmarks/gpu/result-$(date -u +%Y%m%d-%H%M%S).json}
shift || true
python=${PYTHON:-python3}
if ! "$python" -c "import lmspec, torch, transformers" 2>/dev/null; then
  echo "run.sh: needs lmspec, torch and transformers importable by $python (pip install -e '.[test]')" >&2
  exit 2
fi
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "run.sh: no CUDA device visible to torch; on a CPU, run: $python benchmarks/gpu/bench_gpu.py --reduced" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
exec timeout 470 "$python" benchmarks/gpu/bench_gpu.py --out "$out" "$@"
