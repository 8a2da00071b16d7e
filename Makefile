# Two commands for a new user: `make bench` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dlkern-installed

.PHONY: bench test clean

bench: $(STAMP)
	$(PY) -m dlkern bench --out bench/out

test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder tests

# torch is installed first, pinned to the CPU build on this machine's disk; a bare `torch`
# requirement would download a CUDA build of several GB.
$(STAMP): pyproject.toml setup.py kernels/cython/gemm.pyx kernels/cython/packed_gemm*
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q numpy numba scipy cython setuptools wheel
	# Triton 3.6 (as on the GPU machines): its interpreter runs the GPU kernels' tests on the CPU.
	$(PY) -m pip install -q triton==3.6.0
	$(PY) -m pip install -q --no-build-isolation -e '.[test,plot]'
	mkdir -p bench/out
	touch $(STAMP)

clean:
	rm -rf build *.egg-info kernels/cython/*.so kernels/cython/gemm.c bench/out
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
