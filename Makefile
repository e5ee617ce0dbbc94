# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.linsolve-installed

.PHONY: demo test bench bench-quick clean
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

# The CPU benchmarks (hours on 2 cores): bench/results/*.json, plots, then docs/RESULTS.md and the README figure.
# `make bench-quick` runs their --quick modes (minutes) into build/bench-quick, leaving bench/results alone.
BENCHES ?= kernels poisson fluid cfd relax dcdm
bench: $(STAMP)
	@for name in $(BENCHES); do echo "== bench/$$name.py"; $(PY) bench/$$name.py || exit 1; done
	$(PY) bench/readme_results.py --readme README.md

bench-quick: $(STAMP)
	@for name in $(BENCHES); do echo "== bench/$$name.py --quick"; \
		$(PY) bench/$$name.py --quick --out build/bench-quick || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
