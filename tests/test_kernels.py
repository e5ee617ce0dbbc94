"""numba kernels against SciPy / PyAMG / dense references (linsolve.kernels)."""
import numpy as np
import pytest
import scipy.sparse as sp
from pyamg.relaxation.relaxation import sor as pyamg_sor

import linsolve
from linsolve.kernels import (csr_matvec, csr_matvec_parallel, csr_matvec_serial, csr_residual,
                              diagonal_positions, rb_sor_sweep, red_black_rows, sor_forward,
                              sor_forward_residual, sor_sweep, sor_sweep_rows, sor_symmetric, ssor_apply,
                              stencil_apply)


def _variable_coefficient(shape, seed=0):
    rng = np.random.default_rng(seed)
    coeff = np.exp(rng.uniform(-2.0, 2.0, size=shape))
    return linsolve.problems.poisson(shape, coeff=coeff)


def _random_spd(n, seed=0):
    # Irregular sparsity (rows without lower or upper neighbours, varying row lengths).
    rng = np.random.default_rng(seed)
    B = sp.random(n, n, density=4.0 / n, random_state=rng, format="csr")
    A = (B + B.T).tocsr()
    A = A + sp.diags(np.asarray(abs(A).sum(axis=1)).ravel() + 1.0)
    A = sp.csr_matrix(A)
    A.sort_indices()
    return A


MATRICES = {
    "poisson2d": lambda: linsolve.problems.poisson((17, 23)),
    "poisson3d": lambda: linsolve.problems.poisson((9, 8, 7)),
    "varcoeff2d": lambda: _variable_coefficient((20, 15)),
    "varcoeff3d": lambda: _variable_coefficient((7, 9, 6), seed=1),
    "random_spd": lambda: _random_spd(300),
}


@pytest.fixture(params=sorted(MATRICES))
def matrix(request):
    return MATRICES[request.param]()


def _rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


# ---------------------------------------------------------------- SpMV

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_spmv_matches_scipy(matrix, dtype, index_dtype):
    A = matrix.astype(dtype)
    indptr, indices = A.indptr.astype(index_dtype), A.indices.astype(index_dtype)
    x = np.random.default_rng(3).standard_normal(A.shape[0]).astype(dtype)
    ref = A.astype(np.float64) @ x.astype(np.float64)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for kernel in (csr_matvec_serial, csr_matvec_parallel):
        out = np.empty(A.shape[0], dtype=dtype)
        kernel(indptr, indices, A.data, x, out)
        assert _rel(out, ref) < tol
    assert _rel(csr_matvec(indptr, indices, A.data, x), ref) < tol


def test_spmv_large_uses_parallel_and_rectangular():
    A = sp.random(3000, 2000, density=0.05, random_state=np.random.default_rng(0), format="csr")
    assert A.nnz >= linsolve.kernels.PARALLEL_MIN_NNZ
    x = np.random.default_rng(1).standard_normal(2000)
    assert _rel(csr_matvec(A.indptr, A.indices, A.data, x), A @ x) < 1e-12


def test_residual_matches_explicit(matrix):
    rng = np.random.default_rng(5)
    x, b = rng.standard_normal(matrix.shape[0]), rng.standard_normal(matrix.shape[0])
    r, nrm = csr_residual(matrix.indptr, matrix.indices, matrix.data, x, b)
    assert _rel(r, b - matrix @ x) < 1e-12
    assert abs(nrm - np.linalg.norm(b - matrix @ x)) <= 1e-12 * nrm


# ---------------------------------------------------------------- SOR sweeps vs PyAMG

@pytest.mark.parametrize("omega", [1.0, 1.37, 0.6])
@pytest.mark.parametrize("sweep", ["forward", "backward", "symmetric"])
def test_sweeps_match_pyamg(matrix, sweep, omega):
    rng = np.random.default_rng(7)
    n = matrix.shape[0]
    b = rng.standard_normal(n)
    x = rng.standard_normal(n)
    y = x.copy()
    dpos = diagonal_positions(matrix.indptr, matrix.indices)
    for _ in range(6):
        sor_sweep(matrix.indptr, matrix.indices, matrix.data, dpos, x, b, omega, sweep)
        if sweep == "symmetric":
            # PyAMG's sweep='symmetric' drops omega (symmetric Gauss-Seidel), so
            # compose its forward and backward SOR sweeps instead.
            pyamg_sor(matrix, y, b, omega, iterations=1, sweep="forward")
            pyamg_sor(matrix, y, b, omega, iterations=1, sweep="backward")
        else:
            pyamg_sor(matrix, y, b, omega, iterations=1, sweep=sweep)
        assert _rel(x, y) < 1e-12


