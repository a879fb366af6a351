# The two commands a newcomer types: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test lint unit demo bench bench-full lock clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The full suite: CI's command (.ci/run). On two workers, each with its own moto server and (when a module
# asks for it) its own Ray head; a module's tests stay on one worker, so module-scoped worlds are set up once.
# Modules are handed out in collection order (--no-loadscope-reorder; xdist's default sorts them by their
# count of tests, which sent the one-test fault modules, the longest, last): the fault and integration
# modules first, the many short unit modules at the end, so the two workers finish together.
# `make test PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= 2
test: lint
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The quick loop: pure tests only, no moto and no Ray (tests/conftest.py fails a unit test that starts either).
unit: $(STAMP)
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) -m unit tests/unit

demo: $(STAMP)
	$(PY) -m devstack demo

# Every benchmark at its quick sizes, each beside the previous release (bench.baseline.RELEASE) in the same
# run; a drop beyond noise fails. `make bench-full` runs the full sizes (docs/PERFORMANCE.md gives the times).
bench: $(STAMP)
	$(PY) -m bench --quick

bench-full: $(STAMP)
	$(PY) -m bench

# Hashed lockfiles the images install from (containers/requirements-*.txt). Resolved for the images'
# platform, not this machine's: Linux x86_64, glibc of both base images, CPython 3.11; wheels only, so an
# image build never compiles an sdist with unhashed build tools. Existing pins are kept unless pyproject
# needs others; `make lock LOCK_ARGS=--upgrade` takes the newest allowed versions.
UV_VERSION  := 0.13.9
RAY_VERSION  = $(shell sed -n 's/^ARG RAY_VERSION=//p' containers/Containerfile.ray)
LOCK_FLAGS   = --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
               --only-binary :all: --custom-compile-command 'make lock' $(LOCK_ARGS)

lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q 'uv==$(UV_VERSION)'
	$(VENV)/bin/uv pip compile $(LOCK_FLAGS) pyproject.toml --extra consumer containers/requirements-processor.in \
		-o containers/requirements-processor.txt
	$(VENV)/bin/uv pip compile $(LOCK_FLAGS) pyproject.toml --extra api containers/requirements-api.in \
		-o containers/requirements-api.txt
	echo 'ray[default]==$(RAY_VERSION)' | $(VENV)/bin/uv pip compile $(LOCK_FLAGS) pyproject.toml --extra replay \
		containers/requirements-ray.in - -o containers/requirements-ray.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build *.egg-info
