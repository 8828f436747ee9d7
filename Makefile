# `make demo` and `make test` create .venv when it is missing; nothing else is needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: venv test demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU wheel of torch lies on local disk here; on a GPU machine install your CUDA torch first.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	# Every test runs, the SIGKILL-a-real-server one included: restarts must never lose a job.
	$(PY) -m pytest -q -n 2 --timeout 600
	# Tests that compare two computations of one picture, again on ATen's portable kernels: a suite
	# that passes only with this CPU's AVX-512 / AVX2 code cannot land.
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -n 2 --timeout 600 -m pixels

demo: $(STAMP)
	$(VENV)/bin/lorastudio demo --workspace demo

bench: $(STAMP)
	$(PY) bench/generate.py

clean:
	rm -rf $(VENV) outputs projects