def test_symmetric_gauss_seidel_matches_pyamg_symmetric_sweep(matrix):
    rng = np.random.default_rng(8)
    b, x = rng.standard_normal(matrix.shape[0]), rng.standard_normal(matrix.shape[0])
    y = x.copy()
    dpos = diagonal_positions(matrix.indptr, matrix.indices)
    sor_sweep(matrix.indptr, matrix.indices, matrix.data, dpos, x, b, 1.0, "symmetric", iterations=4)
    pyamg_sor(matrix, y, b, 1.0, iterations=4, sweep="symmetric")
    assert _rel(x, y) < 1e-12


def test_sweep_rejects_unknown_direction():
    A = linsolve.problems.poisson((4, 4))
    dpos = diagonal_positions(A.indptr, A.indices)
    with pytest.raises(ValueError, match="sweep"):
        sor_sweep(A.indptr, A.indices, A.data, dpos, np.zeros(16), np.ones(16), 1.0, "sideways")


def test_sweeps_float32():
    A = linsolve.problems.poisson((12, 12))
    A32 = A.astype(np.float32)
    b = np.ones(144)
    dpos = diagonal_positions(A.indptr, A.indices)
    x32 = np.zeros(144, dtype=np.float32)
    x64 = np.zeros(144)
    for _ in range(5):
        sor_symmetric(A32.indptr, A32.indices, A32.data, dpos, x32, b.astype(np.float32), 1.3)
        sor_symmetric(A.indptr, A.indices, A.data, dpos, x64, b, 1.3)
    assert x32.dtype == np.float32
    assert _rel(x32, x64) < 1e-5


def test_diagonal_positions_marks_missing():
    A = sp.csr_matrix(np.array([[2.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 3.0]]))
    A.eliminate_zeros()
    pos = diagonal_positions(A.indptr, A.indices)
    assert pos[1] == -1
    assert A.data[pos[0]] == 2.0 and A.data[pos[2]] == 3.0


def test_fused_sweep_residual(matrix):
    rng = np.random.default_rng(9)
    n = matrix.shape[0]
    b, x = rng.standard_normal(n), rng.standard_normal(n)
    x_in = x.copy()
    xprev = np.empty(n)
    dpos = diagonal_positions(matrix.indptr, matrix.indices)
    nrm = sor_forward_residual(matrix.indptr, matrix.indices, matrix.data, dpos, x, xprev, b, 1.45)
    ref = x_in.copy()
    sor_forward(matrix.indptr, matrix.indices, matrix.data, dpos, ref, b, 1.45)
    assert np.array_equal(xprev, x_in)
    assert _rel(x, ref) < 1e-14
    assert abs(nrm - np.linalg.norm(b - matrix @ x_in)) <= 1e-12 * nrm


# ---------------------------------------------------------------- SSOR application

@pytest.mark.parametrize("omega", [1.0, 1.6])
def test_ssor_apply_matches_dense_formula_and_sweep(omega):
    A = _variable_coefficient((6, 7))
    n = A.shape[0]
    Ad = A.toarray()
    D = np.diag(np.diag(Ad))
    W = D / omega + np.tril(Ad, -1)
    Minv = (2 - omega) / omega * np.linalg.solve(W.T, D @ np.linalg.inv(W))
    # The classical SSOR matrix (D + wL) D^-1 (D + wU) / (w (2 - w)).
    M = ((D + omega * np.tril(Ad, -1)) @ np.linalg.inv(D) @ (D + omega * np.triu(Ad, 1))
         / (omega * (2 - omega)))
    assert np.allclose(Minv, np.linalg.inv(M), rtol=1e-10, atol=1e-12)
    r = np.random.default_rng(2).standard_normal(n)
    z = np.empty(n)
    dpos = diagonal_positions(A.indptr, A.indices)
    ssor_apply(A.indptr, A.indices, A.data, dpos, omega, r, z)
    assert _rel(z, Minv @ r) < 1e-12
    x = np.zeros(n)
    sor_symmetric(A.indptr, A.indices, A.data, dpos, x, r, omega)
    assert _rel(z, x) < 1e-12


