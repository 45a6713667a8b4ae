# Two entry points that work on a fresh machine with nothing but Python:
#   make demo   -> creates .venv if missing, installs, runs the demo on the bundled model
#   make test   -> same set-up, then ruff and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# How *this* machine installs torch (see DEVELOPERS.md); users may override with TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format install install-browser clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev,server,browser,onnx,ray,lancedb,qdrant]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/counterclip demo --out demo-out

lint: $(STAMP)
	$(BIN)/ruff check counterclip tests scripts
	$(BIN)/ruff format --check counterclip tests scripts

format: $(STAMP)
	$(BIN)/ruff format counterclip tests scripts
	$(BIN)/ruff check --fix counterclip tests scripts

test: $(STAMP) lint
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  echo "NOTE: the browser tests (tests/browser) will be SKIPPED: Chromium or chromedriver is not installed; install them with 'make install-browser' (as root: apt-get install -y chromium chromium-driver)"
	$(BIN)/python -m pytest -q -rs

# Build speed: the pure model beside the exact (default) and the fast (--fast-decode) build pipelines
bench: $(STAMP)
	$(BIN)/python scripts/bench_build.py

# Debian's Chromium and its driver, for the browser tests (needs root; no browser is ever downloaded by a tool)
install-browser:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver

clean:
	rm -rf $(VENV) demo-out test-output .pytest_cache .ruff_cache
