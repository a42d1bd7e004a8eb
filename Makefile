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
# then draw the class grid and one VMA training episode.
main: setup
	$(BIN)/varmem data build --source strokes --classes 1000 --seed 0 --out $(DATA) --overwrite
	$(BIN)/varmem data verify $(DATA)
	$(BIN)/varmem data show $(DATA) --out $(OUT)/strokes_classes.png
	$(BIN)/varmem data show $(DATA) --episode --out $(OUT)/episode.png

test: setup
	$(BIN)/python -m pytest tests -q

bench: setup
	$(BIN)/python -m benchmarks.bench_episodes
