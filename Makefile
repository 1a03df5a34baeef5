PYTHON ?= python3
.DEFAULT_GOAL := help

.PHONY: help install test test-unit lint typecheck smoke bench bench-cache bench-growth bench-defaults notebooks tensorboard clean

help:  ## this list: each target and what it does (`make` alone prints it)
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "%-14s %s\n", $$1, $$2}'

install:  ## install proj and its dev tools (torch from the pins in pyproject.toml)
	$(PYTHON) -m pip install -e ".[dev]"

WORKERS ?= 2
test:  ## the whole suite: unit tests and the slow end-to-end fits, in $(WORKERS) processes
	$(PYTHON) -m pytest -n $(WORKERS) --dist loadscope

test-unit:  ## unit tests only (< 3 minutes on 2 cores), in $(WORKERS) processes
	$(PYTHON) -m pytest -m "not slow" -n $(WORKERS) --dist loadscope

lint:  ## ruff: lint and formatting check (fix the format with `ruff format .`)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

typecheck:  ## mypy on src/proj
	$(PYTHON) -m mypy

DATA ?= data
smoke:  ## one short epoch on real MNIST in $(DATA)
	$(PYTHON) -m proj.fit --data.data_dir $(DATA) --trainer.max_epochs 1 --trainer.limit_train_batches 100 \
		--trainer.logger.init_args.save_dir /tmp/proj-smoke-logs

bench:  ## epoch seconds: classic loop vs proj (torchvision / resident pipelines) vs compute ceiling
	$(PYTHON) -m proj.bench --data_dir $(DATA) --output bench.json

bench-cache:  ## the resident cache: decode and load seconds, memory, for MNIST, Fashion-MNIST and 50,000 3x32x32 images
	$(PYTHON) -m proj.bench --cache --data_dir $(DATA) --output bench-cache.json

bench-growth:  ## an epoch's seconds and peak memory at 1, 2, 4 and 8 x 7,500 training images, both pipelines
	$(PYTHON) -m proj.bench --growth 7500 --output bench-growth.json

bench-defaults:  ## test accuracy of MLP and CNN with the class defaults vs a plain PyTorch loop, on five data sets (~15 min)
	$(PYTHON) -m proj.bench_defaults --data_dir $(DATA) --output bench-defaults.json

notebooks:  ## execute notebooks/*.ipynb (outputs are not saved) on MNIST in $(DATA)
	PROJ_DATA_DIR=$(abspath $(DATA)) $(PYTHON) -m pytest --nbmake notebooks/

tensorboard:  ## TensorBoard on the runs in logs/
	$(PYTHON) -m tensorboard.main --logdir logs

.PHONY: mlflow-server
MLFLOW_PORT ?= 5000
MLFLOW_WORKERS ?= 4
mlflow-server:  ## MLflow's tracking server on 127.0.0.1:$(MLFLOW_PORT): runs in mlflow.db (SQLite), artifacts in mlartifacts/
	$(PYTHON) -m mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS) \
		--backend-store-uri sqlite:///mlflow.db --artifacts-destination ./mlartifacts

clean:  ## remove logs/, the bench JSON files and the tools' caches
	rm -rf logs bench.json bench-cache.json bench-growth.json bench-defaults.json bench-serve.json bench-transfer.json \
		.pytest_cache .mypy_cache .ruff_cache

.PHONY: serve bench-serve
PORT ?= 8000
serve:  ## serve CKPT=<a .ckpt> over HTTP on 127.0.0.1:$(PORT): POST /predict, GET /health and /info, a page at /
	@test -n "$(CKPT)" || { echo "error: name the checkpoint: make serve CKPT=logs/cnn/version_0/checkpoints/last.ckpt" >&2; exit 2; }
	$(PYTHON) -m proj.serve --ckpt_path $(CKPT) --port $(PORT)

bench-serve:  ## requests/s and p50/p99 latency of proj.serve (batching on/off, PyTorch/ONNX) vs a plain server, MLP and CNN
	$(PYTHON) -m proj.serve_bench --data_dir $(DATA) --output bench-serve.json

.PHONY: bench-transfer
bench-transfer:  ## transfer: a timm net pretrained on Fashion classes 0-4 vs from scratch on 5-9, 50/100 images a class, 3 seeds
	$(PYTHON) -m proj.transfer --data_dir $(DATA) --output bench-transfer.json

.PHONY: gpu-check
gpu-check:  ## on a CUDA GPU: fit cnn.yaml, timm_small.yaml and bf16-mixed, time an epoch, check predict/export (else says so)
	$(PYTHON) -m proj.gpu_check --data_dir $(DATA)
