# Fresh machine: `make main` sets up .venv and runs the main job; `make test` runs the tests.
PYTHON ?= python3
# A CPU wheel by default; on a CUDA machine: make setup TORCH="torch==2.13.0 --index-url <your CUDA index>"
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data/strokes26
OUT ?= out

.PHONY: setup main test bench

$(BIN)/varmem: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(BIN)/varmem

setup: $(BIN)/varmem

# The main job on the embedded default dataset: build 1,000 procedural stroke characters at 26×26,
# train VMA on 780 of them for MAIN_STEPS steps (a few minutes on 2 CPU cores), then evaluate it on
# the 220 held-out characters: NLL tables, few-shot accuracy, and a one-shot sample grid under $(OUT)/.
MAIN_STEPS ?= 1000
RUN ?= runs/main_vma_strokes
main: setup
	$(BIN)/varmem data build --source strokes --classes 1000 --seed 0 --out $(DATA) --overwrite
	$(BIN)/varmem data verify $(DATA)
	$(BIN)/varmem data show $(DATA) --episode --out $(OUT)/episode.png
	$(BIN)/varmem train --config configs/vma_strokes.yaml --steps $(MAIN_STEPS) --out $(RUN) --overwrite \
		--set data.dir=$(DATA) --set train.val_every=250
	$(BIN)/varmem eval $(RUN) --samples 100 --episodes 20 --classification-episodes 300 --likelihood-episodes 20 \
		--tasks 5x1,20x1 --out-dir $(OUT) --save $(OUT)/main_eval.json

test: setup
	$(BIN)/python -m pytest tests -q

bench: setup
	$(BIN)/python -m varmem.benchmarks.bench_episodes
