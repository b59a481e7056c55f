#!/usr/bin/env bash
# One GPU check, one call (issue 16): on a machine with one CUDA GPU, with the machine's own
# python/torch (PYTHON=... to pick another), in about 8 minutes:
#   1. pytest -m gpu: CPU configs and CPU tests with a GPU visible; DALI GPU batches vs CPU decode,
#      a late read of a dropped batch, five set_epoch cycles; single-rank NCCL with DDP + SyncBN +
#      channels_last + compile + accumulation; fp16 and bf16 runs with SIGTERM and resume.
#   2. the GPU table (scripts/bench_gpu.py): ResNeSt-50 training images/s by precision, layout
#      and mode beside timm's resnest50d and resnet50d; the DALI GPU loader; train.py end to end
#      with its data-wait share; the time to save a ResNeSt-269 checkpoint.
# Without nvidia-dali the DALI tests and rows are skipped, and the output says so.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (logs and bench_gpu.json go to OUT_DIR, default gpu_check_out)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
"$PYTHON" - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
try:
    import nvidia.dali as dali
    print(f"nvidia-dali {dali.__version__}")
except ImportError:
    print("nvidia-dali: not installed; DALI tests and rows are skipped")
PY
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "error: no CUDA GPU visible to PyTorch; this check needs one." >&2; exit 2; }

echo "== 1. pytest -m gpu"
timeout 330 "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/pytest_gpu.log"
tests_rc=${PIPESTATUS[0]}

echo "== 2. GPU table"
timeout 240 "$PYTHON" scripts/bench_gpu.py --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"
bench_rc=${PIPESTATUS[0]}

echo "== done: pytest exit $tests_rc, bench exit $bench_rc (124 = stopped by its time limit)"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
