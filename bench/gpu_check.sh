#!/usr/bin/env bash
# The one script to run whenever a GPU is lent (bench/README.md says what each file holds).
#   bash bench/gpu_check.sh [OUT_DIR]                 the check (default $OUT, else bench/results/latest)
#   bash bench/gpu_check.sh --dry-run OUT_DIR         every step on a CPU-only machine (tests/test_gpu_check.py)
#   bash bench/gpu_check.sh --steps "build quick" DIR only these steps (rerun what failed)
# Steps, by value: env build quick sanitizer tune host ops models deep. Each writes its results
# under OUT_DIR before the next starts, within its cap and what is left of the 7-minute budget
# (the deep grid keeps a reserve and gets the rest). Everything lands in at most 8 files:
#   check.log tests.log host.md ops.md ops.json models.md models.json extras.tar.gz
# The interpreter: the checkout's .venv/bin/python when there is one (make demo/test create it),
# else $PYTHON, else python3 (the GPU machine's has torch, triton, torchvision, pybind11, pytest,
# pytest-xdist, compute-sanitizer and no registry: nothing is installed but fastconv itself).
# One that cannot import torch stops the check at once (exit 3).
set -u
DRY=0
STEPS="env build quick sanitizer tune host ops models deep"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --steps) STEPS="$2"; shift 2 ;;
    -h|--help) sed -n '/^set -u/q; 2,$p' "$0"; exit 0 ;;  # the comment above
    *) break ;;
  esac
done
OUT_DIR="${1:-${OUT:-bench/results/latest}}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WORK="$(mktemp -d)"             # raw outputs; packed into extras.tar.gz after every step
PACKED="$(mktemp)"              # the archive is built here, so OUT_DIR never holds a 9th file
trap 'rm -rf "$WORK" "$PACKED"' EXIT
LOG="$OUT_DIR/check.log"
TESTS="$OUT_DIR/tests.log"
if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="${PYTHON:-python3}"; fi
if ! "$PY" -c "import torch" > "$WORK/torch.err" 2>&1; then
  { echo "gpu_check: $PY cannot import torch: $(tail -1 "$WORK/torch.err")"
    echo "  run 'make test' first (it creates .venv), or set PYTHON to an interpreter that has torch"
  } | tee "$LOG" >&2
  exit 3
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BUDGET=420                      # seconds for the whole check, build included
DEEP_RESERVE=75                 # steps before the deep grid leave it at least this much
if [ "$DRY" = 1 ]; then
  # CPU only: tiny shapes, torch and interpreter backends, no nvidia-smi, no sanitizer, no build
  export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1
  # one process per pytest step (xdist under this plugin is tested in tests/test_outcomes.py)
  PAR=""; DEEP_RESERVE=0
  QUICK_SELECT=(-k "float32 and nhwc"); DEEP_SELECT=(tests/ops/test_pool_same.py -k "errors or defaults")
else
  PAR="-n 16"; QUICK_SELECT=(); DEEP_SELECT=(tests bench)
fi
python3_has_xdist() { "$PY" -c "import xdist" 2>/dev/null; }
python3_has_xdist || PAR=""

