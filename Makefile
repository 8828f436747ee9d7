# `make demo` and `make test` create .venv when it is missing; nothing else is needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: venv test demo bench bench-queue farm-local clean ensure-chromium ensure-postgres

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU wheel of torch lies on local disk here; on a GPU machine install your CUDA torch first.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# Model upscalers: spandrel without its dependencies, because it requires torchvision, and pip would
	# replace our torch with the one a PyPI torchvision pins (tests/conftest.py: spandrel_importable).
	$(PY) -m pip install -q --no-deps spandrel==0.4.2 einops
	touch $(STAMP)

# The web UI tests drive Debian's chromium through Playwright (no browser download is possible).
# Installed here when missing and we are root (with a Japanese font for the ja screenshots);
# otherwise the UI tests fail naming this command.
ensure-chromium:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-ipafont-gothic; \
	    else echo "chromium is missing: run 'sudo apt-get install -y chromium' (the web UI tests need it)"; fi; }

# The job-store tests start a real PostgreSQL server (Debian's `postgresql` package).
ensure-postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql)

test: $(STAMP) ensure-chromium ensure-postgres
	# Every test runs, the SIGKILL-a-real-server one included: restarts must never lose a job.
	$(PY) -m pytest -q -n 2 --timeout 600 -m "not farm" --durations=25
	# The farm (3 workers + 2 API processes, real trainings) needs the whole machine: run alone.
	$(PY) -m pytest -q -p no:xdist --timeout 1200 -m farm
	# Tests that compare two computations of one picture, again on ATen's portable kernels: a suite
	# that passes only with this CPU's AVX-512 / AVX2 code cannot land.
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -n 2 --timeout 600 -m pixels

demo: $(STAMP)
	$(VENV)/bin/lorastudio demo --workspace demo

bench: $(STAMP)
	$(PY) bench/generate.py

# Claim -> start overhead and claims/s of the PostgreSQL job queue (starts its own server).
bench-queue: $(STAMP) ensure-postgres
	$(PY) bench/job_queue.py

# compose.yaml's farm without Docker: PostgreSQL, moto's S3 server, the API node, the workers.
farm-local: $(STAMP) ensure-postgres
	PYTHON=$(PY) deploy/farm-local.sh

clean:
	rm -rf $(VENV) outputs projects
