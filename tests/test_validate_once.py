"""Validate once per call, check symmetry once per matrix."""
import numpy as np

import linsolve
from linsolve import _validation


def test_symmetry_is_checked_once_per_matrix_across_frames(monkeypatch):
    calls = []
    real = _validation.check_symmetric

    def counting(A, *args, **kwargs):
        calls.append(A.shape)
        return real(A, *args, **kwargs)

    monkeypatch.setattr(_validation, "check_symmetric", counting)
    A = linsolve.problems.poisson((20, 20)).tocsr()
    A = A + 1e-3 * linsolve.problems.poisson((20, 20))  # a matrix no earlier test has seen
    solver = linsolve.SequenceSolver(method="ssor-cg", tuner="spectral", rtol=1e-8)
    rng = np.random.default_rng(0)
    for _ in range(4):
        assert solver.solve(A, rng.standard_normal(A.shape[0])).converged
    assert len(calls) == 1                       # the spectral tuner and every frame reuse the first check
    B = A.copy()
    B.data[0] += 1.0                             # new content: checked again (and found not symmetric)
    try:
        solver.solve(B, np.ones(B.shape[0]))
    except ValueError as exc:
        assert "not symmetric" in str(exc)
    assert len(calls) == 2


def _nan_scans(monkeypatch, A, call):
    """How many times ``call()`` scans ``A``'s entries for NaN/Inf (np.isfinite over nnz values)."""
    scans = []
    original_isfinite = np.isfinite

    def counting_isfinite(x, *args, **kwargs):
        if getattr(x, "size", 0) == A.nnz:
            scans.append(1)
        return original_isfinite(x, *args, **kwargs)

    monkeypatch.setattr(_validation.np, "isfinite", counting_isfinite)
    try:
        result = call()
    finally:
        monkeypatch.undo()
    return len(scans), result


def test_a_call_validates_its_matrix_once(monkeypatch):
    A = linsolve.problems.poisson((16, 16)).tocoo()   # COO: every unchecked as_sparse_matrix would convert it
    scans, res = _nan_scans(monkeypatch, A, lambda: linsolve.solve(A, np.ones(256), method="ssor-cg", rtol=1e-8))
    assert res.converged
    assert scans == 1                            # solve, ssor() and CG's make_system share one NaN scan
    m = _validation.as_sparse_matrix(A)
    assert _validation.as_sparse_matrix(A) is not m   # outside a call nothing is trusted


def test_auto_cg_validates_its_matrix_once(monkeypatch):
    from linsolve import shim

    A = linsolve.problems.poisson((80, 80)).tocsr()
    A = A + 1e-3 * linsolve.problems.poisson((80, 80))   # new content: the plan is built in this call
    shim.clear_cache()
    scans, res = _nan_scans(monkeypatch, A, lambda: shim.auto_cg_result(A, np.ones(A.shape[0]), rtol=1e-8))
    assert res.converged and res.extras["path"] == "grid" and not res.extras["reused"]
    assert scans == 1                            # make_system, find_grid and the multigrid share one scan
