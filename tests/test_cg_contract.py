"""linsolve.cg over the whole of scipy.sparse.linalg.cg's contract, category by category.

Each test runs SciPy's cg and ours on the same input and compares the iterates
handed to ``callback`` (equal to 1e-12 relative) and the returned ``(x, info)``;
the categories follow SciPy's own ``_isolve/tests/test_iterative.py``.
"""
import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla

import linsolve
from linsolve._validation import ToleranceError


def _run(solver, A, b, **kwargs):
    hist = []
    x, info = solver(A, b, callback=lambda xk: hist.append(np.array(xk, copy=True)), **kwargs)
    return x, info, hist


def assert_same_as_scipy(A, b, rel=1e-12, **kwargs):
    """Same iterate sequence, same x and the same info (where SciPy's info is honest)."""
    x_ref, info_ref, h_ref = _run(sla.cg, A, b, **kwargs)
    x, info, h = _run(linsolve.cg, A, b, **kwargs)
    assert len(h) == len(h_ref), (len(h), len(h_ref))
    for k, (ours, theirs) in enumerate(zip(h, h_ref)):
        scale = max(np.linalg.norm(theirs), np.finfo(float).tiny)
        assert np.linalg.norm(ours - theirs) <= rel * scale, f"iterate {k} differs"
    assert x.dtype == x_ref.dtype and x.shape == x_ref.shape
    np.testing.assert_allclose(x, x_ref, rtol=rel, atol=rel * max(np.abs(x_ref).max(), 1e-300))
    assert info == info_ref
    return x, info, h


def _poisson1d(n=40):
    return sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n), format="csr")


def _spd_dense(n=9, seed=1234, complex_=False):
    rng = np.random.RandomState(seed)
    data = rng.rand(n, n) + (1j * rng.rand(n, n) if complex_ else 0)
    return data.conj() @ data.T


def _hermitian_sparse(shape=(12, 12), seed=0):
    A = linsolve.problems.poisson(shape).astype(complex)
    n = A.shape[0]
    rng = np.random.default_rng(seed)
    K = sp.triu(sp.random(n, n, density=0.02, random_state=seed, format="csr"), k=1) * 0.2j
    H = (A + K + K.conj().T).tocsr()
    assert abs(H - H.conj().T).max() == 0 and np.linalg.eigvalsh(H.toarray()).min() > 0
    return H, rng.standard_normal(n) + 1j * rng.standard_normal(n)


# ----------------------------------------------------------------------------- SciPy's own cases

SCIPY_CASES = {
    "poisson1d": lambda: _poisson1d(),
    "poisson1d-F": lambda: _poisson1d().astype(np.float32),
    "poisson2d": lambda: sp.kronsum(_poisson1d(), _poisson1d()).tocsr(),
    "poisson2d-F": lambda: sp.kronsum(_poisson1d(), _poisson1d()).tocsr().astype(np.float32),
    "rand-sym-pd": lambda: _spd_dense(),
    "rand-sym-pd-F": lambda: _spd_dense().astype(np.float32),
    "rand-cmplx-sym-pd": lambda: _spd_dense(complex_=True),
    "rand-cmplx-sym-pd-F": lambda: _spd_dense(complex_=True).astype(np.complex64),
    # SciPy's suite skips cg on these; CG works on negative definite systems and so do we.
    "neg-poisson1d": lambda: -_poisson1d(),
    "neg-poisson1d-F": lambda: (-_poisson1d()).astype(np.float32),
}


@pytest.mark.parametrize("name", sorted(SCIPY_CASES))
def test_scipy_cases_same_iterates(name):
    A = SCIPY_CASES[name]()
    b = np.arange(A.shape[0], dtype=float)
    single = A.dtype in (np.float32, np.complex64)
    x, info, _ = assert_same_as_scipy(A, b, rel=1e-5 if single else 1e-12, x0=0 * b,
                                      rtol=1e-2 if single else 1e-8)
    assert info == 0