want() { [[ " $STEPS " == *" $1 "* ]]; }
note() { echo "$*" | tee -a "$LOG"; }
step() { note "== $1 (at ${SECONDS} s)"; STEP_T0=$SECONDS; }
FAILED_STEPS=""
done_step() {  # NAME EXIT [ERRFILE]: the step's line; the tail of its stderr if it failed; refresh extras
  note "   $1: exit $2 after $((SECONDS - STEP_T0)) s"
  if [ "$2" != 0 ] && [ "$2" != "0/0" ]; then
    FAILED_STEPS="$FAILED_STEPS $1"
    [ -n "${3:-}" ] && [ -s "$3" ] && tail -4 "$3" | sed 's/^/   | /' | tee -a "$LOG"
  fi
  pack
}
# cap SECONDS [RESERVE]: the next step's limit: SECONDS, no more than the budget left less RESERVE, at least 1
cap() { local l=$((BUDGET - SECONDS - ${2:-$DEEP_RESERVE})); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 1 ] && l=1; echo "$l"; }
run() { local c=$1; shift; timeout -k 5 "$c" "$@"; }   # SIGTERM at the cap, SIGKILL 5 s later
pack() { tar -czf "$PACKED" -C "$WORK" . 2>/dev/null && cp "$PACKED" "$OUT_DIR/extras.tar.gz"; }
keep() { for f in "$@"; do [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT_DIR/"; done; }
# pytest_step NAME CAP ARGS...: pytest with each outcome streamed to tests.log, then its summary
pytest_step() {
  local name=$1 c=$2; shift 2
  echo "# session start: gpu_check step '$name' (cap $c s): the lines below are pytest's" >> "$TESTS"
  run "$c" env -u FASTCONV_TUNING_TABLE "$PY" -m pytest "$@" $PAR -p no:cacheprovider -rfE --tb=short --durations=10 \
    --outcomes-log="$TESTS" --outcomes-tb="$WORK/tracebacks-$name.txt" > "$WORK/pytest-$name.txt" 2>&1
  local rc=$?
  "$PY" -m tests.outcomes summarize "$TESTS" > "$WORK/summary.txt"
  cat "$WORK/summary.txt" >> "$TESTS"
  { sed 's/^/   /' "$WORK/summary.txt"
    [ "$rc" -gt 1 ] && [ "$rc" != 124 ] && tail -5 "$WORK/pytest-$name.txt" | sed 's/^/   | /'; } | tee -a "$LOG"
  done_step "pytest $name" "$rc" "$WORK/pytest-$name.txt"
}

: > "$LOG"; : > "$TESTS"
note "fastconv GPU check$([ "$DRY" = 1 ] && echo ' (DRY RUN: CPU only)'), $(date -u +%FT%TZ), steps: $STEPS"

if want env; then
  step "environment"
  rc=0
  { [ "$DRY" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    echo "interpreter $PY"
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())" || rc=$?
    [ "$DRY" = 1 ] || { nvcc --version | tail -1; compute-sanitizer --version | tail -1; }
    echo "commit $(git rev-parse HEAD 2>/dev/null), $(git status --porcelain --untracked-files=no 2>/dev/null | wc -l) modified files"
    nproc | sed 's/^/cores /'
  } >> "$LOG" 2>&1
  done_step environment "$rc"
fi

if want build; then
  step "build: pip install --no-build-isolation --no-deps -e ."
  rc=0
  if [ "$DRY" = 1 ]; then
    note "   dry run: no build; fastconv from the checkout"
  else
    run "$(cap 120)" "$PY" -m pip install --no-build-isolation --no-deps -e . > "$WORK/build.log" 2>&1 || {
      note "   pip failed (tail of extras build.log below); trying setup.py build_ext --inplace"
      tail -5 "$WORK/build.log" | sed 's/^/   | /' | tee -a "$LOG"
      run "$(cap 90)" "$PY" setup.py build_ext --inplace >> "$WORK/build.log" 2>&1; }
    rc=$?
  fi
  "$PY" -c "import fastconv, fastconv._cuda as c; print('   backends', fastconv.available_backends(), '| cuda C++:', c.unavailable_reason() or 'ok')" 2>&1 | tee -a "$LOG"
  [ "$rc" = 0 ] && rc=${PIPESTATUS[0]}  # built (or the dry run's checkout) but not importable: failed
  done_step build "$rc" "$WORK/build.log"
fi

# 1. The quick tier: every kernel x dtype x memory format x backend once (<= 90 s, cold cache).
want quick && { step "quick tier: pytest -m quick"; pytest_step quick "$(cap 100)" tests/test_quick_tier.py -m quick "${QUICK_SELECT[@]}"; }

# 2. compute-sanitizer over every CUDA C++ kernel: memcheck all, racecheck the shared-memory ones.
if want sanitizer; then
  step "compute-sanitizer: memcheck (every CUDA kernel), racecheck (the conv GEMMs: shared memory)"
  if [ "$DRY" = 1 ]; then
    run "$(cap 30)" "$PY" bench/sanitize_cuda.py --dtype fp32 > "$WORK/sanitizer-memcheck.txt" 2>&1
    rc=$?
  else
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1  # each tensor its own allocation: memcheck sees overruns
    run "$(cap 50)" compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
      "$PY" bench/sanitize_cuda.py > "$WORK/sanitizer-memcheck.txt" 2>&1
    rc=$?
    run "$(cap 40)" compute-sanitizer --tool racecheck --error-exitcode 9 \
      --print-limit 20 --kernel-name kns=fastconv \
      "$PY" bench/sanitize_cuda.py --op conv1x1_relu --dtype fp16 bf16 tf32 fp32 > "$WORK/sanitizer-racecheck.txt" 2>&1
    rc="$rc/$?"
    unset PYTORCH_NO_CUDA_MEMORY_CACHING
  fi
  for f in "$WORK"/sanitizer-*.txt; do
    [ -f "$f" ] || continue
    summary="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|out of tolerance|conv kernels covered' "$f" | tr '\n' ' ')"
    note "   $(basename "$f" .txt): ${summary:-no summary; its last lines:}"
    { grep -E '^BAD|^=+ (Invalid|Race|Error|Program hit)' "$f" | head -10
      [ -z "$summary" ] && tail -3 "$f"; } | sed 's/^/   | /' | tee -a "$LOG"
  done
  done_step sanitizer "$rc"
fi

# 3. The tuner's quick mode (once fastconv/tune.py exists), before the benchmarks: they then run
#    on its table (FASTCONV_TUNING_TABLE), as "auto" will once the table is committed.
if want tune; then
  step "tuner: python -m fastconv.tune $([ "$DRY" = 1 ] && echo --dry-run || echo --quick)"
  if [ -f fastconv/tune.py ]; then
    c=$(cap 45); args=()  # where the tuner takes a time budget, one that ends well before the cap
    [ "$DRY" = 0 ] && grep -q -- "--budget-s" fastconv/tune.py && args=(--budget-s $((c > 25 ? c - 15 : 10)))
    run "$c" "$PY" -m fastconv.tune "$([ "$DRY" = 1 ] && echo --dry-run || echo --quick)" "${args[@]}" \
      --out "$WORK/tune.json" > "$WORK/tune.txt" 2>&1
    rc=$?
    [ -s "$WORK/tune.json" ] && export FASTCONV_TUNING_TABLE="$WORK/tune.json"
  else
    note "   fastconv/tune.py is not there yet: skipped"; rc=0
  fi
  done_step tune "$rc" "$WORK/tune.txt"
fi

# 4. Host cost: host issue vs GPU time per forward, and a cProfile of fastconv's own Python.
if want host; then
  step "host cost: ResNet-50 and GoogLeNet, host issue vs GPU time per forward, cProfile"
  if [ "$DRY" = 1 ]; then args=(--model resnet18 --size 32 --forwards 1); else args=(); fi
  run "$(cap 60)" "$PY" -m fastconv.bench.host "${args[@]}" --out "$WORK/host.md" 2>> "$WORK/host.err"
  rc=$?; keep host.md; done_step host "$rc" "$WORK/host.err"
fi

# 5. Ops, bf16 (eager is the ratio's base; torch.compile of eager ops is in the first run's results).
if want ops; then
  step "ops, bf16, batch 128: eager, auto, triton, cuda"
  # cuda only where it was built: the benchmark refuses a provider this machine lacks
  cuda=$("$PY" -c "import fastconv; print('cuda' if 'cuda' in fastconv.available_backends() else '')" 2>/dev/null)
  if [ "$DRY" = 1 ]; then args=(--quick); else args=(--dtype bf16 --batch 128 --provider eager auto triton $cuda); fi
  run "$(cap 75)" "$PY" -m fastconv.bench ops "${args[@]}" --out "$WORK" --name ops > /dev/null 2>> "$WORK/ops.err"
  rc=$?; keep ops.md ops.json; done_step ops "$rc" "$WORK/ops.err"
fi

# 6. Models, bf16: images/s against eager and torch.compile; errors against eager and the fp32 model.
if want models; then
  step "models, bf16: ResNet-50 and GoogLeNet, batch 128"
  if [ "$DRY" = 1 ]; then args=(--quick --model resnet18 --batch 1 --size 32); else args=(--model resnet50 googlenet --dtype bf16 --batch 128); fi
  # no first-use tuning here (45 conv classes x 3 candidates would eat the cap): the tuner's
  # table where it has the class, the rule elsewhere; compile providers run last
  run "$(cap 80)" env FASTCONV_AUTOTUNE=0 "$PY" -m fastconv.bench models "${args[@]}" --out "$WORK" --name models > /dev/null 2>> "$WORK/models.err"
  rc=$?; keep models.md models.json; done_step models "$rc" "$WORK/models.err"
fi

# 7. The deep grid (everything not quick), with the rest of the budget.
want deep && { step "deep grid: pytest -m deep"; pytest_step deep "$(cap 600 0)" "${DEEP_SELECT[@]}" -m deep; }

note "== done (at ${SECONDS} s): $(ls "$OUT_DIR" | wc -l) files in $OUT_DIR; steps that failed:${FAILED_STEPS:- none}"
[ -z "$FAILED_STEPS" ]
