# Everything installs from nothing but python3, node/npm, make and git.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export UV_NO_CONFIG := 1


.PHONY: dist install run up test test-fast lint typecheck synth openapi lock clean chaos bench bench-lock bench-system-deps browser job-user capacity screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

DISTRIBUTIONS := . runly runly_core runly_client node_agent

$(VENV)/.installed: requirements.txt $(addsuffix /pyproject.toml,$(DISTRIBUTIONS)) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps $(addprefix -e ,$(DISTRIBUTIONS))
	touch $@

install: $(VENV)/.installed

## One wheel per distribution in dist/: runly (the job SDK), runly_core, runly_client, runly_agent and runly_cli.
dist: install
	rm -rf dist build/dist && mkdir -p dist build/dist/egg
	@# setuptools would build in each source directory (build/, *.egg-info): outside the packages instead
	printf '[build]\nbuild_base = %s/build/dist/build\n[egg_info]\negg_base = %s/build/dist/egg\n' $(CURDIR) $(CURDIR) > build/dist/setup.cfg
	for source in $(DISTRIBUTIONS); do \
	  DIST_EXTRA_CONFIG=$(CURDIR)/build/dist/setup.cfg $(BIN)/uv build --wheel --quiet --out-dir dist $$source || exit 1; \
	done
	@ls dist

## The embedded stack, the example job packed, pushed and run: ends with a Succeeded run.
run: install job-user
	$(BIN)/runly local demo

## The embedded stack, until Ctrl-C.
up: install
	$(BIN)/runly local up

## The whole test suite (what CI runs): lint, types, then the tests on $(TEST_WORKERS) workers, a test module per worker at
## a time (TEST_WORKERS=4 is faster on a quiet machine, but timing-bound tests flake with more workers than cores). Without
## Chromium the browser tests are skipped, and the end says so.
TEST_WORKERS ?= 2
test: install lint typecheck browser job-user
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

## The unprivileged user job processes run as (RUNLY_JOB_USER, default runly-job), where this runs as root, and a
## way for it to the interpreter of package environments: each directory above it gets the others' execute bit
## (pass through, not list; e.g. /root for a pyenv Python). Idempotent; not root: nothing, and the agent warns.
JOB_USER ?= runly-job
job-user: install
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "job-user: not root, so no $(JOB_USER) user: jobs run as $$(id -un) and the agent says what that exposes"; \
	else \
	  if ! id -u $(JOB_USER) >/dev/null 2>&1; then \
	    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin $(JOB_USER) \
	      && echo "job-user: created the system user $(JOB_USER)"; \
	  fi; \
	  dir=$$(dirname "$$(readlink -f $(BIN)/python)"); \
	  while [ "$$dir" != / ]; do \
	    if [ -z "$$(find "$$dir" -maxdepth 0 -perm -o=x)" ]; then chmod o+x "$$dir" && echo "job-user: $$dir is now traversable"; fi; \
	    dir=$$(dirname "$$dir"); \
	  done; \
	fi

## Debian's Chromium for the dashboard's browser tests (tests/e2e/test_dashboard.py), where it can be installed
## (root and apt-get); elsewhere nothing, and `make test` ends with the command that installs it.
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the browser tests (tests/e2e/test_dashboard.py)"; \
	  { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	    || echo "chromium could not be installed: the browser tests will be skipped"; \
	fi

## The dashboard's screenshots in docs/screenshots/ (the README shows them), retaken by its browser tests.
screenshots: install browser job-user
	RUNLY_SCREENSHOTS=docs $(BIN)/pytest -q -p no:cacheprovider tests/e2e/test_dashboard.py

test-fast: install
	$(BIN)/pytest -q -m "not e2e" -p no:cacheprovider

## The full chaos suite: 100 item runs (120-240 items each, long enough for every fault to land on a running job)
## on 3 agents under kills, freezes and cancels; prints a table.
chaos: install
	$(BIN)/python -m tests.chaos.chaos --runs 100 --faults 24 --items 120

## ruff's checks and its formatting (Python files only: pyproject.toml's [tool.ruff.format] leaves docs/*.md alone).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy runly runly_core runly_client runly_cli functions node_agent infrastructure app.py tests

synth: install
	$(BIN)/python app.py

## Regenerate docs/openapi.json from the API's routes (a test fails when it is out of date).
openapi: install
	$(BIN)/python -m functions.api.openapi docs/openapi.json

## Benchmarks on the embedded stack beside Celery on SQS (~15 min on 2 cores, ~3 more for the bill's own stack; not
## part of `make test`): writes bench/results.json, bench/REPORT.md, bench/latency.png. `make bench BENCH_ARGS=--quick` for a short check.
BENCH_VENV := bench/.venv-celery
bench: install $(BENCH_VENV)/.installed
	$(BIN)/python -m bench $(BENCH_ARGS)

## The run store's capacity and bill from every AWS request the real code makes (~4 min on 2 cores; not part of
## `make test`): writes bench/capacity.json and bench/CAPACITY.md. `make capacity CAPACITY_ARGS="--design new"` on a
## re-keyed checkout adds its column beside the one already in capacity.json (docs/store.md, "How the bill is counted").
capacity: install
	$(BIN)/python -m bench.capacity $(CAPACITY_ARGS)

# Celery and matplotlib live in a venv of their own, never in the project's requirements.
$(BENCH_VENV)/.installed: bench/requirements-bench.txt $(VENV)/.installed
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BIN)/uv pip install --quiet --python $(BENCH_VENV)/bin/python --only-binary pycurl -r bench/requirements-bench.txt \
	  || { $(MAKE) bench-system-deps && $(BIN)/uv pip install --quiet --python $(BENCH_VENV)/bin/python -r bench/requirements-bench.txt; }
	touch $@

# pycurl builds from source where no wheel fits this machine: it needs libcurl's and OpenSSL's headers.
bench-system-deps:
	dpkg -s libcurl4-openssl-dev libssl-dev >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcurl4-openssl-dev libssl-dev; }

bench-lock: $(BIN)/python
	$(BIN)/uv pip compile bench/requirements-bench.in -o bench/requirements-bench.txt --python-version 3.11

## Recompile requirements.txt (every package pinned) from requirements.in.
lock: $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile requirements.in -o requirements.txt --python-version 3.11

clean:
	rm -rf $(VENV) .runly cdk.out dist
