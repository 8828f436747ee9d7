# `make demo` and `make test` create .venv when it is missing; nothing else is needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: venv test demo bench bench-queue clean ensure-postgres

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU wheel of torch lies on local disk here; on a GPU machine install your CUDA torch first.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The job-store tests start a real PostgreSQL server (Debian's `postgresql` package).
ensure-postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql)

test: $(STAMP) ensure-postgres
	# The SIGKILL-a-real-server test is part of CI on purpose: restarts must never lose a job.
	LORASTUDIO_CRASH_TEST=1 $(PY) -m pytest -q -n 2 --timeout 600

demo: $(STAMP)
	$(VENV)/bin/lorastudio demo --workspace demo

bench: $(STAMP)
	$(PY) bench/generate.py

# Claim -> start overhead and claims/s of the PostgreSQL job queue (starts its own server).
bench-queue: $(STAMP) ensure-postgres
	$(PY) bench/queue.py

clean:
	rm -rf $(VENV) outputs projects
