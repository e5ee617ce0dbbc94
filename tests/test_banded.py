"""Banded Cholesky: 1D problems and narrow strips, which CG needs as many iterations as cells for."""
import numpy as np
import pytest
import scipy.sparse as sp

import linsolve
from linsolve.precond import banded_cholesky


def _laplacian_1d(n, neumann=False):
    A = sp.diags([-np.ones(n - 1), 2.0 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], format="lil")
    if neumann:
        A[0, 0] = A[n - 1, n - 1] = 1.0
    return A.tocsr()


@pytest.mark.parametrize("sign", [1, -1])
def test_factor_inverts_a_definite_band_of_either_sign(sign):
    A = sign * linsolve.problems.poisson((500, 5))
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    M = banded_cholesky(A)
    assert M.bandwidth == 5 and M.sign == sign
    assert np.linalg.norm(b - A @ (M @ b)) <= 1e-10 * np.linalg.norm(b)


def test_auto_cg_solves_a_1d_problem_in_one_iteration_where_cg_needs_thousands():
    A = _laplacian_1d(5000)
    b = np.random.default_rng(1).standard_normal(5000)
    res = linsolve.shim.auto_cg_result(A, b, rtol=1e-8)
    plain = linsolve.solve(A, b, method="cg", rtol=1e-8)
    assert res.method == "auto_cg[banded-cg]" and res.converged and res.iterations <= 2
    assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
    assert plain.iterations > 1000
    again = linsolve.shim.auto_cg_result(A.copy(), b + 1.0, rtol=1e-8)
    assert again.extras["reused"] and again.converged


def test_small_1d_problems_below_the_multigrid_crossover_take_the_factor_too():
    A = _laplacian_1d(300)
    b = np.ones(300)
    calls = []
    x, info = linsolve.auto_cg(A, b, rtol=1e-10, callback=lambda xk: calls.append(xk.copy()))
    assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-10 * np.linalg.norm(b)
    assert 1 <= len(calls) <= 2 and np.allclose(calls[-1], x)


def test_solve_auto_and_sequence_solver_choose_the_factor_for_a_strip():
    A = linsolve.problems.poisson((3000, 4))
    b = np.random.default_rng(2).standard_normal(A.shape[0])
    res = linsolve.solve(A, b, rtol=1e-6)
    assert res.method == "banded-cg" and res.converged and res.iterations <= 2
    solver = linsolve.SequenceSolver(rtol=1e-6)
    first, second = solver.solve(A, b), solver.solve(A, 2 * b)
    assert first.method == second.method == "banded-cg" and second.converged
    assert solver.stats[1]["hierarchy_reused"]


def test_square_grids_keep_plain_cg_or_the_multigrid():
    assert linsolve.solve(linsolve.problems.poisson((16, 16)), np.ones(256)).method == "cg"
    big = linsolve.solve(linsolve.problems.poisson((96, 96)), np.ones(96 * 96))
    assert big.method in ("learned-pcg", "gmg-pcg")


def test_well_conditioned_band_keeps_plain_cg():
    A = (sp.identity(4000) + 0.5 * _laplacian_1d(4000)).tocsr()      # Gershgorin bound 3
    b = np.ones(4000)
    assert linsolve.solve(A, b, rtol=1e-8).method == "cg"
    assert linsolve.shim.auto_cg_result(A, b, rtol=1e-8).method == "auto_cg[cg]"


def test_singular_band_is_refused_by_the_factor_and_solved_by_cg():
    A = _laplacian_1d(800, neumann=True)                       # constants are its null space
    with pytest.raises(ValueError, match="singular|not positive definite"):
        banded_cholesky(A)
    b = np.random.default_rng(3).standard_normal(800)
    b -= b.mean()                                              # consistent
    x, info = linsolve.auto_cg(A, b, rtol=1e-8, maxiter=20000)
    assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b)
    res = linsolve.solve(A, b, rtol=1e-8, maxiter=20000)
    assert res.converged and res.method == "cg"


def test_bad_bands_are_refused_by_name():
    A = _laplacian_1d(100).tolil()
    A[0, 1] = -0.5                                             # no longer symmetric
    with pytest.raises(ValueError, match="symmetric"):
        banded_cholesky(A.tocsr())
    mixed = sp.diags([np.r_[np.ones(50), -np.ones(50)]], [0], format="csr")
    with pytest.raises(ValueError, match="mixed sign"):
        banded_cholesky(mixed)
    with pytest.raises(ValueError, match="bandwidth > 3"):
        banded_cholesky(linsolve.problems.poisson((40, 8)), max_bandwidth=3)
    with pytest.raises(ValueError, match="max_bandwidth"):
        banded_cholesky(_laplacian_1d(10), max_bandwidth=-1)


def test_float32_band_answers_in_float32():
    A = linsolve.problems.poisson((2000, 3)).astype(np.float32)
    b = np.ones(A.shape[0], np.float32)
    x, info = linsolve.auto_cg(A, b, rtol=1e-5)
    assert info == 0 and x.dtype == np.float32
    assert np.linalg.norm(b - A @ x) <= 1e-5 * np.linalg.norm(b)


def test_negative_definite_band_through_auto_cg_as_fipy_assembles_it():
    A = -_laplacian_1d(3000)
    b = np.random.default_rng(4).standard_normal(3000)
    res = linsolve.shim.auto_cg_result(A, b, rtol=1e-8)
    assert res.method == "auto_cg[banded-cg]" and res.converged and res.iterations <= 2
    assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
