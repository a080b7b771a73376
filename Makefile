# vhdkit developer entry points. `make test` sets everything up on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

# Debian packages the tests and demo use (Python venv support and Node.js/npm are checked too).
APT_PACKAGES := qemu-utils ntfs-3g e2fsprogs xfsprogs dosfstools btrfs-progs apfsprogs lzop fdisk mtools file syslinux-common p7zip-full
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_STAMP := $(VENV)/.stamp-pip
NPM_STAMP := $(VENV)/.stamp-npm
LINT_PATHS := src tests fixtures benchmarks
PYTEST_ARGS ?=
# The venv's tools (vhdkit, python) come first on PATH for tests, demo and benchmarks.
RUN := PATH="$(CURDIR)/$(BIN):$$PATH"

.PHONY: test lint demo bench setup sysdeps fixture-debs clean FORCE

test: setup fixture-debs
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy
	$(RUN) bash scripts/with-azurite.sh $(BIN)/pytest $(PYTEST_ARGS)

lint: $(PIP_STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy

demo: setup
	$(RUN) bash scripts/with-azurite.sh bash scripts/demo.sh

# run_all.py starts a fresh Azurite (scripts/with-azurite.sh) for each upload part itself.
bench: setup
	$(RUN) $(BIN)/python benchmarks/run_all.py

setup: $(PIP_STAMP) $(NPM_STAMP)

# Cheap on every run: dpkg/command checks only; apt-get runs only when something is missing.
sysdeps:
	PYTHON=$(PYTHON) bash scripts/ensure-sysdeps.sh $(APT_PACKAGES)

$(VENV)/pyvenv.cfg: | sysdeps
	$(PYTHON) -m venv $(VENV)

$(PIP_STAMP): pyproject.toml $(VENV)/pyvenv.cfg
	$(BIN)/pip install --quiet --editable '.[test]'
	touch $@

# FORCE when node_modules lost Azurite, so a deleted node_modules is reinstalled.
$(NPM_STAMP): package.json package-lock.json \
		$(if $(wildcard node_modules/.bin/azurite-blob),,FORCE) | sysdeps $(VENV)/pyvenv.cfg
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Real Debian packages for the Linux pre-flight fixtures: apt-get download (running apt-get
# update first when the lists are missing), cached in ~/.cache/vhdkit-fixtures; offline later.
fixture-debs: $(PIP_STAMP)
	$(RUN) $(BIN)/python fixtures/debian_pkgs.py

FORCE:

clean:
	rm -rf $(VENV) node_modules demo-out build .mypy_cache .ruff_cache .pytest_cache .benchmarks \
		.hypothesis
	find src tests fixtures benchmarks -name __pycache__ -type d -prune -exec rm -rf {} +
	find src -maxdepth 1 -name '*.egg-info' -exec rm -rf {} +
