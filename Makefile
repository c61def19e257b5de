# unmix-ports: two environments, one suite.
#   make setup   create .venv (Python 3.11) and .venv-nnabla (Python 3.10), install the project into both, the
#                demucs 4.1.0 oracle into .oracle-demucs4, provide ffmpeg
#   make test    the whole suite in both environments (fails if either fails or the NNabla run executes no test)
#   make demo    separate the stempeg example clip and print the SDR table
#   make lint    ruff
#   make fixtures  regenerate parity_tests/fixtures from the upstream code
#   make docs    the side-by-side book (MkDocs, strict) into site/; make docs-serve serves it
#   make bench   every port against upstream in one run (make bench-quick: seconds-long inputs, checks the command)

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# this machine's pip configuration names local index folders that may be absent: keep their warnings out of logs
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
.DEFAULT_GOAL := help

VENV     := .venv
NNVENV   := .venv-nnabla
PY       := $(VENV)/bin/python
NNPY     := $(NNVENV)/bin/python
ORACLE4  := .oracle-demucs4
PYTEST_ARGS ?=

export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONDONTWRITEBYTECODE := 1

# A usable interpreter of a given version: on PATH first (pyenv shims answer even when that version is not
# selected, so run it), then under pyenv's versions folder.
find_python = $(firstword $(shell \
	for c in python$(1) $$(ls -d $$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/$(1).*/bin/python$(1) 2>/dev/null | sort -V -r); do \
		"$$c" -c 'import sys; assert sys.version_info[:2] == tuple(map(int, "$(1)".split(".")))' >/dev/null 2>&1 && { echo "$$c"; break; }; \
	done))

.PHONY: help setup test test-main test-nnabla test-docs docs docs-serve demo lint fixtures ffmpeg clean gpu-check bench bench-quick

help:
	@sed -n '2,10p' Makefile

setup: $(VENV)/.installed $(VENV)/.docs-installed $(ORACLE4)/.installed $(NNVENV)/.installed ffmpeg

$(VENV)/.installed: requirements/main.txt requirements/oracles.txt pyproject.toml
	@py=$(call find_python,3.11); \
	if [ -z "$$py" ]; then echo "make setup: Python 3.11 not found (looked for python3.11 on PATH and under \$$(pyenv root)/versions/3.11.*); install it, e.g. 'pyenv install 3.11'" >&2; exit 1; fi; \
	echo "setup: $(VENV) with $$py"; \
	[ -x $(PY) ] || "$$py" -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools $(QUIET_PIP)
	$(PY) -m pip install -q -r requirements/main.txt $(QUIET_PIP)
	$(PY) -m pip install -q --no-deps -r requirements/oracles.txt $(QUIET_PIP)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . $(QUIET_PIP)
	@touch $@

# the documentation site's pins (requirements/docs.txt), on top of the main environment
$(VENV)/.docs-installed: requirements/docs.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements/docs.txt $(QUIET_PIP)
	@touch $@

# The Demucs v4 oracle (demucs 4.1.0, the module 'demucs' like 2.0.3): a --target folder, not an environment,
# put first on PYTHONPATH of a subprocess of .venv's Python by parity_tests/oracle4.py. Rebuilt from scratch
# (pip --target does not replace what a folder holds).
$(ORACLE4)/.installed: requirements/oracle4.txt $(VENV)/.installed
	rm -rf $(ORACLE4)
	$(PY) -m pip install -q --no-deps --target $(ORACLE4) -r requirements/oracle4.txt $(QUIET_PIP)
	@touch $@

$(NNVENV)/.installed: requirements/nnabla.txt pyproject.toml
	@py=$(call find_python,3.10); \
	if [ -z "$$py" ]; then echo "make setup: Python 3.10 not found (nnabla 1.39 has no wheel for 3.11; looked for python3.10 on PATH and under \$$(pyenv root)/versions/3.10.*); install it, e.g. 'pyenv install 3.10'" >&2; exit 1; fi; \
	echo "setup: $(NNVENV) with $$py"; \
	[ -x $(NNPY) ] || "$$py" -m venv $(NNVENV)
	$(NNPY) -m pip install -q --upgrade pip setuptools $(QUIET_PIP)
	$(NNPY) -m pip install -q -r requirements/nnabla.txt $(QUIET_PIP)
	$(NNPY) -m pip install -q --no-deps --no-build-isolation -e . $(QUIET_PIP)
	@touch $@

