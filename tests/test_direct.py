"""Sparse factor: a fixed 2D matrix that a simulation solves again and again gets a back-solve per call."""
import numpy as np
import pytest
import scipy.sparse as sp

import linsolve
from linsolve import _auto
from linsolve.precond import sparse_factor
from linsolve.problems import FLUID, SOLID, pressure_matrix


def _obstacle_2d(n=64, shift=0):
    cells = np.full((n, n), FLUID)
    cells[n // 3 + shift:n // 2 + shift, n // 3:n // 2] = SOLID
    cells[0, :] = SOLID
    return pressure_matrix(cells)


@pytest.mark.parametrize("sign", [1, -1])
def test_factor_inverts_a_definite_matrix_of_either_sign(sign):
    A = sign * _obstacle_2d()
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    M = sparse_factor(A)
    assert M.sign == sign and M.fill > A.nnz
    assert np.linalg.norm(b - A @ (M @ b)) <= 1e-10 * np.linalg.norm(b)
    x, info = linsolve.cg(A, b, rtol=1e-10, M=M)
    assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-10 * np.linalg.norm(b)


def test_bad_matrices_are_refused_by_name():
    closed = np.full((12, 12), FLUID)
    closed[[0, -1], :] = SOLID
    closed[:, [0, -1]] = SOLID
    with pytest.raises(ValueError, match="singular"):
        sparse_factor(pressure_matrix(closed))
    A = linsolve.problems.poisson((16, 16))
    with pytest.raises(ValueError, match="not positive definite"):
        sparse_factor(A - 3.5 * sp.identity(256))  # diagonal 0.5, eigenvalues down to -3.5
    with pytest.raises(ValueError, match="symmetric"):
        sparse_factor(A + sp.csr_matrix(([1.0], ([0], [1])), shape=A.shape))
    with pytest.raises(ValueError, match="max_rows"):
        sparse_factor(A, max_rows=100)
    bad = A.copy()
    bad.data[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sparse_factor(bad)


@pytest.fixture
def factor_always_pays(monkeypatch):
    """The ski-rental rule weighs measured seconds; here every kept solve is taken to have paid for the factor."""
    linsolve.shim.clear_cache()
    monkeypatch.setattr(_auto, "factor_pays", lambda solve_seconds, spmv_seconds, rent=None: True)
    yield
    linsolve.shim.clear_cache()


def test_a_fixed_2d_matrix_that_keeps_coming_back_is_answered_by_its_factor(factor_always_pays):
    A = -_obstacle_2d(96)  # PhiFlow's sign
    rng = np.random.default_rng(1)
    methods = []
    for _ in range(4):
        b = np.where(np.diff(A.indptr) > 1, rng.standard_normal(A.shape[0]), 0.0)
        res = linsolve.shim.auto_cg_result(A, b, rtol=1e-8)
        assert res.converged and np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
        methods.append((res.method, res.iterations))
    # first call builds the multigrid, the second (a kept solve) pays for the factor, later ones use it
    assert methods[0][0] == methods[1][0] == "auto_cg[learned-pcg]"
    assert all(m == "auto_cg[factor-cg]" and its <= 2 for m, its in methods[2:])
    assert linsolve.shim.cache_info()["factors"] == 1
    # a new matrix on the same grid takes over the multigrid's hierarchy, not the factor
    A2 = -_obstacle_2d(96, shift=1)
    res = linsolve.shim.auto_cg_result(A2, b, rtol=1e-8)
    assert res.method == "auto_cg[learned-pcg]" and res.converged


def test_float32_system_keeps_its_dtype_through_the_factor(factor_always_pays):
    A = (-_obstacle_2d(96)).astype(np.float32)
    b = np.where(np.diff(A.indptr) > 1, 1.0, 0.0).astype(np.float32)
    for _ in range(3):
        x, info = linsolve.auto_cg(A, b, rtol=1e-4)
    assert linsolve.shim.cache_info()["factors"] == 1
    assert info == 0 and x.dtype == np.float32
    r = b.astype(np.float64) - A.astype(np.float64) @ x.astype(np.float64)
    assert np.linalg.norm(r) <= 1e-4 * np.linalg.norm(b)


def test_3d_and_singular_matrices_never_take_a_factor(factor_always_pays):
    A3 = linsolve.problems.poisson((24, 24, 24))
    closed = np.full((80, 80), FLUID)
    closed[[0, -1], :] = SOLID
    closed[:, [0, -1]] = SOLID
    Ac = pressure_matrix(closed)
    for A in (A3, Ac):
        b = np.where(np.diff(A.indptr) > 1, 1.0, 0.0)
        if A is Ac:
            inside = np.diff(A.indptr) > 1
            b[inside] = np.random.default_rng(2).standard_normal(inside.sum())
            b[inside] -= b[inside].mean()
        for _ in range(3):
            res = linsolve.shim.auto_cg_result(A, b, rtol=1e-8)
            assert res.converged and "factor" not in res.method
    assert linsolve.shim.cache_info()["factors"] == 0


def test_a_factor_no_faster_than_the_multigrid_is_dropped_again(factor_always_pays, monkeypatch):
    monkeypatch.setattr(_auto.FactorRental, "KEEP_RATIO", 0.0)  # no factored solve can be fast enough
    A = _obstacle_2d(96)
    b = np.where(np.diff(A.indptr) > 1, 1.0, 0.0)
    methods = [linsolve.shim.auto_cg_result(A, b, rtol=1e-8).method for _ in range(7)]
    trial = _auto.FactorRental.TRIAL_SOLVES
    assert methods[2:2 + trial] == ["auto_cg[factor-cg]"] * trial
    assert methods[2 + trial:] == ["auto_cg[learned-pcg]"] * (len(methods) - 2 - trial)


def test_sequence_solver_answers_a_fixed_matrix_by_its_factor_once_it_pays(factor_always_pays):
    A = _obstacle_2d(96)
    solver = linsolve.SequenceSolver(rtol=1e-8, tuner=None)
    rng = np.random.default_rng(3)
    entries = []
    for _ in range(4):
        b = np.where(np.diff(A.indptr) > 1, rng.standard_normal(A.shape[0]), 0.0)
        res = solver.solve(A, b)
        assert res.converged and np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
        entries.append(res.extras["sequence"])
    assert [e["method"] for e in entries[:2]] == ["learned-pcg"] * 2
    assert entries[1]["setup_seconds"] > 0          # the factor was built after the first kept solve
    assert all(e["method"] == "factor-cg" and e["iterations"] <= 2 for e in entries[2:])
    # a new matrix: the multigrid again (its hierarchy taken over), no stale factor
    res = solver.solve(_obstacle_2d(96, shift=1), b)
    assert res.converged and res.extras["sequence"]["method"] == "learned-pcg"


def test_auto_cg_keeps_no_factor_beyond_its_memory_budget(factor_always_pays, monkeypatch):
    monkeypatch.setattr(linsolve.shim, "FACTOR_MAX_BYTES", 1000)
    A = _obstacle_2d(96)
    b = np.where(np.diff(A.indptr) > 1, 1.0, 0.0)
    methods = [linsolve.shim.auto_cg_result(A, b, rtol=1e-8).method for _ in range(4)]
    assert methods == ["auto_cg[learned-pcg]"] * 4 and linsolve.shim.cache_info()["factors"] == 0
