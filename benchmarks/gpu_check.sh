#!/usr/bin/env bash
# The checks for a machine with a CUDA GPU, in one go (CI has no GPU): the CUDA tests, then the speed benchmark
# against cuDNN's nn.LSTM / nn.GRU. Runs from a source checkout with the machine's own python and torch.
#   usage: benchmarks/gpu_check.sh [OUTDIR]   (default benchmarks/results/cuda)
# Writes OUTDIR/gpu_info.txt, cuda_tests.log, speed.json, speed.md and bench.log. Each part has its own time
# limit (TEST_TIMEOUT, BENCH_TIMEOUT seconds), so one that hangs cannot take the other's results with it; the
# defaults (150 + 300 s, plus the first kernel compilations inside them) keep the whole run under 8 minutes.
# The benchmark runs the fused rows only (the reference loop costs ~0.5 ms per step on a GPU: minutes at T=1024),
# 5 timed rounds; the CUDA tests include the Triton engine's (graph cache, bf16, autocast + GradScaler).
set -u
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/cuda}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
  date -u +"%Y-%m-%d %H:%M UTC"
  git rev-parse --short HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$python" -c "import torch; b = torch.backends
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', b.cudnn.version())
print('tf32: matmul', b.cuda.matmul.allow_tf32, 'cudnn', b.cudnn.allow_tf32)
try:
    import triton; print('triton', triton.__version__)
except Exception as e:
    print('triton: not available,', type(e).__name__, e)"
} 2>&1 | tee "$out/gpu_info.txt"

echo "== CUDA tests"
timeout "${TEST_TIMEOUT:-150}" "$python" -m pytest tests/core/test_cuda.py -k "not test_cpu_" -q -p no:cacheprovider --maxfail=20 \
  >"$out/cuda_tests.log" 2>&1
echo "pytest exit status $?" >>"$out/cuda_tests.log"
tail -n 25 "$out/cuda_tests.log"

echo "== benchmark"
timeout "${BENCH_TIMEOUT:-300}" "$python" benchmarks/speed.py --device cuda --out "$out" --no-progress \
  --backends fused --rounds 5 --warmup 1 >"$out/bench.log" 2>&1
echo "benchmark exit status $?" >>"$out/bench.log"
tail -n 80 "$out/bench.log"
