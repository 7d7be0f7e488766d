#!/usr/bin/env bash
# The one script to run whenever a GPU is lent: builds the CUDA extension, runs the
# test suite on the GPU (compiled Triton, CUDA C++, bf16, TF32), runs compute-sanitizer
# over a short CUDA test, and benchmarks ops and models against eager PyTorch and
# torch.compile. Everything lands in OUT_DIR (at most 8 files come back):
#   check.log    environment, build, sanitizer, a line per step
#   tests.log    pytest on the GPU
#   ops.md/json  bf16 ops: triton, cuda, eager, torch.compile (batch 128)
#   dtypes.md/json  fp16 / fp32 / tf32 ops (batch 128)
#   models.md/json  ResNet-50 and GoogLeNet bf16, batch 128: images/s vs eager and compile,
#                   CUDA graphs, a training step
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (default $OUT, else bench/results/latest)
# The GPU machine has python3 with torch, triton, torchvision, pybind11, pytest, pytest-xdist
# and matplotlib, and no registry.
# Budget: 7.5 minutes in all; each step gets at most its cap and what is left of the budget.
set -u
OUT_DIR="${1:-${OUT:-bench/results/latest}}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/check.log"
BUDGET=450
export PYTHONUNBUFFERED=1
step() { echo "== $1 (at $SECONDS s)" | tee -a "$LOG"; }
# left CAP: seconds for the next step, min(CAP, what is left of the budget), at least 1
left() { local l=$((BUDGET - SECONDS)); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 1 ] && l=1; echo "$l"; }

step "environment"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
  nvcc --version | tail -1
  echo "commit $(git rev-parse HEAD 2>/dev/null), $(git status --porcelain --untracked-files=no 2>/dev/null | wc -l) modified files"
} >> "$LOG" 2>&1

step "build: pip install --no-build-isolation --no-deps -e ."
timeout "$(left 180)" python3 -m pip install --no-build-isolation --no-deps -e . >> "$LOG" 2>&1 \
  && python3 -c "import fastconv, fastconv._cuda as c; print('backends', fastconv.available_backends(), '| cuda:', c.unavailable_reason() or 'ok')" 2>&1 | tee -a "$LOG" \
  || echo "BUILD FAILED" | tee -a "$LOG"

step "tests on the GPU"
par=""; python3 -c "import xdist" 2>/dev/null && par="-n 8"
timeout "$(left 170)" python3 -m pytest tests -q -p no:cacheprovider $par --maxfail=50 --durations=15 \
  > "$OUT_DIR/tests.log" 2>&1
echo "pytest exit $?: $(tail -1 "$OUT_DIR/tests.log")" | tee -a "$LOG"

step "compute-sanitizer memcheck over the CUDA backend"
timeout "$(left 45)" compute-sanitizer --tool memcheck --error-exitcode 9 \
  python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider -k sanitizer >> "$LOG" 2>&1
echo "sanitizer exit $?" | tee -a "$LOG"

step "ops, bf16: triton, cuda, eager, torch.compile (batch 128)"
timeout "$(left 100)" python3 -m fastconv.bench ops --dtype bf16 --batch 128 \
  --provider eager triton cuda compile --out "$OUT_DIR" --name ops > /dev/null 2>> "$LOG"
echo "exit $?" | tee -a "$LOG"

step "models, bf16: ResNet-50 and GoogLeNet, batch 128, against eager and torch.compile"
timeout "$(left 150)" python3 -m fastconv.bench models --model resnet50 googlenet --dtype bf16 --batch 128 \
  --provider eager triton cuda compile --out "$OUT_DIR" --name models > /dev/null 2>> "$LOG"
echo "exit $?" | tee -a "$LOG"

step "ops, fp16 / fp32 / tf32 (batch 128)"
timeout "$(left 60)" python3 -m fastconv.bench ops --dtype fp16 fp32 tf32 --batch 128 \
  --provider eager triton cuda --out "$OUT_DIR" --name dtypes > /dev/null 2>> "$LOG"
echo "exit $?" | tee -a "$LOG"
step "done"
