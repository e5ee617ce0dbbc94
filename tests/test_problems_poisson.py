"""Poisson generators and matrix files."""
import gzip
import os

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import scipy.sparse.linalg as sla

import linsolve
from linsolve.problems import load_matrix, poisson


def _kron_laplacian(shape):
    """Independent reference: sum of Kronecker products of 1D Dirichlet second differences."""
    ops = [sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(s, s)) for s in shape]
    eyes = [sp.identity(s) for s in shape]
    total = None
    for axis in range(len(shape)):
        factors = [ops[d] if d == axis else eyes[d] for d in range(len(shape))]
        term = factors[0]
        for f in factors[1:]:
            term = sp.kron(term, f)
        total = term if total is None else total + term
    return total.tocsr()


@pytest.mark.parametrize("shape", [(7, 5), (4, 6, 3), (1, 9)])
def test_dirichlet_matches_kronecker_reference(shape):
    A = poisson(shape)
    ref = _kron_laplacian(shape)
    assert A.shape == ref.shape
    assert abs(A - ref).max() < 1e-14


def test_spacing_scales_each_axis():
    A = poisson((5, 6), h=(0.5, 0.25))
    ops = [sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(s, s)) for s in (5, 6)]
    ref = sp.kron(ops[0], sp.identity(6)) / 0.25 + sp.kron(sp.identity(5), ops[1]) / 0.0625
    assert abs(A - ref).max() < 1e-12


def test_neumann_singular_with_constant_nullspace_and_pin():
    A = poisson((6, 5, 4), bc="neumann")
    assert abs(A @ np.ones(A.shape[0])).max() < 1e-12
    assert abs(A - A.T).max() == 0
    P = poisson((6, 5, 4), bc="neumann", pin=True)
    eigs = np.linalg.eigvalsh(P.toarray())
    assert eigs.min() > 1e-8


def test_variable_coefficient_harmonic_average():
    k = np.array([[1.0, 3.0], [2.0, 5.0]])
    A = poisson((2, 2), coeff=k, bc="neumann").toarray()
    # Face between (0,0) and (0,1): harmonic mean 2*1*3/(1+3) = 1.5.
    assert A[0, 1] == pytest.approx(-1.5)
    assert A[0, 2] == pytest.approx(-2 * 1 * 2 / 3)
    assert A[3, 1] == pytest.approx(-2 * 5 * 3 / 8)
    assert A.sum(axis=1) == pytest.approx(np.zeros(4), abs=1e-14)
    Ad = poisson((2, 2), coeff=k).toarray()
    # Dirichlet boundary faces carry the cell's own coefficient.
    assert Ad[0, 0] == pytest.approx(1.5 + 4 / 3 + 2 * 1.0)
    assert np.all(np.linalg.eigvalsh(Ad) > 0)


def test_variable_coefficient_spd_and_solvable():
    rng = np.random.default_rng(0)
    k = np.exp(2 * rng.standard_normal((10, 9, 8)))
    A = poisson(k.shape, coeff=k)
    assert abs(A - A.T).max() <= 1e-12 * abs(A).max()
    b = rng.standard_normal(A.shape[0])
    x, info = linsolve.cg(A, b, rtol=1e-10, maxiter=5000)
    assert info == 0


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(shape=(4,)), ValueError, "2 or 3"),
    (dict(shape=5), TypeError, "shape"),
    (dict(shape=(4, 0)), ValueError, ">= 1"),
    (dict(shape=(4, 2.5)), TypeError, "ints"),
    (dict(shape=(4, 4), bc="periodic"), ValueError, "bc"),
    (dict(shape=(4, 4), coeff=np.ones((3, 4))), ValueError, "coeff"),
    (dict(shape=(4, 4), coeff=-np.ones((4, 4))), ValueError, "coeff"),
    (dict(shape=(4, 4), coeff=np.full((4, 4), np.nan)), ValueError, "NaN"),
    (dict(shape=(4, 4), h=0.0), ValueError, "h"),
    (dict(shape=(4, 4), h=(1.0, 2.0, 3.0)), ValueError, "h"),
    (dict(shape=(4, 4), pin=True), ValueError, "pin"),
])
def test_poisson_bad_input(kwargs, exc, word):
    shape = kwargs.pop("shape")
    with pytest.raises(exc, match=word):
        poisson(shape, **kwargs)


def test_load_matrix_roundtrips(tmp_path):
    A = poisson((5, 4))
    scipy.io.mmwrite(str(tmp_path / "a.mtx"), A)
    with open(tmp_path / "a.mtx", "rb") as src, gzip.open(tmp_path / "b.mtx.gz", "wb") as dst:
        dst.write(src.read())
    sp.save_npz(tmp_path / "c.npz", A)
    for name in ("a.mtx", "b.mtx.gz", "c.npz"):
        B = load_matrix(tmp_path / name)
        assert sp.isspmatrix_csr(B) and B.dtype == np.float64
        assert abs(B - A).max() == 0


def test_load_matrix_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_matrix(tmp_path / "missing.mtx")
    with pytest.raises(ValueError, match="not found"):   # the contract's bad-input type as well
        load_matrix(tmp_path / "missing.mtx")
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match="unsupported"):
        load_matrix(tmp_path / "x.txt")
    (tmp_path / "bad.mtx").write_text("this is not matrix market\n")
    with pytest.raises(ValueError, match="cannot read"):
        load_matrix(tmp_path / "bad.mtx")
    scipy.io.mmwrite(str(tmp_path / "rect.mtx"), sp.random(4, 3, density=0.5))
    with pytest.raises(ValueError, match="square"):
        load_matrix(tmp_path / "rect.mtx")
    with pytest.raises(ValueError, match="directory"):
        load_matrix(tmp_path)
    (tmp_path / "huge.mtx").write_text("%%MatrixMarket matrix coordinate real general\n"
                                       "100000000000 100000000000 1\n1 1 1.0\n")   # was a MemoryError
    with pytest.raises(ValueError, match="does not fit in memory"):
        load_matrix(tmp_path / "huge.mtx")


def test_real_matrix_from_pyamg_gallery_solves():
    pyamg = pytest.importorskip("pyamg")
    data = pyamg.gallery.load_example("airfoil")
    A = data["A"].tocsr()
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    res = linsolve.solve(A, b, method="cg", rtol=1e-8)
    ref = sla.spsolve(A.tocsc(), b)
    assert res.converged
    assert np.linalg.norm(res.x - ref) <= 1e-5 * np.linalg.norm(ref)


@pytest.mark.parametrize("h", ["a", [1.0, "b"]])
def test_a_spacing_that_is_not_a_number_is_named(h):
    with pytest.raises(TypeError, match=r"h \(the grid spacing\) must be a number"):
        linsolve.problems.poisson((8, 8), h=h)
