"""The catalog of bad inputs every public entry point must reject clearly (issue: hardening).

It lives in the package (the top layer: it calls every entry point) so that
both the tests and the docs generator read it without importing from tests/.

Each case is a zero-argument call (given a scratch folder) and what must happen:
an exception of a given type whose message contains given words, or, for
numerical breakdowns that can only be seen while iterating, a negative
``info``. ``tests/test_bad_input_catalog.py`` runs them all, and
``docs/make_error_catalog.py`` turns them into ``docs/ERRORS.md``.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import numpy as np
import scipy.io
import scipy.sparse as sp
import scipy.sparse.linalg as sla

import linsolve

MARKER_NAME = "pickle-code-ran"


@dataclass
class Case:
    id: str
    area: str
    description: str
    call: Callable[[Path], Any]
    error: Optional[type] = None
    words: Tuple[str, ...] = ()
    negative_info: bool = False
    exit_code: Optional[int] = None


def _poisson2d(n=8):
    return linsolve.problems.poisson((n, n))


def _nonsym(n=8):
    A = _poisson2d(n).tolil()
    A[0, 1] = -0.5
    return A.tocsr()


def _zero_diag(n=6):
    A = _poisson2d(n).tolil()
    A[5, 5] = 0.0
    return A.tocsr()


def _neg_diag(n=6):
    A = _poisson2d(n).tolil()
    A[3, 3] = -4.0
    return A.tocsr()


def _indefinite():
    # p^T A p = 0 on the first step from b = ones (a negative definite A is fine for CG, as in SciPy).
    return sp.diags([1.0, -1.0, 2.0, -2.0]).tocsr()


def _neumann_1d(n=40):
    A = sp.diags([-np.ones(n - 1), 2.0 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], format="lil")
    A[0, 0] = A[n - 1, n - 1] = 1.0
    return A.tocsr()


def _neumann_2d(n=8):
    A = _poisson2d(n)
    return (A - sp.diags(np.asarray(A.sum(axis=1)).ravel())).tocsr()  # every row sums to zero


def _compact_pressure(n=24):
    cells = np.full((n, n), linsolve.problems.SOLID, dtype=np.int8)
    cells[1:-1, 1:-1] = linsolve.problems.FLUID
    cells[n // 3:2 * n // 3, n // 3:2 * n // 3] = linsolve.problems.SOLID
    cells[-1, 1:-1] = linsolve.problems.AIR
    A = linsolve.problems.pressure_matrix(cells)
    keep = np.flatnonzero(cells.ravel() == linsolve.problems.FLUID)
    return A[keep][:, keep].tocsr()


def _pinned_row(n=16):
    A = linsolve.problems.poisson((n, n), bc="neumann").tolil()
    A[0, :] = 0.0
    A[0, 0] = 1.0
    return A.tocsr()


def _fluid_cells(shape=(8, 8)):
    cells = np.zeros(shape, dtype=np.int8)
    cells[3:5, 3:5] = linsolve.problems.SOLID
    return cells


def _malicious_pickle(tmp: Path) -> Path:
    """A pickle whose loading would create a marker file: loading must never execute it."""
    marker = tmp / MARKER_NAME

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp / "evil.safetensors"
    path.write_bytes(pickle.dumps(Payload()))
    return path


def _torch_pickle(tmp: Path) -> Path:
    """A classic ``torch.save`` file (zip + pickle) whose pickle runs code on an unsafe load."""
    import torch

    marker = tmp / MARKER_NAME

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp / "evil.pt"
    torch.save({"weights": Payload()}, path)
    return path


def _shipped_or_trained_model(tmp: Path, dims: int) -> Path:
    """A real model file of ``dims`` dimensions (shipped one if present, else a fresh random net)."""
    from linsolve.learn.networks import build_network

    for name in linsolve.models.available():
        meta = linsolve.models.info(name)
        if meta.get("dims") == dims and meta.get("architecture") == "dcdm":
            return Path(linsolve.models.resolve(name))
    net = build_network("dcdm", {"dims": dims, "channels": 4, "n_down": 1, "n_coarse": 1, "n_up": 1})
    path = tmp / f"random{dims}d.safetensors"
    linsolve.models.save(net, path, {"preset": "test"})
    return path


def _truncated_model(tmp: Path) -> Path:
    good = _shipped_or_trained_model(tmp, 2)
    data = good.read_bytes()
    path = tmp / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    return path


def _tiny_network():
    from .learn.networks import build_network

    return build_network("dcdm", {"dims": 2, "channels": 4, "n_down": 1, "n_coarse": 1, "n_up": 1})


def _foreign_safetensors(tmp: Path) -> Path:
    """A valid safetensors file that is not a linsolve model (no metadata)."""
    from safetensors.numpy import save

    path = tmp / "foreign.safetensors"
    path.write_bytes(save({"w": np.zeros(3, dtype=np.float32)}))
    return path


def _random_bytes(tmp: Path) -> Path:
    path = tmp / "noise.safetensors"
    path.write_bytes(struct.pack("<Q", 12) + b"not json at all" + os.urandom(64))
    return path


def _state_file(tmp: Path, text: str) -> Path:
    path = tmp / "state.json"
    path.write_text(text)
    return path


def _cli(argv):
    from linsolve.cli import main

    return main(argv)


def _mtx(tmp: Path, A) -> str:
    path = tmp / "A.mtx"
    scipy.io.mmwrite(str(path), A)
    return str(path)


A8 = _poisson2d(8)
B8 = np.ones(A8.shape[0])

CASES = [
    # --- cg -------------------------------------------------------------------------------
    Case("cg-nonsquare", "cg", "A is 5x4", lambda t: linsolve.cg(sp.random(5, 4, density=.5, format="csr"), np.ones(5)),
         ValueError, ("A", "square")),
    Case("cg-b-length", "cg", "b shorter than A", lambda t: linsolve.cg(A8, np.ones(3)), ValueError, ("b", "length")),
    Case("cg-nan-A", "cg", "NaN stored in A", lambda t: linsolve.cg(sp.diags([1.0, np.nan]).tocsr(), np.ones(2)),
         ValueError, ("A", "NaN")),
    Case("cg-inf-b", "cg", "Inf in b", lambda t: linsolve.cg(A8, np.r_[B8[:-1], np.inf]), ValueError, ("b", "Inf")),
    Case("amg-complex", "solve", "complex A for amg-cg (cg takes it)",
         lambda t: linsolve.solve(A8.astype(complex), B8, method="amg-cg"), TypeError, ("A", "complex")),
    Case("cg-atol-none", "cg", "atol=None", lambda t: linsolve.cg(A8, B8, atol=None), ValueError, ("atol",)),
    Case("cg-empty", "cg", "0x0 matrix", lambda t: linsolve.cg(sp.csr_matrix((0, 0)), np.ones(0)), ValueError, ("empty",)),
    Case("cg-rtol", "cg", "rtol < 0", lambda t: linsolve.cg(A8, B8, rtol=-1e-6), ValueError, ("rtol",)),
    Case("cg-maxiter", "cg", "maxiter = 0", lambda t: linsolve.cg(A8, B8, maxiter=0), ValueError, ("maxiter",)),
    Case("cg-M-shape", "cg", "M of the wrong size",
         lambda t: linsolve.cg(A8, B8, M=sla.aslinearoperator(sp.identity(5))), ValueError, ("M", "shape")),
    Case("cg-M-callable", "cg", "a bare function as M", lambda t: linsolve.cg(A8, B8, M=lambda r: r), TypeError,
         ("M", "LinearOperator")),
    Case("cg-indefinite", "cg", "indefinite A (p^T A p = 0)", lambda t: linsolve.cg(_indefinite(), np.ones(4))[1],
         negative_info=True),
    # --- sor ------------------------------------------------------------------------------
    Case("sor-omega-high", "sor", "omega = 2.5", lambda t: linsolve.sor(A8, B8, omega=2.5), ValueError, ("omega",)),
    Case("sor-omega-zero", "sor", "omega = 0", lambda t: linsolve.sor(A8, B8, omega=0.0), ValueError, ("omega",)),
    Case("sor-zero-diagonal", "sor", "zero on the diagonal in row 5", lambda t: linsolve.sor(_zero_diag(), np.ones(36)),
         ValueError, ("diagonal", "row 5")),
    Case("sor-negative-diagonal", "sor", "negative diagonal in row 3",
         lambda t: linsolve.sor(_neg_diag(), np.ones(36)), ValueError, ("diagonal", "row 3")),
    Case("ssor-precond-nonsymmetric", "sor", "ssor preconditioner for an unsymmetric A",
         lambda t: linsolve.precond.ssor(_nonsym(), 1.2), ValueError, ("symmetric",)),
    Case("solve-cg-nonsymmetric", "solve", "method='cg' on an unsymmetric A (linsolve.cg takes it, as SciPy's)",
         lambda t: linsolve.solve(_nonsym(), np.ones(64), method="cg"), ValueError, ("not symmetric", "gmres")),
    Case("solve-auto-nonsymmetric", "solve", "method='auto' on an unsymmetric A that no pinned row explains",
         lambda t: linsolve.solve(_nonsym(), np.ones(64)), ValueError, ("not symmetric", "auto")),
    Case("amg-precond-nonsymmetric", "precond", "PyAMG preconditioner for an unsymmetric A",
         lambda t: linsolve.precond.amg(_nonsym()), ValueError, ("not symmetric",)),
    Case("sequence-nonsymmetric", "SequenceSolver", "an unsymmetric A in a simulation loop",
         lambda t: linsolve.SequenceSolver(method="auto").solve(_nonsym(), np.ones(64)), ValueError,
         ("not symmetric",)),
    Case("banded-singular", "precond", "banded Cholesky of a pure-Neumann 1D matrix",
         lambda t: linsolve.precond.banded_cholesky(_neumann_1d()), ValueError, ("not positive definite",)),
    Case("banded-too-wide", "precond", "banded Cholesky past max_bandwidth",
         lambda t: linsolve.precond.banded_cholesky(_poisson2d(), max_bandwidth=2), ValueError, ("bandwidth",)),
    Case("banded-mixed-sign", "precond", "banded Cholesky of an indefinite diagonal",
         lambda t: linsolve.precond.banded_cholesky(_indefinite()), ValueError, ("diagonal",)),
    Case("factor-singular", "precond", "sparse factor of a closed (pure-Neumann) 2D box",
         lambda t: linsolve.precond.sparse_factor(_neumann_2d()), ValueError, ("singular",)),
    Case("factor-indefinite", "precond", "sparse factor of a matrix with a positive diagonal, not definite",
         lambda t: linsolve.precond.sparse_factor(_poisson2d() - 3.5 * sp.identity(64)), ValueError,
         ("not positive definite",)),
    Case("factor-too-large", "precond", "sparse factor past max_rows",
         lambda t: linsolve.precond.sparse_factor(_poisson2d(), max_rows=10), ValueError, ("max_rows",)),
    Case("jacobi-zero-diagonal", "precond", "Jacobi preconditioner of a matrix with a zero on the diagonal",
         lambda t: linsolve.precond.jacobi(_zero_diag()), ValueError, ("zero diagonal", "row 5")),
    Case("mg-compact-matrix", "precond", "gmg-pcg on a matrix over the fluid cells only",
         lambda t: linsolve.solve(_compact_pressure(), np.ones(_compact_pressure().shape[0]), method="gmg-pcg"),
         ValueError, ("fluid-cells-only", "auto")),
    Case("mg-pinned-row", "precond", "gmg-pcg on a row replaced by a unit row, its column kept",
         lambda t: linsolve.solve(_pinned_row(), np.ones(256), method="gmg-pcg", grid_shape=(16, 16)),
         ValueError, ("symmetric", "pinned_rows")),
    # --- dcdm -----------------------------------------------------------------------------
    Case("dcdm-nonsymmetric", "dcdm", "A unsymmetric by one entry",
         lambda t: linsolve.dcdm(_nonsym(), np.ones(64), grid_shape=(8, 8), model=_shipped_or_trained_model(t, 2)),
         ValueError, ("symmetric",)),
    Case("dcdm-grid-mismatch", "dcdm", "grid_shape with the wrong number of cells",
         lambda t: linsolve.dcdm(A8, B8, grid_shape=(7, 7), model=_shipped_or_trained_model(t, 2)),
         ValueError, ("grid_shape",)),
    Case("dcdm-2d-model-3d-grid", "dcdm", "a 2D model on a 3D problem",
         lambda t: linsolve.dcdm(linsolve.problems.poisson((4, 4, 4)), np.ones(64), grid_shape=(4, 4, 4),
                                 model=_shipped_or_trained_model(t, 2)), ValueError, ("2D", "3D")),
    Case("dcdm-missing-model", "dcdm", "model path that does not exist",
         lambda t: linsolve.dcdm(A8, B8, grid_shape=(8, 8), model=str(t / "nope.safetensors")), ValueError, ("nope",)),
    Case("dcdm-indefinite", "dcdm", "indefinite A (A8 - 3 I), 40 iterations",
         lambda t: linsolve.dcdm(A8 - 3.0 * sp.identity(64, format="csr"), B8, grid_shape=(8, 8), maxiter=40,
                                 model=_shipped_or_trained_model(t, 2))[1],
         negative_info=True),
    Case("dcdm-bad-deflation", "dcdm", "deflation block size 1",
         lambda t: linsolve.dcdm(A8, B8, grid_shape=(8, 8), model=_shipped_or_trained_model(t, 2), deflation=1),
         ValueError, ("deflation", "block size")),
    Case("dcdm-deflation-singular", "dcdm", "explicit deflation on a singular (pure-Neumann) A",
         lambda t: linsolve.dcdm(linsolve.problems.poisson((8, 8), bc="neumann"), B8, grid_shape=(8, 8),
                                 model=_shipped_or_trained_model(t, 2), deflation=4), ValueError, ("singular",)),
    # --- solve ----------------------------------------------------------------------------
    Case("solve-unknown-method", "solve", "method='magic'", lambda t: linsolve.solve(A8, B8, method="magic"),
         ValueError, ("unknown method",)),
    Case("solve-inconsistent-neumann", "solve", "singular Neumann system with inconsistent b",
         lambda t: linsolve.solve(linsolve.problems.poisson((6, 6), bc="neumann"), np.ones(36), method="cg",
                                  nullspace=np.ones(36)), ValueError, ("inconsistent",)),
    Case("solve-amg-with-M", "solve", "amg-cg given its own M",
         lambda t: linsolve.solve(A8, B8, method="amg-cg", M=sla.aslinearoperator(sp.identity(64))), ValueError, ("M",)),
    # --- SequenceSolver -------------------------------------------------------------------
    Case("sequence-unknown-method", "SequenceSolver", "method='magic'",
         lambda t: linsolve.SequenceSolver(method="magic"), ValueError, ("method",)),
    Case("sequence-unknown-tuner", "SequenceSolver", "tuner='genius'",
         lambda t: linsolve.SequenceSolver(method="ssor-cg", tuner="genius"), ValueError, ("tuner",)),
    Case("sequence-corrupt-state", "SequenceSolver", "state file cut in the middle",
         lambda t: linsolve.SequenceSolver(method="ssor-cg", tuner="tsallis").load(_state_file(t, '{"kind": "seq')),
         ValueError, ("state",)),
    Case("sequence-foreign-state", "SequenceSolver", "a JSON file that is not a solver state",
         lambda t: linsolve.SequenceSolver(method="ssor-cg", tuner="tsallis").load(_state_file(t, '{"a": 1}')),
         ValueError, ("state",)),
    Case("sequence-nan-b", "SequenceSolver", "NaN in b", lambda t: linsolve.SequenceSolver(
        method="cg", tuner=None).solve(A8, np.r_[B8[:-1], np.nan]), ValueError, ("b", "NaN")),
    # --- problems -------------------------------------------------------------------------
    Case("poisson-1d", "problems", "poisson((5,))", lambda t: linsolve.problems.poisson((5,)), ValueError, ("2 or 3",)),
    Case("poisson-negative-coeff", "problems", "negative conductivity",
         lambda t: linsolve.problems.poisson((4, 4), coeff=-np.ones((4, 4))), ValueError, ("coeff",)),
    Case("pressure-unknown-code", "problems", "cell type 7",
         lambda t: linsolve.problems.pressure_matrix(np.full((4, 4), 7)), ValueError, ("cell",)),
    Case("pressure-1d", "problems", "1-D cell_types", lambda t: linsolve.problems.pressure_matrix(np.zeros(5, int)),
         ValueError, ("cell_types",)),
    Case("pressure-no-fluid", "problems", "no fluid cell",
         lambda t: linsolve.problems.pressure_matrix(np.ones((4, 4), int)), ValueError, ("FLUID",)),
    Case("pressure-b-mismatch", "problems", "b non-zero on a solid cell",
         lambda t: linsolve.problems.fluid.check_rhs_matches_cells(np.ones(64), _fluid_cells()), ValueError, ("b",)),
    Case("fluid-unknown-scene", "problems", "scene='tornado'",
         lambda t: next(iter(linsolve.problems.fluid_sequence((16, 16), 2, scene="tornado"))), ValueError, ("scene",)),
    Case("load-matrix-missing", "problems", "matrix file that does not exist",
         lambda t: linsolve.problems.load_matrix(t / "missing.mtx"), ValueError, ("not found",)),
    Case("load-matrix-garbage", "problems", "a .mtx file with garbage",
         lambda t: linsolve.problems.load_matrix((t / "g.mtx").write_text("garbage\n") and t / "g.mtx"), ValueError,
         ("cannot read",)),
    # --- models.load ----------------------------------------------------------------------
    Case("model-truncated", "models.load", "weights file cut in half",
         lambda t: linsolve.models.load(_truncated_model(t)), ValueError, ()),
    Case("model-foreign-safetensors", "models.load", "a safetensors file that is not a linsolve model",
         lambda t: linsolve.models.load(_foreign_safetensors(t)), ValueError, ()),
    Case("model-random-bytes", "models.load", "random bytes", lambda t: linsolve.models.load(_random_bytes(t)),
         ValueError, ()),
    Case("model-pickle-code", "models.load", "a pickle whose loading would run code (must not run)",
         lambda t: linsolve.models.load(_malicious_pickle(t)), ValueError, ()),
    Case("model-torch-pickle", "models.load", "a torch.save file with code in its pickle (must not run)",
         lambda t: linsolve.models.load(_torch_pickle(t)), ValueError, ()),
    Case("model-wrong-architecture", "models.load", "asking a DCDM file for another architecture",
         lambda t: linsolve.models.load(_shipped_or_trained_model(t, 2), architecture="mg-learned"), ValueError,
         ("architecture",)),
    Case("model-wrong-dims", "models.load", "a 2D model where 3D is needed",
         lambda t: linsolve.models.load(_shipped_or_trained_model(t, 2), dims=3), ValueError, ("2D", "3D")),
    Case("model-missing", "models.load", "a model path that does not exist",
         lambda t: linsolve.models.load(t / "none.safetensors"), ValueError, ("existing file",)),
    Case("model-save-directory", "models.save", "saving onto a directory",
         lambda t: linsolve.models.save(_tiny_network(), t), ValueError, ("directory",)),
    # --- CLI ------------------------------------------------------------------------------
    Case("cli-missing-file", "CLI", "linsolve solve on a path that does not exist",
         lambda t: _cli(["solve", str(t / "none.mtx")]), exit_code=2),
    Case("cli-bad-method", "CLI", "linsolve solve --method magic",
         lambda t: _cli(["solve", _mtx(t, A8), "--method", "magic"]), exit_code=2),
    Case("cli-unknown-benchmark", "CLI", "linsolve bench nope", lambda t: _cli(["bench", "nope"]), exit_code=2),
    Case("cli-unknown-preset", "CLI", "linsolve train no-such-preset", lambda t: _cli(["train", "no-such-preset"]),
         exit_code=2),
    Case("cli-train-resume-missing", "CLI", "linsolve train --resume from a missing checkpoint folder",
         lambda t: _cli(["train", "poisson2d-64", "--resume", "--checkpoint-dir", str(t / "none"), "--epochs", "1"]),
         exit_code=2),
]


def run_case(case: Case, tmp: Path) -> dict:
    """Run one case; return {"outcome": ..., "type": ..., "message": ...} (never raises)."""
    import contextlib

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            value = case.call(tmp)
    except SystemExit as exc:  # argparse errors
        return {"outcome": "exit", "type": "SystemExit", "message": stderr.getvalue().strip().splitlines()[-1:]
                and stderr.getvalue().strip().splitlines()[-1] or "", "code": exc.code}
    except Exception as exc:  # noqa: BLE001 - we record whatever happened
        return {"outcome": "raised", "type": type(exc).__name__, "message": str(exc), "exception": exc}
    if case.exit_code is not None:
        return {"outcome": "exit", "type": f"exit {value}", "message": stderr.getvalue().strip(), "code": value}
    return {"outcome": "returned", "type": f"info = {value}", "message": f"returned info = {value}", "value": value}