# stempeg (and musdb) decode stem files with the ffmpeg and ffprobe executables.
ffmpeg:
	@if command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "setup: installing ffmpeg (Debian package)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; \
	else \
		echo "make setup: ffmpeg and ffprobe are needed to read the stempeg example (stem files); install them, e.g. 'sudo apt-get install ffmpeg' or 'brew install ffmpeg'" >&2; exit 1; \
	fi

test: setup
	@rm -f parity_tests/report/*.json  # the report (scripts/parity_report.py) is this run's only
	@status=0; \
	$(MAKE) --no-print-directory test-main || status=1; \
	$(MAKE) --no-print-directory test-nnabla || status=1; \
	$(MAKE) --no-print-directory test-docs || status=1; \
	if [ $$status != 0 ]; then echo "make test: FAILED (see above)" >&2; fi; exit $$status

# Main environment: everything but the NNabla port.
# One pytest run per group, each with fresh worker processes: a worker then holds one framework's runtime and
# caches (compiled functions, thread pools), not all three.
MAIN_GROUPS := "parity_tests/spec parity_tests/upstream parity_tests/convert" parity_tests/sweep parity_tests/torch parity_tests/tf parity_tests/jax parity_tests/separate parity_tests/parity_cli parity_tests/docs parity_tests/bench

test-main:
	@echo "== tests in $(VENV) (Python 3.11: NumPy reference, upstream oracles, torch/tf/jax ports)"
	@status=0; for group in $(MAIN_GROUPS); do \
		echo "-- $$group"; \
		$(PY) -m pytest -p no:cacheprovider -n 2 --dist loadfile $$group $(PYTEST_ARGS) || status=1; \
	done; exit $$status

NNABLA_TESTS := parity_tests/convert/test_reader_torchfree.py parity_tests/convert/test_cli.py $(wildcard parity_tests/nnabla) parity_tests/separate_nnabla

# NNabla environment: the torch-free spec tests (against the committed fixtures) and the NNabla port.
# UNMIX_REQUIRE_TESTS makes the run fail when no test passed.
test-nnabla:
	@echo "== tests in $(NNVENV) (Python 3.10: NumPy reference against committed fixtures, NNabla port)"
	UNMIX_REQUIRE_TESTS=1 $(NNPY) -m pytest -p no:cacheprovider parity_tests/spec $(NNABLA_TESTS) $(PYTEST_ARGS)

# The side-by-side book (book/, mkdocs.yml): every code block extracted from the spec and the ports at build time;
# a missing target fails the build (UNMIX_BOOK_ALLOW_MISSING=1 shows placeholders instead, for development).
# test-docs runs last in 'make test', so the parity page reads this run's report.
# Not --quiet: it stops mkdocs logging warnings, so --strict counts none and a broken link passes. Instead the
# INFO records (with their indented continuation lines) are left out of the output; warnings, errors and the
# "Aborted with N warnings" line are shown, and the exit status is mkdocs' (pipefail).
MKDOCS_NO_INFO := awk '/^INFO/ {skip = 1; next} /^[^ \t]/ || /^$$/ {skip = 0} !skip'

test-docs: $(VENV)/.docs-installed $(NNVENV)/.installed
	@echo "== the book: mkdocs build --strict (INFO lines left out)"
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict 2>&1 | $(MKDOCS_NO_INFO)

docs: $(VENV)/.docs-installed $(NNVENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict
	@echo "docs: open site/index.html"

docs-serve: $(VENV)/.docs-installed $(NNVENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

demo: setup
	$(PY) scripts/demo.py --out out

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

fixtures: $(VENV)/.installed
	$(PY) parity_tests/make_fixtures.py

# every port and upstream in one run (benchmarks/results/latest.{json,md,png}); bench-quick: seconds-long inputs
bench: setup
	$(PY) -m benchmarks

bench-quick: setup
	$(PY) -m benchmarks --quick

# On a CUDA machine without the project's environments (scripts/gpu_check.sh, docs/parity.md):
#   make gpu-check OUT=out/gpu-check [WHEELS=DIR] [DEVICE=cpu] [GPU_PYTHON=python3]
gpu-check:
	bash scripts/gpu_check.sh --device $(or $(DEVICE),gpu) $(if $(WHEELS),--wheels $(WHEELS)) --python $(or $(GPU_PYTHON),python3) $(or $(OUT),out/gpu-check)

clean:
	rm -rf $(VENV) $(NNVENV) $(ORACLE4) out parity_tests/report site build/book
