# One virtual environment in .venv; `make demo` and `make test` set it up on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch is pinned and installed first: an unpinned resolve can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The main job on its built-in default: a digits CNN that does not fit an 8 KiB MCU, searched
# across the model and memory levels until it does (report in out/optimize/report.html).
demo: setup
	$(BIN)/crosslevel optimize -o out/optimize

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q --durations=15

bench: setup
	$(BIN)/python benchmarks/arena_tflm.py
	$(BIN)/python benchmarks/cost_model_error.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/planning_scale.py
	$(BIN)/python benchmarks/compression.py
	$(BIN)/python benchmarks/codegen.py
	$(BIN)/python benchmarks/search.py
	$(BIN)/python benchmarks/adapt.py
	$(BIN)/python benchmarks/partition.py
	$(BIN)/python benchmarks/distributed.py
	$(BIN)/python benchmarks/federated.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
