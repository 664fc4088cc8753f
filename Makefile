# The two set-up commands of README.md. Everything installs from PyPI into ./.venv.
VENV ?= .venv
PYTHON ?= python3
PIP = $(VENV)/bin/pip

.PHONY: up test bench install install-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(VENV)/bin/python
	$(PIP) install -q -e .

install-test: $(VENV)/bin/python
	$(PIP) install -q -e ".[test]"

## make up: install Fermi and start the whole platform on this machine (ARGS="--port 8001" …)
up: install
	$(VENV)/bin/fermi up $(ARGS)

## make test: install what the tests need and run them all (unit, hub-level, restart)
test: install-test
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
