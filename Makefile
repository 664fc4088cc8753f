# The two set-up commands of README.md. Everything installs from PyPI into ./.venv.
VENV ?= .venv
PYTHON ?= python3
PIP = $(VENV)/bin/pip

.PHONY: up test bench install install-test debian-packages bench-packages messages

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(VENV)/bin/python
	$(PIP) install -q -e .

install-test: $(VENV)/bin/python debian-packages
	$(PIP) install -q -e ".[test]"

# Debian packages the tests use: chromium for the browser tests (never a browser downloaded by
# a test tool) with a Chinese font for readable zh screenshots; promtool (package prometheus)
# to validate the alert rules; the container engine the workloads run in (podman with runc,
# netavark and iptables for its bridge, buildah's builds), mmdebstrap for the base image made
# from Debian's packages, docker-registry for the local registry custom images are pulled from
CONTAINER_PACKAGES = podman runc buildah netavark aardvark-dns iptables conmon catatonit \
	mmdebstrap docker-registry
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
debian-packages:
	@{ command -v chromium >/dev/null && command -v promtool >/dev/null && \
		[ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ]; } || \
		{ $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium fonts-wqy-zenhei \
		>/dev/null && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		--no-install-recommends prometheus >/dev/null; }
	@{ command -v podman >/dev/null && command -v runc >/dev/null && \
		command -v mmdebstrap >/dev/null && command -v docker-registry >/dev/null; } || \
		{ $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install \
		-y -qq --no-install-recommends $(CONTAINER_PACKAGES) >/dev/null; }

## make up: install Fermi and start the whole platform on this machine (ARGS="--port 8001" …)
up: install
	$(VENV)/bin/fermi up $(ARGS)

## make test: install what the tests need and run them all (frontend unit tests, then unit,
## hub-level, browser and restart tests)
test: install-test
	cd labextension && PATH="$(abspath $(VENV))/bin:$$PATH" jlpm test
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Debian packages the benchmarks use: wrk, the HTTP load generator of P3
bench-packages:
	@command -v wrk >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk >/dev/null; }

## make bench: every figure of benchmarks/README.md, even after one falls short (the target
## fails at the end if any did); records the run in benchmarks/RESULTS.md (BENCH_ARGS="--only
## p1,r2" or "--quick" for fewer or shorter figures)
bench: install-test bench-packages
	$(VENV)/bin/python benchmarks/run_all.py $(BENCH_ARGS)

## make messages: after changing user-visible text — the .pot from the code, merged into each
## .po (translate the new entries of fermi_extension/locale/zh_CN/LC_MESSAGES/fermi.po, then run
## it again), and the lab's fermi.json and the lab's generated API types brought up to date
messages: $(VENV)/bin/python
	$(VENV)/bin/python -m fermi_extension.i18n extract
	$(VENV)/bin/python -m fermi_extension.i18n compile
	cd labextension && PATH="$(abspath $(VENV))/bin:$$PATH" jlpm build:api-types
