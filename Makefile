# The two set-up commands of README.md. Everything installs from PyPI into ./.venv.
VENV ?= .venv
PYTHON ?= python3
PIP = $(VENV)/bin/pip

.PHONY: up test bench install install-test debian-packages

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(VENV)/bin/python
	$(PIP) install -q -e .

install-test: $(VENV)/bin/python debian-packages
	$(PIP) install -q -e ".[test]"

# Debian packages the tests use: chromium for the browser tests (never a browser downloaded by
# a test tool) with a Chinese font for readable zh screenshots; promtool (package prometheus)
# to validate the alert rules
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
debian-packages:
	@{ command -v chromium >/dev/null && command -v promtool >/dev/null && \
		[ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ]; } || \
		{ $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-wqy-zenhei \
		>/dev/null && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		--no-install-recommends prometheus >/dev/null; }

## make up: install Fermi and start the whole platform on this machine (ARGS="--port 8001" …)
up: install
	$(VENV)/bin/fermi up $(ARGS)

## make test: install what the tests need and run them all (frontend unit tests, then unit,
## hub-level, browser and restart tests)
test: install-test
	cd labextension && PATH="$(abspath $(VENV))/bin:$$PATH" jlpm test
	$(VENV)/bin/pytest $(PYTEST_ARGS)

## make bench: the benchmarks of benchmarks/README.md
bench: install-test
	$(VENV)/bin/python benchmarks/p1_turnaround.py
	$(VENV)/bin/python benchmarks/p2_load.py
	$(VENV)/bin/python benchmarks/m1_memory.py
	$(VENV)/bin/python benchmarks/p3_throughput.py
	$(VENV)/bin/python benchmarks/p4_autoscale.py
	$(VENV)/bin/python benchmarks/r2_replica_kill.py
	$(VENV)/bin/python benchmarks/m2_memory.py
