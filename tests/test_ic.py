"""IC(0): factor against a dense reference, preconditioner properties, ic-cg driver, bad input."""
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator

import linsolve
from linsolve.krylov.pcg import ic_cg_result
from linsolve.precond.ic import IC0Preconditioner, ic0


def dense_ic0(A):
    """Textbook right-looking IC(0) on a dense copy, updates dropped outside A's pattern."""
    a = np.array(A.toarray(), dtype=float)
    pattern = a != 0
    n = a.shape[0]
    for k in range(n):
        a[k, k] = np.sqrt(a[k, k])
        for i in range(k + 1, n):
            if pattern[i, k]:
                a[i, k] /= a[k, k]
        for j in range(k + 1, n):
            for i in range(j, n):
                if pattern[i, j]:
                    a[i, j] -= a[i, k] * a[j, k]
    return np.tril(a)


def random_spd_mmatrix(n, density, seed):
    """Symmetric, weakly diagonally dominant with negative off-diagonals: IC(0) exists."""
    rng = np.random.default_rng(seed)
    off = sp.random(n, n, density=density, random_state=rng, data_rvs=lambda k: -rng.uniform(0.1, 1.0, k))
    off = sp.triu(off, k=1)
    off = off + off.T
    diag = -np.asarray(off.sum(axis=1)).ravel() + rng.uniform(0.01, 1.0, n)
    return sp.csr_matrix(off + sp.diags(diag))


def test_factor_matches_dense_reference_on_2d_poisson():
    A = linsolve.problems.poisson((8, 8))
    L = ic0(A).L.toarray()
    ref = dense_ic0(A)
    np.testing.assert_allclose(L, ref, rtol=1e-12, atol=1e-14)
    # IC(0) is not the exact Cholesky factor on a 2D grid (fill-in is dropped)
    assert not np.allclose(L, np.linalg.cholesky(A.toarray()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_factor_matches_reference_on_random_mmatrix(seed):
    A = random_spd_mmatrix(40, 0.08, seed)
    L = ic0(A).L
    np.testing.assert_allclose(L.toarray(), dense_ic0(A), rtol=1e-11, atol=1e-13)
    # the defining property: L L^T equals A on the pattern of A
    low = sp.tril(A).tocoo()
    LLt = (L @ L.T).toarray()
    np.testing.assert_allclose(LLt[low.row, low.col], low.data, rtol=1e-11, atol=1e-13)
    assert set(zip(*L.nonzero())) <= set(zip(low.row, low.col))


def test_factor_on_variable_coefficient_3d():
    rng = np.random.default_rng(3)
    A = linsolve.problems.poisson((5, 4, 6), coeff=rng.uniform(0.1, 10.0, (5, 4, 6)))
    L = ic0(A).L.toarray()
    np.testing.assert_allclose(L, dense_ic0(A), rtol=1e-11, atol=1e-13)


def test_tridiagonal_ic0_is_exact_cholesky():
    A = linsolve.problems.poisson((1, 30))
    M = ic0(A)
    np.testing.assert_allclose(M.L.toarray(), np.linalg.cholesky(A.toarray()), rtol=1e-12)
    b = np.random.default_rng(0).standard_normal(30)
    np.testing.assert_allclose(A @ M.matvec(b), b, rtol=1e-10, atol=1e-12)


def test_preconditioner_symmetric_positive_definite():
    A = linsolve.problems.poisson((12, 12, 12))
    M = ic0(A)
    assert isinstance(M, LinearOperator) and M.shape == A.shape
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, A.shape[0]))
    assert abs(x @ M.matvec(y) - y @ M.matvec(x)) <= 1e-10 * abs(x @ M.matvec(y))
    for v in rng.standard_normal((5, A.shape[0])):
        assert v @ M.matvec(v) > 0
    # applying M inverts L L^T
    L = M.L
    z = M.matvec(x)
    np.testing.assert_allclose(L @ (L.T @ z), x, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(M.rmatvec(x), z)
    np.testing.assert_allclose(M.matmat(np.stack([x, y], 1))[:, 0], z)


def test_pcg_needs_fewer_iterations_than_cg():
    A = linsolve.problems.poisson((20, 20, 20))
    b = np.random.default_rng(2).standard_normal(A.shape[0])
    plain = linsolve.solve(A, b, method="cg", rtol=1e-8)
    pre = ic_cg_result(A, b, rtol=1e-8)
    assert pre.converged and plain.converged
    assert np.linalg.norm(b - A @ pre.x) <= 1e-8 * np.linalg.norm(b)
    assert pre.iterations < 0.6 * plain.iterations
    assert pre.method == "ic-cg" and pre.setup_time_s > 0
    # same preconditioner through the public drop-in
    x, info = linsolve.cg(A, b, rtol=1e-8, M=linsolve.precond.ic0(A))
    assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b)


