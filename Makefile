# Two set-up commands on a fresh machine: `make demo` and `make test` (see README.md).
# Both create .venv if it is missing, install torch first (so that nothing later pulls a
# different build of it) and then this package with its GPU and test extras.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sanawm-installed
PYTEST_ARGS ?=

.PHONY: demo test test-slow bench install clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[gpu,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sanawm-gym demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/sanawm-gym bench render

clean:
	rm -rf $(VENV) *.egg-info outputs
