# Every target creates the virtual environment and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# A simulated session, in two terminals: `make sim-serve`, then `make call` (see simulator/cli.py).
# SESSION names it, so that several can run at once; ARGS passes options, e.g. ARGS="--seconds 30".
SESSION ?= default
ARGS ?=

.PHONY: demo demo-cluster test lint services console-png serve sim-serve call bench clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m simulator demo --out demo-output

# The same call through two nodes on real Redis and PostgreSQL (see README, "Several processes").
demo-cluster: $(STAMP) services
	$(BIN)/python -m simulator demo --cluster --out demo-output-cluster

test: lint services
	$(BIN)/python -m pytest

# The tests start their own Redis and PostgreSQL on free ports (simulator/servers.py) from Debian's
# binaries, and drive the console in Debian's headless Chromium (tests/browser/): installed here
# when missing (as root), else named. A cluster the postgresql package may start on port 5432 is
# not used.
services:
	@if command -v redis-server >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 \
			&& command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		:; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			redis-server postgresql chromium chromium-driver; \
	else \
		echo "The tests need redis-server, PostgreSQL and Chromium: install the Debian packages redis-server," \
			"postgresql, chromium and chromium-driver (sudo apt-get install ...), or run make test as root." >&2; \
		exit 1; \
	fi

# docs/console.png: the console during a simulated call, from the browser test that shows one.
console-png: $(STAMP) services
	CONSOLE_PNG=docs/console.png $(BIN)/python -m pytest tests/browser -k during_a_call -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

serve: $(STAMP)
	$(BIN)/python app.py

# The server (python app.py) with the simulator's environment: free ports, its own database.
sim-serve: $(STAMP)
	$(BIN)/python -m simulator serve --session $(SESSION) $(ARGS)

# One call against `make sim-serve`: prints curl commands to inject into it, hangs up on Ctrl-C.
call: $(STAMP)
	$(BIN)/python -m simulator call --session $(SESSION) $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_recording.py
	$(BIN)/python bench/bench_codecs.py
	$(BIN)/python bench/bench_transport.py
	$(BIN)/python bench/bench_simulator.py
	$(BIN)/python bench/bench_loopback.py
	$(BIN)/python bench/bench_load.py

clean:
	rm -rf $(VENV) data demo-output demo-output-cluster bench/out