@pytest.mark.parametrize("name", sorted(SCIPY_CASES))
def test_maxiter_one_calls_back_once(name):
    A = SCIPY_CASES[name]()
    b = np.arange(A.shape[0], dtype=float)
    calls = []
    x, info = linsolve.cg(A, b, x0=0 * b, rtol=1e-12, maxiter=np.int64(1), callback=calls.append)
    assert len(calls) == 1 and info == 1


# ----------------------------------------------------------------------------- complex Hermitian

@pytest.mark.parametrize("precondition", [False, True])
def test_complex_hermitian_sparse_same_iterates(precondition):
    H, b = _hermitian_sparse()
    kwargs = dict(rtol=1e-10)
    if precondition:
        kwargs["M"] = sp.diags(1.0 / H.diagonal().real)
    x, info, hist = assert_same_as_scipy(H, b, **kwargs)
    assert info == 0 and x.dtype == np.complex128 and len(hist) > 5
    assert np.linalg.norm(b - H @ x) <= 1e-10 * np.linalg.norm(b)


def test_complex_rhs_with_real_matrix_is_complex_solve():
    A = linsolve.problems.poisson((10, 10))
    b = np.exp(1j * np.arange(100.0))
    x, info, _ = assert_same_as_scipy(A, b, rtol=1e-9)
    assert info == 0 and np.iscomplexobj(x)


def test_other_methods_still_refuse_complex():
    A = linsolve.problems.poisson((6, 6))
    with pytest.raises(TypeError, match="complex"):
        linsolve.solve(A.astype(complex), np.ones(36), method="amg-cg")


# ----------------------------------------------------------------------------- x0

@pytest.mark.parametrize("M", [None, "jacobi"])
def test_x0_mb_and_x0_not_overwritten(M):
    A = SCIPY_CASES["poisson2d"]()
    b = np.arange(A.shape[0], dtype=float)
    kwargs = dict(rtol=1e-8, x0="Mb")
    if M == "jacobi":
        kwargs["M"] = sp.diags(1.0 / A.diagonal())
    assert_same_as_scipy(A, b, **kwargs)
    x0 = np.ones(A.shape[0])
    assert_same_as_scipy(A, b, rtol=1e-8, x0=x0)
    assert np.all(x0 == 1.0)
    with pytest.raises(ValueError, match="x0"):
        linsolve.cg(A, b, x0="zeros")


def test_x0_that_solves_exactly_returns_at_once():
    x, info = linsolve.cg(np.eye(2), np.array([-1.0, -1.0]), x0=np.array([-1.0, -1.0]))
    assert info == 0 and np.array_equal(x, [-1.0, -1.0])


def test_x0_dtype_does_not_change_the_solve_dtype():
    A = SCIPY_CASES["poisson2d-F"]()
    b = np.arange(A.shape[0], dtype=np.float32)
    x, info, _ = assert_same_as_scipy(A, b, rel=1e-6, rtol=1e-3, x0=np.zeros(A.shape[0]))
    assert x.dtype == np.float32
    x, info, _ = assert_same_as_scipy(A, b.astype(np.float64), rtol=1e-6)   # float32 A, float64 b: float64
    assert x.dtype == np.float64


# ----------------------------------------------------------------------------- tolerances

def _atol_problem():
    rng = np.random.default_rng(168441431005389)
    A = rng.uniform(size=[10, 10])
    A = A @ A.T + 10 * np.eye(10)
    M0 = rng.standard_normal(size=(10, 10))
    return A, 1e3 * rng.uniform(size=10), M0 @ M0.T


TOLS = np.r_[0, np.logspace(-9, 2, 7), np.inf]


@pytest.mark.parametrize("M_scale", [None, 1e-6, 1e6])
def test_tolerance_grid_including_zero_and_inf(M_scale):
    A, b, M0 = _atol_problem()
    M = None if M_scale is None else M_scale * M0
    for rtol, atol in itertools.product(TOLS, TOLS):
        if rtol == 0 and atol == 0:
            continue
        x, info, hist = assert_same_as_scipy(A, b, rel=1e-11, M=M, rtol=rtol, atol=atol)
        assert info == 0
        assert np.linalg.norm(A @ x - b) <= 1.00025 * max(atol, rtol * np.linalg.norm(b))
        if max(rtol, atol) == np.inf:
            assert hist == [] and not x.any()


