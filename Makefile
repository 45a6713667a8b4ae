# Two entry points that work on a fresh machine with nothing but Python:
#   make demo   -> creates .venv if missing, installs, runs the demo on the bundled model
#   make test   -> same set-up, then ruff and the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# How *this* machine installs torch (see DEVELOPERS.md); users may override with TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev,server,onnx]'
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
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
