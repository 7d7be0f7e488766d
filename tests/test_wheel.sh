#!/usr/bin/env bash
# The wheel as a user gets it (`make test-wheel`, after `make wheel` has filled dist/): installed
# into a venv of its own with another torch than the project's (TORCH, default the CPU build of
# torch 2.13.0), without torchvision and without nvcc on PATH; then, from outside the source tree:
# import fastconv and fastconv._C, what `python -m fastconv.info` reports, fastconv.models'
# ImportError naming its extra, and the op-level CPU tests and the converter tests run against the
# installed package. Last, the sdist builds on a machine without nvcc, into a wheel without _C.
#
# The venv (build/wheel-test-venv) is made once per set of requirements and reused: torch takes
# minutes to install. The wheel is installed again on every run, its dependencies resolved by pip.
set -euo pipefail
PYTHON=${PYTHON:-python3}
BUILD_PYTHON=${BUILD_PYTHON:-.venv-build/bin/python}  # has setuptools and pybind11 (Makefile)
TORCH=${TORCH:-torch==2.13.0}
# The Triton and numpy the project tests with (the Triton kernels run in Triton's interpreter).
REQUIREMENTS="$TORCH triton==3.8.0 numpy==2.4.6 pytest pytest-xdist pytest-benchmark"

root=$(cd "$(dirname "$0")/.." && pwd)
BUILD_PYTHON=$(cd "$root" && realpath -s "$BUILD_PYTHON")  # -s: the venv's python, not its target
wheel=$(ls "$root"/dist/fastconv-*.whl)
sdist=$(ls "$root"/dist/fastconv-*.tar.gz)
venv="$root/build/wheel-test-venv"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s (%ds)\n' "$1" "$SECONDS"; }
pip_install() { "$venv/bin/python" -m pip install -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }

step "wheel: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) kB; its fastconv/_C and tuning tables"
"$BUILD_PYTHON" - "$wheel" "$root" <<'EOF'
import glob, os, sys, zipfile
wheel, root = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
tables = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "fastconv/_tuning/*.json")))
extension = [n for n in names if n.startswith("fastconv/_C.")]
print("\n".join(extension + tables) or "(no tuning tables committed)")
assert len(extension) == 1, f"the wheel has no fastconv/_C: {names}"
assert set(tables) <= set(names), f"tuning tables missing from the wheel: {set(tables) - set(names)}"
EOF

step "the venv: $REQUIREMENTS, and the wheel; no torchvision"
if [ "$(cat "$venv/requirements" 2>/dev/null)" != "$REQUIREMENTS" ]; then
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  pip_install "$wheel" $REQUIREMENTS
  echo "$REQUIREMENTS" >"$venv/requirements"
fi
pip_install --force-reinstall --no-deps "$wheel"
"$venv/bin/python" -m pip check  # the wheel's dependencies are all installed
export PATH="$venv/bin:/usr/bin:/bin"  # nvcc (/usr/local/cuda, /usr/local/bin) is not on it
unset NVCC CUDA_HOME
if command -v nvcc; then echo "nvcc is still on PATH" >&2; exit 1; fi
cp -r "$root/tests" "$root/pyproject.toml" "$work/"  # tests and pytest's settings, not the package
cd "$work"

step "import fastconv, fastconv._C from site-packages; python -m fastconv.info"
python - "$venv" "$TORCH" <<'EOF'
import importlib.util, sys, torch
import fastconv, fastconv._C
venv, torch_requirement = sys.argv[1:]
assert fastconv.__file__.startswith(venv), f"imported {fastconv.__file__}, not the installed wheel"
assert torch.__version__.split("+")[0] == torch_requirement.split("==")[1], torch.__version__
assert importlib.util.find_spec("torchvision") is None, "torchvision is installed"
assert fastconv.available_backends()[0] == "torch"
EOF
python -m fastconv.info
python -c "
import time; t0 = time.perf_counter()
import torch; t1 = time.perf_counter()
import fastconv; t2 = time.perf_counter()
print(f'import time, a fresh process: torch {t1 - t0:.2f} s, then fastconv {t2 - t1:.2f} s')"
if python -c "import fastconv.models" 2>"$work/models.err"; then
  echo "fastconv.models imported without torchvision" >&2; exit 1
fi
tail -1 "$work/models.err"
grep -q "pip install 'fastconv\[models\]'" "$work/models.err"

step "the everyday op-level and converter tests (make test's, not check) against the installed package"
# Test modules that import torchvision (or fastconv.models) at the top need the extra: named, left out.
tests=() left_out=()
for f in tests/ops/test_*.py tests/convert/test_*.py tests/test_convert*.py tests/test_quick_tier.py \
         tests/test_info.py tests/test_extras.py; do
  if grep -q -E "^(import|from) (torchvision|fastconv\.models)|^from tests\.models" "$f"; then
    left_out+=("$f")
  else
    tests+=("$f")
  fi
done
echo "left out (need fastconv[models]): ${left_out[*]:-none}"
python -m pytest -q -p no:cacheprovider -n 2 -m "not gpu and not check" "${tests[@]}"

step "the sdist without nvcc: builds fastconv without _C and says so"
tar -xzf "$sdist" -C "$work"
(cd "$work"/fastconv-*/ && CUDA_HOME="$work/no-cuda" "$BUILD_PYTHON" -m build --no-isolation --wheel \
  --outdir "$work/from-sdist" . >"$work/sdist.log" 2>&1) || { cat "$work/sdist.log"; exit 1; }
grep "fastconv: nvcc not found" "$work/sdist.log"
pure=$(ls "$work"/from-sdist/fastconv-*-py3-none-any.whl)
pip_install --no-deps --force-reinstall "$pure"
python -c "
import fastconv
assert 'cuda' not in fastconv.available_backends(verbose=True)"

step "passed"
