# Two set-up commands on a fresh machine: `make demo` and `make test` (see README.md).
# Both create .venv if it is missing and install torch first (TORCH_SPEC, passed again to
# every later install so that nothing pulls a different build of it). `make demo` then
# installs the package with its main dependencies only; `make test` adds the `gpu` and
# `test` extras (fla, Triton and ModelOpt: their CPU-checkable parts are tested too).
# Two stamps: `make test` after `make demo` adds the extras to the same environment.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
MAIN_STAMP := $(VENV)/.sanawm-main
ALL_STAMP := $(VENV)/.sanawm-all
PYTEST_ARGS ?=

.PHONY: demo test test-slow bench install install-all clean

install: $(MAIN_STAMP)

install-all: $(ALL_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(MAIN_STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e . "$(TORCH_SPEC)"
	touch $(MAIN_STAMP)

$(ALL_STAMP): $(MAIN_STAMP)
	$(PY) -m pip install -q -e ".[gpu,test]" "$(TORCH_SPEC)"
	touch $(ALL_STAMP)

demo: $(MAIN_STAMP)
	$(VENV)/bin/sanawm-gym demo

test: $(ALL_STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(ALL_STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: $(MAIN_STAMP)
	$(VENV)/bin/sanawm-gym bench render

clean:
	rm -rf $(VENV) *.egg-info outputs
