# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.linsolve-installed

.PHONY: demo test bench clean
.DEFAULT_GOAL := demo

include mk/petsc.mk

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, pinned to the CPU wheel on disk; the [torch] extra's requirement stays a range.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[torch,test,notebooks,clients]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/linsolve demo

test: $(STAMP)
	@$(MAKE) --no-print-directory petsc-optional
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