def test_driver_through_registry_and_factor_reuse():
    from linsolve.solve import available_methods, register_method

    if "ic-cg" not in available_methods():
        register_method("ic-cg", "linsolve.krylov.pcg:ic_cg_result", "CG preconditioned by IC(0)")
    A = linsolve.problems.poisson((24, 24))
    b = np.ones(A.shape[0])
    res = linsolve.solve(A, b, method="ic-cg", rtol=1e-10)
    assert res.converged and res.relative_residual <= 1e-10
    again = linsolve.solve(A, 2 * b, method="ic-cg", rtol=1e-10, factor=res.extras["ic0"])
    assert again.setup_time_s == 0.0 and again.iterations == res.iterations
    with pytest.raises(ValueError, match="do not pass M"):
        linsolve.solve(A, b, method="ic-cg", M=res.extras["ic0"])
    with pytest.raises(TypeError, match="factor"):
        linsolve.solve(A, b, method="ic-cg", factor="nope")
    with pytest.raises(TypeError, match="unexpected options"):
        linsolve.solve(A, b, method="ic-cg", omega=1.2)


def test_float32_system_stays_float32():
    A = linsolve.problems.poisson((10, 10)).astype(np.float32)
    b = np.ones(100, dtype=np.float32)
    M = ic0(A)
    assert M.matvec(b).dtype == np.float32
    res = ic_cg_result(A, b, rtol=1e-5)
    assert res.converged and res.x.dtype == np.float32


def test_negative_pivot_names_row_and_shift_fixes_it():
    A = sp.csr_matrix(np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]))
    with pytest.raises(ValueError, match=r"row 1 .*-3.*shift"):
        ic0(A)
    M = ic0(A, shift=1.5)  # A + 1.5 diag(A): pivot 2.5 - 4/2.5 > 0
    assert M.shift == 1.5
    L = M.L.toarray()
    shifted = A.toarray() + 1.5 * np.diag(np.diag(A.toarray()))
    np.testing.assert_allclose(L @ L.T, shifted, rtol=1e-12)


def test_zero_and_missing_diagonal():
    missing = sp.csr_matrix(np.array([[2.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    missing.eliminate_zeros()
    with pytest.raises(ValueError, match="no stored diagonal entry in row 1"):
        ic0(missing)
    zero = sp.csr_matrix(([1.0, 0.0], ([0, 1], [0, 1])), shape=(2, 2))
    with pytest.raises(ValueError, match="row 1"):
        ic0(zero)


def test_bad_input():
    A = linsolve.problems.poisson((4, 4))
    with pytest.raises(ValueError, match="not symmetric"):
        ic0(sp.csr_matrix(np.triu(A.toarray())))
    with pytest.raises(TypeError, match="LinearOperator"):
        ic0(aslinearoperator(A))
    with pytest.raises(ValueError, match="square"):
        ic0(np.ones((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        ic0(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="shift"):
        ic0(A, shift=-1.0)
    with pytest.raises(TypeError, match="shift"):
        ic0(A, shift="0.1")
    assert isinstance(ic0(A.toarray()), IC0Preconditioner)  # dense input is accepted
