# Two commands do all the set-up on a fresh machine:
#   make demo  - creates .venv, installs fastconv, runs the demo
#   make test  - creates .venv, installs fastconv with the test extras, runs pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A change to any of these reinstalls (the CUDA extension is built at install time).
SOURCES := pyproject.toml setup.py $(wildcard csrc/*)

.PHONY: demo test clean resource-usage sass mutants

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

# The mutation run: each one-line bug of tests/mutant_list.py in a copy of the tree, and the
# tests that must catch it; a table of caught / missed (the CUDA C++ ones need a GPU).
mutants: $(VENV)/.installed-test
	$(BIN)/python -m tests.mutants

# Registers, shared memory and spills of every CUDA kernel (no GPU needed); see csrc/README.md.
resource-usage:
	for f in csrc/*.cu; do nvcc -c $$f -o /dev/null -O3 -std=c++17 -Icsrc --expt-relaxed-constexpr \
	  -gencode=arch=compute_90,code=sm_90 --resource-usage 2>&1 | grep -E "Compiling|spill|Used"; done

# Per kernel of the built module (sm_90): tensor-core mma (HMMA), ldmatrix (LDSM), cp.async
# (LDGSTS), 16-byte global stores and local-memory traffic (LDL/STL); see csrc/README.md.
# cuobjdump: CUDA's, or the copy Triton ships.
CUOBJDUMP ?= $(shell command -v cuobjdump || ls $(BIN)/../lib/python3*/site-packages/triton/backends/nvidia/bin/cuobjdump 2>/dev/null | head -1)
sass:
	$(CUOBJDUMP) --dump-sass --gpu-architecture sm_90 fastconv/_C*.so | awk \
	  '/Function :/ { if (f) print h, l, g, s, x, f; f = $$3; h = l = g = s = x = 0 } \
	   /HMMA/ { h++ } /LDSM/ { l++ } /LDGSTS/ { g++ } /STG.E.128/ { s++ } /[^A-Z](LDL|STL)[. ]/ { x++ } \
	   END { print h, l, g, s, x, f }' | c++filt | \
	  sed -E -e 's/\(anonymous namespace\):://g' -e 's/fastconv:://g' -e 's/\(.*//' \
	    -e 's/GemmConfig<(.*)>, GroupedTileScheduler.*/\1>/' -e 's/, /,/g' -e 's/> >/>>/' | \
	  awk 'BEGIN { print "HMMA LDSM LDGSTS STG.128 LDL/STL kernel" } { print }' | column -t

clean:
	rm -rf $(VENV) build *.egg-info fastconv/_C*.so
