"""Inputs that used to crash, mislead or be answered wrongly: corrupt index arrays, a null space that is not
one, right-hand sides at the edges of the floating-point range, complex systems through auto, unknown options."""
import numpy as np
import pytest
import scipy.sparse as sp

import linsolve


def _corrupt(kind):
    A = linsolve.problems.poisson((6, 6)).tocsr().copy()
    if kind == "past-end-index":
        A.indices[7] = 10 ** 6             # read past the arrays: a segfault in SciPy's own kernels
    elif kind == "negative-index":
        A.indices[3] = -1
    elif kind == "pointer-start":
        A.indptr[0] = 1
    elif kind == "pointer-decreases":
        A.indptr[3], A.indptr[4] = A.indptr[4], A.indptr[3]
    elif kind == "pointer-past-end":
        A.indptr[-1] += 5
    return A


@pytest.mark.parametrize("kind", ["past-end-index", "negative-index", "pointer-start", "pointer-decreases",
                                  "pointer-past-end"])
def test_corrupt_index_arrays_are_refused_by_name(kind, tmp_path):
    A = _corrupt(kind)
    with pytest.raises(ValueError, match="not a valid CSR matrix"):
        linsolve.cg(A, np.ones(36))
    if kind.endswith("index"):  # SciPy's constructor refuses the bad pointers itself
        with pytest.raises(ValueError, match="not a valid CSC matrix"):
            linsolve.solve(sp.csc_matrix((A.data, A.indices, A.indptr), shape=A.shape, copy=False), np.ones(36))
    if kind == "past-end-index":
        path = tmp_path / "corrupt.npz"
        np.savez(path, format=b"csr", shape=np.array(A.shape), data=A.data, indices=A.indices, indptr=A.indptr)
        with pytest.raises(ValueError, match="corrupt.npz is not a valid CSR matrix"):
            linsolve.problems.load_matrix(path)


def test_the_structure_check_leaves_the_callers_matrix_alone():
    A = linsolve.problems.poisson((6, 6)).tocsr()
    A.indices = A.indices.astype(np.int64)
    A.indptr = A.indptr.astype(np.int64)
    before = (A.indices, A.indptr)
    linsolve.cg(A, np.ones(36))
    assert A.indices is before[0] and A.indptr is before[1]


def test_a_nullspace_that_is_not_one_is_refused_not_reported_converged():
    A = linsolve.problems.poisson((8, 8))                       # Dirichlet: nonsingular, A 1 != 0
    b = np.random.default_rng(0).standard_normal(64)
    b -= b.mean()
    with pytest.raises(ValueError, match="not a null space of A"):
        linsolve.solve(A, b, nullspace=np.ones(64))
    N = linsolve.problems.poisson((8, 8), bc="neumann")
    with pytest.raises(ValueError, match="nullspace is zero"):
        linsolve.solve(N, b, nullspace=np.zeros(64))
    with pytest.raises(ValueError, match="combination of the others"):
        linsolve.solve(N, b, nullspace=np.ones((64, 2)))
    res = linsolve.solve(N, b, nullspace=np.ones(64), rtol=1e-8)
    assert res.converged and np.linalg.norm(b - N @ res.x) <= 1e-8 * np.linalg.norm(b)


@pytest.mark.parametrize("magnitude", [1e-30, 1e-25, 1e-21, 1e20])
def test_float32_right_hand_sides_far_from_one_are_solved(magnitude):
    """||b||^2 of entries near 1e-25 underflows float32: x = 0 was returned as converged (true relres 1)."""
    A = linsolve.problems.poisson((8, 8, 8)).astype(np.float32)
    b = (np.random.default_rng(1).standard_normal(512) * magnitude).astype(np.float32)
    b64 = b.astype(np.float64)
    for x, info in (linsolve.cg(A, b), linsolve.auto_cg(A, b), linsolve.sor(A, b)):
        relres = np.linalg.norm(b64 - A.astype(np.float64) @ x.astype(np.float64)) / np.linalg.norm(b64)
        assert info != 0 or relres <= 2e-5, (info, relres)
        assert info == 0
    res = linsolve.solve(A, b)
    assert res.converged and res.iterations > 0


def test_a_subnormal_right_hand_side_is_finite_and_solved():
    A = linsolve.problems.poisson((6, 6))
    b = np.full(36, 1e-310)
    x, info = linsolve.cg(A, b, rtol=1e-8)
    assert info == 0 and np.all(np.isfinite(x))
    assert np.linalg.norm(b * 1e300 - A @ (x * 1e300)) <= 1e-7 * np.linalg.norm(b * 1e300)


def test_auto_takes_a_complex_hermitian_system_as_auto_cg_does():
    rng = np.random.default_rng(0)
    A = linsolve.problems.poisson((8, 8)).astype(complex)
    H = sp.random(64, 64, density=0.05, random_state=1) * 1j
    C = (A + 0.1 * (H + H.conj().T)).tocsr()
    b = rng.standard_normal(64) + 1j * rng.standard_normal(64)
    res = linsolve.solve(C, b, rtol=1e-8)
    assert res.converged and res.method == "cg"
    assert np.linalg.norm(b - C @ res.x) <= 1e-8 * np.linalg.norm(b)


@pytest.mark.parametrize("method,word", [("auto", "method='auto' chose"), ("gmg-pcg", "method 'gmg-pcg'"),
                                         ("learned-pcg", "method 'learned-pcg'")])
def test_an_unknown_option_names_the_method(method, word):
    A = linsolve.problems.poisson((16, 16, 16))
    with pytest.raises(TypeError, match=word) as info:
        linsolve.solve(A, np.ones(A.shape[0]), method=method, bogus_option=1)
    assert "bogus_option" in str(info.value)


def test_maxiter_as_a_zero_dimensional_array():
    A = linsolve.problems.poisson((8, 8))
    x, info = linsolve.cg(A, np.ones(64), rtol=1e-12, maxiter=np.array(3))
    assert info == 3
