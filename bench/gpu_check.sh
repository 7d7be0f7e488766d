#!/usr/bin/env bash
# The one script to run whenever a GPU is lent: builds the CUDA extension, runs
# the test suite on the GPU (compiled Triton, CUDA C++, bf16, TF32), runs
# compute-sanitizer over a short CUDA test, and benchmarks the ops against eager
# and torch.compile. Everything lands in OUT_DIR (at most 8 files):
#   check.log  environment, build, sanitizer and a summary     tests.log  pytest
#   ops.md/json  bf16 ops vs eager and compile (batch 128)      dtypes.md/json  fp16/fp32/tf32
# Usage: bash bench/gpu_check.sh [OUT_DIR]   (default $OUT, else bench/results/latest)
# The GPU machine has python3 with torch, triton, pybind11, pytest and no registry.
# If .whl/ holds pytest-xdist and execnet wheels (see bench/README.md), the tests
# run on 8 processes (Triton's compiles are CPU-bound).
# Budget: under 8 minutes on an H100.
set -u
OUT_DIR="${1:-${OUT:-bench/results/latest}}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/check.log"
export PYTHONUNBUFFERED=1
start=$SECONDS
step() { echo "== $1 ($((SECONDS - start)) s)" | tee -a "$LOG"; }

step "environment"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
  nvcc --version | tail -1
  echo "commit $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain --untracked-files=no 2>/dev/null | wc -l) modified files"
} >> "$LOG" 2>&1

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >> "$LOG" 2>&1 \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

step "build (pip install --no-build-isolation -e .)"
timeout 300 python3 -m pip install --no-build-isolation --no-deps -e . >> "$LOG" 2>&1 \
  && python3 -c "import fastconv, fastconv._cuda as c; print('backends', fastconv.available_backends(), 'cuda:', c.unavailable_reason() or 'ok')" >> "$LOG" 2>&1 \
  || echo "BUILD FAILED" | tee -a "$LOG"

step "tests on the GPU"
par=""; python3 -c "import xdist" 2>/dev/null && par="-n 8"
timeout 270 python3 -m pytest tests -q -p no:cacheprovider $par --durations=15 > "$OUT_DIR/tests.log" 2>&1
echo "pytest exit $? : $(tail -1 "$OUT_DIR/tests.log")" | tee -a "$LOG"

step "compute-sanitizer memcheck (CUDA backend, short test)"
timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 \
  python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider -k sanitizer >> "$LOG" 2>&1
echo "sanitizer exit $?" | tee -a "$LOG"

step "benchmarks: bf16 ops vs eager, triton, cuda, torch.compile (batch 128)"
timeout 150 python3 -m fastconv.bench --dtype bf16 --batch 128 --provider eager triton cuda compile \
  --out "$OUT_DIR" --name ops > /dev/null 2>> "$LOG"
echo "bench exit $?" | tee -a "$LOG"

step "benchmarks: fp16, fp32, tf32 (batch 128, no compile)"
timeout 90 python3 -m fastconv.bench --dtype fp16 fp32 tf32 --batch 128 --provider eager triton cuda \
  --out "$OUT_DIR" --name dtypes > /dev/null 2>> "$LOG"
echo "bench exit $?" | tee -a "$LOG"
step "done"
