# Every target creates the virtual environment and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint serve bench clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m simulator demo --out demo-output

test: lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

serve: $(STAMP)
	$(BIN)/python app.py

bench: $(STAMP)
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_transport.py
	$(BIN)/python bench/bench_simulator.py
	$(BIN)/python bench/bench_loopback.py
	$(BIN)/python bench/bench_load.py

clean:
	rm -rf $(VENV) data demo-output bench/out