def test_zero_tolerances_run_to_maxiter():
    A = SCIPY_CASES["poisson2d"]()
    b = np.arange(A.shape[0], dtype=float)
    x, info, hist = assert_same_as_scipy(A, b, rtol=0.0, atol=0.0, maxiter=25)
    assert info == 25 and len(hist) == 25


@pytest.mark.parametrize("rtol", [np.inf, np.nan, 1e-8])
@pytest.mark.parametrize("x0", [None, "ones"])
def test_zero_rhs_gives_zero_like_scipy(rtol, x0):
    A, _, _ = _atol_problem()
    b = np.zeros(10)
    x0 = None if x0 is None else np.ones(10)
    x_ref, info_ref = sla.cg(A, b, x0=x0, rtol=rtol)
    x, info = linsolve.cg(A, b, x0=x0, rtol=rtol)
    assert info == info_ref == 0 and not x.any() and not x_ref.any()


def test_nan_rtol_stops_on_atol_alone_like_scipy():
    A = SCIPY_CASES["poisson2d"]()
    b = np.arange(A.shape[0], dtype=float)
    x, info, hist = assert_same_as_scipy(A, b, rtol=np.nan, atol=1e-3 * np.linalg.norm(b))
    assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-3 * np.linalg.norm(b)
    x, info, hist = assert_same_as_scipy(A, b, rtol=np.float32(np.nan), maxiter=12)   # atol = 0: maxiter
    assert info == 12


@pytest.mark.parametrize("kind", ["numpy32", "numpy64", "0-d", "int"])
def test_numpy_and_0d_tolerances(kind):
    A = SCIPY_CASES["poisson2d"]()
    b = np.arange(A.shape[0], dtype=float)
    make = {"numpy32": np.float32, "numpy64": np.float64, "0-d": np.array, "int": np.int64}[kind]
    rtol = make(1e-6) if kind != "int" else make(0)
    atol = make(1e-9) if kind != "int" else make(1)
    assert_same_as_scipy(A, b, rtol=rtol, atol=atol, maxiter=np.int64(500))


@pytest.mark.parametrize("atol", ["legacy", None, -1, np.nan])
def test_invalid_atol_is_value_error(atol):
    A, b, _ = _atol_problem()
    with pytest.raises(ValueError, match="atol"):
        linsolve.cg(A, b, atol=atol)


@pytest.mark.parametrize("bad", [None, "abc", [1e-5, 1e-6], np.array([1e-5]), True])
def test_non_numeric_tolerance_is_both_value_and_type_error(bad):
    A, b, _ = _atol_problem()
    for name in ("rtol", "atol"):
        with pytest.raises(ToleranceError, match=name) as err:
            linsolve.cg(A, b, **{name: bad})
        assert isinstance(err.value, ValueError) and isinstance(err.value, TypeError)


def test_negative_rtol_is_refused():
    A, b, _ = _atol_problem()
    with pytest.raises(ValueError, match="rtol"):
        linsolve.cg(A, b, rtol=-1e-6)


def test_tolerances_are_keyword_only():
    A, b, _ = _atol_problem()
    with pytest.raises(TypeError):
        linsolve.cg(A, b, None, 1e-5)


# ----------------------------------------------------------------------------- negative definite

def _neg_pressure():
    from linsolve.problems import AIR, FLUID, SOLID, pressure_matrix

    types = np.full((20, 16), FLUID)
    types[0, :] = AIR
    types[8:12, 5:9] = SOLID
    A = pressure_matrix(types)
    fluid = types.ravel() == FLUID
    b = np.where(fluid, np.random.default_rng(5).standard_normal(fluid.size), 0.0)
    return A, b, fluid


