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

.PHONY: venv demo test bench clean serve browser

# Debian's Chromium for the browser tests and for looking at the page; Playwright drives
# it and never downloads a browser of its own. Needs root (or sudo) to install.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

venv: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		echo "installing Chromium from Debian's packages"; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

# S3 (moto), an index of $(IMAGES), the API and the web page on 127.0.0.1 until Ctrl-C.
serve: $(STAMP)
	$(PY) -m infra.local_stack --model "$(MODEL)" --images "$(IMAGES)" $(if $(CSV),--csv "$(CSV)")

demo: $(STAMP)
	$(PY) -m indexer --images "$(IMAGES)" --out "$(DEMO_INDEX)" --model "$(MODEL)" $(if $(CSV),--csv "$(CSV)")
	$(PY) -m handler identify --index "$(DEMO_INDEX)" --model "$(MODEL)" "$(QUERIES)"/*

test: $(STAMP) browser
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench.encoder_throughput
	$(PY) -m bench.search

clean:
	rm -rf build
