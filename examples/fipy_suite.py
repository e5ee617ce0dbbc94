"""FiPy's own test suite with ``LinearPCGSolver`` as its default solver, on SciPy's cg or on linsolve's.

FiPy 4's SciPy suite defaults to an LU solver; FiPy 3.x's defaulted to ``LinearPCGSolver``
(SciPy's ``cg``). This script makes ``LinearPCGSolver`` the default again and runs FiPy's
tests (``fipy_test --modules --examples --scipy``) with the ``cg`` behind it chosen by
``--cg``:

* ``scipy``: SciPy's ``cg`` (the reference);
* ``linsolve``: ``linsolve.cg`` in its place (the plain swap);
* ``auto``: everything inside ``linsolve.patch_scipy()`` (``linsolve.auto_cg``).

FiPy's examples ship only in its source distribution; run this from the unpacked sdist::

    pip download fipy==4.0.3 --no-binary :all: --no-deps && tar xzf fipy-4.0.3.tar.gz
    cd fipy-4.0.3 && python /path/to/linsolve/examples/fipy_suite.py --cg linsolve

It prints FiPy's unittest summary (``FAILED (failures=..., errors=...)``) at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys


def _use_pcg_by_default() -> None:
    import fipy
    import fipy.solvers
    import fipy.solvers.scipy as suite

    for module in (fipy, fipy.solvers, suite):
        module.DefaultSolver = suite.LinearPCGSolver


def _cg_context(which: str):
    import linsolve

    if which == "scipy":
        return contextlib.nullcontext()
    if which == "auto":
        return linsolve.patch_scipy()
    if which == "linsolve":
        return _swap_fipy_cg(linsolve.cg)
    raise ValueError(f"--cg must be scipy, linsolve or auto, got {which!r}")


@contextlib.contextmanager
def _swap_fipy_cg(cg):
    # FiPy binds SciPy's cg at class definition (LinearCGSolver.solveFnc = staticmethod(cg)).
    from fipy.solvers.scipy.linearCGSolver import LinearCGSolver

    original = LinearCGSolver.__dict__["solveFnc"]
    LinearCGSolver.solveFnc = staticmethod(cg)
    try:
        yield
    finally:
        LinearCGSolver.solveFnc = original


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cg", choices=("scipy", "linsolve", "auto"), default="linsolve")
    parser.add_argument("--modules-only", action="store_true", help="skip FiPy's examples")
    args = parser.parse_args(argv)
    os.environ["FIPY_SOLVERS"] = "scipy"
    sys.path.insert(0, os.getcwd())  # FiPy's examples package lives in the sdist
    _use_pcg_by_default()
    from fipy.tests.test import app

    tests = ["--modules"] + ([] if args.modules_only else ["--examples"])
    with _cg_context(args.cg):
        try:
            app(tests + ["--scipy"], standalone_mode=False)
        except SystemExit as exc:
            return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