@pytest.mark.parametrize("M", [None, "neg-jacobi", "pos-amg", "neg-amg"])
def test_negative_definite_iterates_like_scipy(M):
    A, b, fluid = _neg_pressure()
    N = -A                                   # FiPy / PhiFlow hand over the negative definite matrix
    kwargs = dict(rtol=1e-9)
    if M == "neg-jacobi":
        kwargs["M"] = sp.diags(1.0 / N.diagonal())
    elif M == "pos-amg":
        kwargs["M"] = linsolve.precond.amg(A)
    elif M == "neg-amg":
        amg = linsolve.precond.amg(A)
        kwargs["M"] = sla.LinearOperator(A.shape, matvec=lambda r: -amg.matvec(r))
    x, info, hist = assert_same_as_scipy(N, -b, **kwargs)
    assert info == 0 and len(hist) > 3
    assert np.linalg.norm(-b - N @ x) <= 1e-9 * np.linalg.norm(b)


def test_negative_definite_is_the_positive_solve_bit_for_bit():
    A, b, _ = _neg_pressure()
    x_pos, _ = linsolve.cg(A, b, rtol=1e-10)
    x_neg, info = linsolve.cg(-A, -b, rtol=1e-10)
    assert info == 0 and np.array_equal(x_pos, x_neg)


def test_sign_change_iterates_on_like_scipy_and_may_converge():
    A = sp.diags([1.0, 2.0, 3.0, -0.5, 4.0, 5.0]).tocsr()      # indefinite: p^T A p changes sign
    x, info, hist = assert_same_as_scipy(A, np.ones(6), rtol=1e-10)
    assert info == 0 and np.linalg.norm(np.ones(6) - A @ x) <= 1e-10 * np.sqrt(6)


def test_indefinite_unconverged_is_minus_one_with_scipy_iterates():
    rng = np.random.default_rng(4)
    Q, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    A = sp.csr_matrix(Q @ np.diag(np.r_[np.linspace(1, 50, 40), -np.linspace(1, 30, 20)]) @ Q.T)
    b = rng.standard_normal(60)
    x_ref, info_ref, h_ref = _run(sla.cg, A, b, rtol=1e-12, maxiter=15)
    x, info, h = _run(linsolve.cg, A, b, rtol=1e-12, maxiter=15)
    assert info_ref == 15 and info == -1 and len(h) == len(h_ref) == 15
    for ours, theirs in zip(h, h_ref):
        assert np.linalg.norm(ours - theirs) <= 1e-12 * np.linalg.norm(theirs)
    res = linsolve.krylov.cg_result(A, b, rtol=1e-12, maxiter=15)
    assert "indefinite" in res.message


def test_exact_zero_curvature_stops_at_once():
    x, info = linsolve.cg(sp.diags([1.0, -1.0]).tocsr(), np.ones(2))
    assert info == -1 and not x.any()


# ----------------------------------------------------------------------------- legacy protocol

def test_psolve_on_a_linear_operator_is_the_preconditioner():
    A = SCIPY_CASES["poisson2d"]()
    b = np.arange(A.shape[0], dtype=float)
    d = A.diagonal()
    calls = []

    def psolve(r):
        calls.append(1)
        return r / d

    op = sla.aslinearoperator(A)
    op.psolve = psolve
    x, info = linsolve.cg(op, b, rtol=1e-8)
    n_ours = len(calls)
    calls.clear()
    x_ref, info_ref = sla.cg(op, b, rtol=1e-8)
    assert info == info_ref == 0 and n_ours == len(calls) > 0
    np.testing.assert_allclose(x, x_ref, rtol=1e-12)


def test_honest_where_scipy_is_not():
    # SciPy stops on the recurrence residual; ours confirms on the true one. A float32 system
    # asked for more than float32 can certify shows the difference.
    A = SCIPY_CASES["poisson2d-F"]()
    b = np.ones(A.shape[0], np.float32)
    x, info = linsolve.cg(A, b, rtol=1e-7, maxiter=2000)
    true = np.linalg.norm(b - A @ x)
    assert (info == 0) == (true <= 1e-7 * np.linalg.norm(b))
