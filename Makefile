# Set-up, demo, tests and benchmarks. Every target creates the virtual environment first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

MODEL ?= openai/clip-vit-base-patch32
IMAGES ?= tests/data/reference
QUERIES ?= tests/data/queries
# The species table beside the photo folder, when there is one.
CSV ?= $(wildcard $(IMAGES)/../species.csv)
DEMO_INDEX ?= build/demo-index

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m indexer --images "$(IMAGES)" --out "$(DEMO_INDEX)" --model "$(MODEL)" $(if $(CSV),--csv "$(CSV)")
	$(PY) -m handler identify --index "$(DEMO_INDEX)" --model "$(MODEL)" "$(QUERIES)"/*

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench.encoder_throughput
	$(PY) -m bench.search

clean:
	rm -rf build
