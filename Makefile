# Two commands a new user needs: `make quickstart` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The dashboard's browser test drives Debian's Chromium (through playwright, which
# downloads nothing); installed here when missing, so a fresh machine runs it too.
CHROMIUM := /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: quickstart test test-all lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium fonts-dejavu-core

quickstart: $(STAMP)
	$(BIN)/stratalens run examples/quickstart.yaml
	$(BIN)/stratalens report quickstart --out stratalens-report

test: $(STAMP) $(CHROMIUM)
	$(BIN)/pytest -q

test-all: $(STAMP) $(CHROMIUM)
	$(BIN)/pytest -q -m "not gpu"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf stratalens-store stratalens-report .pytest_cache
