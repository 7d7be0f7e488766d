# Two commands do all the set-up on a fresh machine:
#   make demo  - creates .venv, installs fastconv, runs the demo
#   make test  - creates .venv, installs fastconv with the test extras, runs pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A change to any of these reinstalls (the CUDA extension is built at install time).
SOURCES := pyproject.toml setup.py $(wildcard csrc/*)

.PHONY: demo test clean resource-usage sass

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -m fastconv.demo

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n auto

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

clean:
	rm -rf $(VENV) build *.egg-info fastconv/_C*.so
