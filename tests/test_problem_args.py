"""Argument checks of problem generators and the banded Cholesky edge case of a diagonal matrix."""
import numpy as np
import pytest
import scipy.sparse as sp

import linsolve
from linsolve.precond import banded_cholesky
from linsolve.problems import heat_sequence, poisson, shifted_laplacian_sequence


# --- banded Cholesky of a bandwidth-0 (diagonal) matrix -------------------------------------------------

@pytest.mark.parametrize("A", [sp.csr_matrix([[2.0]]), sp.diags(np.arange(1.0, 65.0)).tocsr()],
                         ids=["1x1", "diagonal"])
@pytest.mark.parametrize("sign", [1, -1])
def test_banded_cholesky_of_a_diagonal_matrix_is_its_exact_inverse(A, sign):
    A = sign * A
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    M = banded_cholesky(A)
    assert M.bandwidth == 0 and M.sign == sign
    np.testing.assert_allclose(M @ b, b / A.diagonal(), rtol=1e-15)


def test_banded_cholesky_keeps_float32_for_a_diagonal():
    M = banded_cholesky(sp.diags([2.0, 4.0]).tocsr())
    out = M @ np.ones(2, dtype=np.float32)
    assert out.dtype == np.float32 and out.tolist() == [0.5, 0.25]


@pytest.mark.parametrize("A", [sp.csr_matrix([[2.0]]), sp.diags(np.arange(1.0, 65.0)).tocsr()],
                         ids=["1x1", "diagonal"])
def test_banded_cg_solves_a_diagonal_system(A):
    b = np.ones(A.shape[0])
    res = linsolve.solve(A, b, method="banded-cg")
    assert res.converged and res.method == "banded-cg"
    np.testing.assert_allclose(res.x, b / A.diagonal(), rtol=1e-12)


@pytest.mark.parametrize("A", [sp.csr_matrix([[1.0, 2.0], [2.0, 1.0]]),
                               sp.csr_matrix(np.array([[1.0, 0, 3.0], [0, 1.0, 0], [3.0, 0, 1.0]]))],
                         ids=["tridiagonal", "band-2"])
def test_indefinite_band_error_is_one_line(A):
    with pytest.raises(ValueError, match="not positive definite") as err:
        banded_cholesky(A)
    assert "\n" not in str(err.value)


# --- poisson(h=...) -----------------------------------------------------------------------------------

@pytest.mark.parametrize("h", ["1", b"1", True, (1.0, "2"), 1 + 0j, [1.0, [2.0, 3.0]], object()])
def test_poisson_refuses_non_numeric_spacing_with_type_error(h):
    with pytest.raises(TypeError, match="h"):
        poisson((4, 4), h=h)


def test_poisson_accepts_numeric_spacings():
    base = poisson((4, 4))
    assert np.allclose(poisson((4, 4), h=2).toarray(), base.toarray() / 4)
    assert np.allclose(poisson((4, 4), h=np.float32(0.5)).toarray(), base.toarray() * 4)
    mixed = poisson((4, 4), h=[np.int64(1), 0.5])
    assert mixed.diagonal()[5] == pytest.approx(2 / 1 + 2 / 0.25)


# --- sequence lengths ---------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda T: shifted_laplacian_sequence(8, T), lambda T: heat_sequence(8, T)],
                         ids=["shifted_laplacian", "heat"])
@pytest.mark.parametrize("T", [0, -3])
def test_sequences_refuse_fewer_than_one_instance(make, T):
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        make(T)


@pytest.mark.parametrize("make", [lambda T: shifted_laplacian_sequence(8, T), lambda T: heat_sequence(8, T)],
                         ids=["shifted_laplacian", "heat"])
def test_sequences_of_one_instance_work(make):
    seq = make(1)
    assert len(seq) == 1 and len(list(seq)) == 1
