# PETSc backend (linsolve.backends.petsc): included from the Makefile after VENV/PY/STAMP are defined.
#
#   make petsc-install    apt libraries (if missing) + mpi4py + PETSc 3.26.1 + petsc4py into .venv (stamp file)
#   make petsc-optional   the same, but a failure only prints a warning (the PETSc tests then skip)
#   make test-petsc       the PETSc tests (they launch `mpiexec -n 2` themselves, with timeouts)
#
# The first build compiles PETSc and petsc4py from source (about 9 min on 2 cores, see docs/PETSC.md); pip
# keeps the built wheels in its cache (~/.cache/pip/wheels), so later installs into a fresh .venv take seconds.
PETSC_VERSION ?= 3.26.1
PETSC_STAMP := $(VENV)/.petsc-installed
PETSC_FAILED := $(VENV)/.petsc-failed
PETSC_APT_PACKAGES := libopenblas-dev liblapack-dev libopenmpi-dev openmpi-bin
PETSC_CONFIGURE := --with-fc=0 --with-cxx=0 --with-cudac=0 --with-x=0 --with-debugging=0 COPTFLAGS=-O2
# No hypre: Debian 12's libhypre-dev (2.26) configures but does not compile with PETSc 3.26.1 (PETSc uses
# HYPRE_INT_MAX, hypre_ParILUData and ILU/IJ functions that appear only in later hypre releases), and
# --download-hypre needs network access and would add the hypre build to the first `make test`.
# Details in docs/PETSC.md ("hypre: not built, and why"); the benchmark compares against GAMG instead.

.PHONY: petsc-install petsc-optional petsc-apt test-petsc

petsc-install: $(PETSC_STAMP)

# apt-get only when a library is missing, so repeated runs cost one dpkg query.
petsc-apt:
	@if command -v dpkg >/dev/null 2>&1; then \
	  if ! dpkg -s $(PETSC_APT_PACKAGES) >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; \
	    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	    else echo "petsc: need root to apt-get install $(PETSC_APT_PACKAGES)"; exit 1; fi; \
	    echo "petsc: apt-get install $(PETSC_APT_PACKAGES)"; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(PETSC_APT_PACKAGES); \
	  fi; \
	elif ! command -v mpicc >/dev/null 2>&1 || ! command -v mpiexec >/dev/null 2>&1; then \
	  echo "petsc: not a Debian system and no MPI (mpicc/mpiexec) found: install MPI, BLAS and LAPACK first"; \
	  exit 1; \
	fi

$(PETSC_STAMP): $(STAMP)
	@$(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) petsc-apt
	$(PY) -m pip install "mpi4py>=3.1,<5"
	@echo "petsc: building PETSc $(PETSC_VERSION) + petsc4py (first time about 9 min; later runs use pip's wheel cache)"
	PETSC_CONFIGURE_OPTIONS='$(PETSC_CONFIGURE)' $(PY) -m pip install petsc==$(PETSC_VERSION)
	PETSC_DIR=$$($(PY) -c 'import petsc; print(petsc.get_petsc_dir())') CFLAGS='-O1 -g0' \
	  $(PY) -m pip install petsc4py==$(PETSC_VERSION)
	@# A cached petsc4py wheel links (RUNPATH) to the PETSc of the venv it was built in; if that path is
	@# gone (checkout moved), rebuild it against this venv's PETSc and cache the new wheel.
	@$(PY) -c "from petsc4py import PETSc" 2>/dev/null || { \
	  echo "petsc: cached petsc4py wheel was built against another PETSc path; rebuilding it"; \
	  $(PY) -m pip cache remove petsc4py >/dev/null 2>&1; \
	  PETSC_DIR=$$($(PY) -c 'import petsc; print(petsc.get_petsc_dir())') CFLAGS='-O1 -g0' \
	    $(PY) -m pip install --force-reinstall --no-deps petsc4py==$(PETSC_VERSION); }
	$(PY) -c "from petsc4py import PETSc; from mpi4py import MPI; print('petsc4py', PETSc.Sys.getVersion(), 'OK')"
	touch $(PETSC_STAMP)

# For `make test`: a machine that cannot build PETSc still runs the rest of the suite.
# A failed build is remembered ($(PETSC_FAILED)) so later `make test` runs do not retry it every time.
petsc-optional:
	@if [ -f $(PETSC_FAILED) ]; then \
	  echo "petsc: skipped (an earlier build failed; rm $(PETSC_FAILED) to retry); PETSc tests will be skipped"; \
	elif ! $(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) petsc-install; then \
	  touch $(PETSC_FAILED); \
	  echo "WARNING: the PETSc backend could not be installed; its tests will be skipped (see docs/PETSC.md)"; \
	fi

test-petsc: $(PETSC_STAMP)
	$(PY) -m pytest -q tests/test_petsc.py