# ---------------------------------------------------------------- red-black and stencils

@pytest.mark.parametrize("shape", [(9, 12), (5, 6, 7), (1, 8), (4, 1, 5)])
@pytest.mark.parametrize("h", [None, 0.25])
def test_stencil_apply_matches_poisson(shape, h):
    A = linsolve.problems.poisson(shape, h=h)
    x = np.random.default_rng(4).standard_normal(shape)
    out = stencil_apply(x, h=h)
    assert _rel(out.ravel(), A @ x.ravel()) < 1e-12


@pytest.mark.parametrize("shape", [(10, 13), (6, 5, 7), (1, 9), (7, 1), (4, 1, 5), (3, 4, 1), (2, 3, 2)])
def test_red_black_matrix_free_matches_csr_and_sequential(shape):
    A = linsolve.problems.poisson(shape)
    n = A.shape[0]
    rng = np.random.default_rng(6)
    b, x0 = rng.standard_normal(n), rng.standard_normal(n)
    omega = 1.45
    red, black = red_black_rows(shape)
    # Matrix-free red-black sweeps.
    xg = x0.reshape(shape).copy()
    rb_sor_sweep(xg, b.reshape(shape).copy(), omega, iterations=3)
    # CSR colour sweeps.
    dpos = diagonal_positions(A.indptr, A.indices)
    xc = x0.copy()
    for _ in range(3):
        sor_sweep_rows(A.indptr, A.indices, A.data, dpos, xc, b, omega, red)
        sor_sweep_rows(A.indptr, A.indices, A.data, dpos, xc, b, omega, black)
    # Sequential PyAMG forward SOR in red-first ordering.
    perm = np.concatenate([red, black])
    P = A[perm][:, perm].tocsr()
    xs = x0[perm].copy()
    pyamg_sor(P, xs, b[perm], omega, iterations=3, sweep="forward")
    xs_back = np.empty(n)
    xs_back[perm] = xs
    assert _rel(xc, xs_back) < 1e-12
    assert _rel(xg.ravel(), xs_back) < 1e-12


def test_red_black_rows_are_uncoupled():
    shape = (5, 4, 3)
    A = linsolve.problems.poisson(shape).tocoo()
    red, black = red_black_rows(shape)
    colour = np.zeros(A.shape[0], dtype=int)
    colour[black] = 1
    off = A.row != A.col
    assert np.all(colour[A.row[off]] != colour[A.col[off]])
    assert len(red) + len(black) == A.shape[0]


def test_stencil_rejects_bad_shapes():
    with pytest.raises(ValueError, match="grid"):
        stencil_apply(np.zeros(5))
    with pytest.raises(ValueError, match="same"):
        rb_sor_sweep(np.zeros((4, 4)), np.zeros((4, 5)), 1.0)


def test_max_asymmetry_screen():
    from linsolve.kernels import csr_max_asymmetry

    A = _random_spd(200, seed=3)
    assert csr_max_asymmetry(A.indptr, A.indices, A.data) == 0.0
    B = A.tolil()
    B[5, 17] = B[5, 17] + 0.25          # value asymmetry
    B[40, 3] = 0.0
    B[3, 40] = -1.5                      # structural asymmetry
    B = B.tocsr()
    B.sort_indices()
    expected = np.abs((B - B.T).toarray()).max()
    assert csr_max_asymmetry(B.indptr, B.indices, B.data) == pytest.approx(expected, rel=1e-14)


def test_sweeps_and_ssor_with_int64_indices_and_float32():
    A = _variable_coefficient((9, 11), seed=4)
    ip, ix = A.indptr.astype(np.int64), A.indices.astype(np.int64)
    dpos = diagonal_positions(ip, ix)
    rng = np.random.default_rng(10)
    b, x = rng.standard_normal(A.shape[0]), rng.standard_normal(A.shape[0])
    y = x.copy()
    sor_sweep(ip, ix, A.data, dpos, x, b, 1.2, "forward", iterations=3)
    pyamg_sor(A, y, b, 1.2, iterations=3, sweep="forward")
    assert _rel(x, y) < 1e-12
    M32 = linsolve.precond.ssor(A.astype(np.float32), 1.3)
    M64 = linsolve.precond.ssor(A, 1.3)
    z32 = M32.matvec(b.astype(np.float32))
    assert z32.dtype == np.float32
    assert _rel(z32, M64.matvec(b)) < 1e-5
