# Everything installs from nothing but python3, node/npm, make and git.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export UV_NO_CONFIG := 1

.PHONY: install run up test test-fast lint typecheck synth lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

install: $(VENV)/.installed

## The embedded stack, the example job packed, pushed and run: ends with a Succeeded run.
run: install
	$(BIN)/runly local demo

## The embedded stack, until Ctrl-C.
up: install
	$(BIN)/runly local up

## The whole test suite (what CI runs).
test: install lint
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: install
	$(BIN)/pytest -q -m "not e2e" -p no:cacheprovider

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy runly functions node_agent infrastructure app.py

synth: install
	$(BIN)/python app.py

## Recompile requirements.txt (every package pinned) from requirements.in.
lock: $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile requirements.in -o requirements.txt --python-version 3.11

clean:
	rm -rf $(VENV) .runly cdk.out dist
