"""SOR / SSOR solvers, the SSOR preconditioner, SSOR-CG and the optimal-omega estimate."""
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from pyamg.relaxation.relaxation import sor as pyamg_sor
from scipy.sparse.linalg import LinearOperator, aslinearoperator

import linsolve
from linsolve.krylov import sor_result
from linsolve.krylov.sor import ssor_cg_result
from linsolve.precond import ssor
from linsolve.tuning.omega import jacobi_spectral_radius, optimal_omega


def _varcoeff(shape, seed=0):
    coeff = np.exp(np.random.default_rng(seed).uniform(-2.0, 2.0, size=shape))
    return linsolve.problems.poisson(shape, coeff=coeff)


def _reference_iterations(A, b, omega, rtol, symmetric, maxiter):
    """Iterations PyAMG's sweeps need, with the explicit residual after each one."""
    x = np.zeros_like(b)
    tol = rtol * np.linalg.norm(b)
    for k in range(maxiter + 1):
        if np.linalg.norm(b - A @ x) <= tol:
            return k, x
        pyamg_sor(A, x, b, omega, iterations=1, sweep="forward")
        if symmetric:
            pyamg_sor(A, x, b, omega, iterations=1, sweep="backward")
    return None, x


# ---------------------------------------------------------------- acceptance: iteration counts

def test_iterations_32x32_gauss_seidel_and_optimal_omega():
    A = linsolve.problems.poisson((32, 32))
    b = np.ones(A.shape[0])
    rtol = 1e-6
    # Theory: Gauss-Seidel contracts by rho_J^2 per sweep, rho_J = cos(pi h).
    rho_j = np.cos(np.pi / 33)
    predicted_gs = np.log(rtol) / np.log(rho_j ** 2)
    res_gs = linsolve.solve(A, b, method="sor", omega=1.0, rtol=rtol)
    assert res_gs.converged
    assert abs(res_gs.iterations - predicted_gs) < 0.05 * predicted_gs  # about 1500
    w_star = optimal_omega(A)
    assert abs(w_star - 2 / (1 + np.sqrt(1 - rho_j ** 2))) < 1e-6
    res_opt = linsolve.solve(A, b, method="sor", omega=w_star, rtol=rtol)
    assert res_opt.converged
    # Asymptotic rate omega* - 1; the Jordan block of SOR at omega* adds a
    # polynomial factor, so allow up to 2x the pure-rate prediction.
    predicted_opt = np.log(rtol) / np.log(w_star - 1)
    assert predicted_opt <= res_opt.iterations <= 2.0 * predicted_opt  # about 100
    assert res_opt.iterations < res_gs.iterations / 10
    # omega* is (near) the best fixed omega on a grid around it.
    counts = {w: linsolve.solve(A, b, method="sor", omega=w, rtol=rtol).iterations
              for w in np.round(np.linspace(1.70, 1.95, 11), 3)}
    assert res_opt.iterations <= 1.1 * min(counts.values())


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("omega", [1.0, 1.6])
def test_iteration_count_and_iterates_match_pyamg_loop(symmetric, omega):
    A = _varcoeff((12, 10))
    b = np.random.default_rng(1).standard_normal(A.shape[0])
    its_ref, x_ref = _reference_iterations(A, b, omega, 1e-6, symmetric, 5000)
    res = sor_result(A, b, omega=omega, rtol=1e-6, symmetric=symmetric)
    assert res.converged
    assert res.iterations == its_ref
    assert np.abs(res.x - x_ref).max() <= 1e-10 * np.abs(x_ref).max()


# ---------------------------------------------------------------- stopping rule and bookkeeping

@pytest.mark.parametrize("symmetric", [False, True])
def test_true_residual_history_and_exact_count(symmetric):
    A = linsolve.problems.poisson((9, 8, 7))
    b = np.random.default_rng(2).standard_normal(A.shape[0])
    res = linsolve.solve(A, b, method="sor", omega=1.4, rtol=1e-8, symmetric=symmetric)
    tol = 1e-8 * np.linalg.norm(b)
    true = np.linalg.norm(b - A @ res.x)
    assert res.converged and res.info == 0 and res.residual_kind == "true"
    assert true <= tol
    assert abs(res.residual_norms[-1] - true) <= 1e-10 * np.linalg.norm(b)
    assert res.residual_norms[-2] > tol  # one fewer iteration would not have converged
    assert len(res.residual_norms) == res.iterations + 1
    assert res.residual_norms[0] == pytest.approx(np.linalg.norm(b), rel=1e-12)
    assert res.method == ("ssor" if symmetric else "sor")
    assert res.extras == {"omega": 1.4, "symmetric": symmetric}


@pytest.mark.parametrize("symmetric", [False, True])
def test_callback_path_matches_compiled_path(symmetric):
    A = _varcoeff((10, 11), seed=3)
    b = np.random.default_rng(3).standard_normal(A.shape[0])
    iterates = []
    res_cb = sor_result(A, b, omega=1.3, rtol=1e-7, symmetric=symmetric, callback=iterates.append)
    res = sor_result(A, b, omega=1.3, rtol=1e-7, symmetric=symmetric)
    assert len(iterates) == res_cb.iterations == res.iterations
    assert np.array_equal(res_cb.x, res.x)
    assert np.array_equal(iterates[-1], res.x)
    assert np.allclose(res_cb.residual_norms, res.residual_norms, rtol=1e-13, atol=0)
    # callback gets copies, not the live iterate
    assert not any(it is res_cb.x for it in iterates)


def test_maxiter_and_chunking(monkeypatch):
    A = linsolve.problems.poisson((20, 20))
    b = np.ones(400)
    res = sor_result(A, b, omega=1.0, rtol=1e-10, maxiter=7)
    assert not res.converged and res.info == 7 and res.iterations == 7
    assert len(res.residual_norms) == 8
    assert res.residual_norms[-1] == pytest.approx(np.linalg.norm(b - A @ res.x), rel=1e-12)
    full = sor_result(A, b, omega=1.5, rtol=1e-8)
    full_capped = sor_result(A, b, omega=1.5, rtol=1e-8, maxiter=50)
    # linsolve.krylov.sor is the function; the module lives in sys.modules.
    sor_module = sys.modules["linsolve.krylov.sor"]
    monkeypatch.setattr(sor_module, "_CHUNK", 7)
    chunked = sor_result(A, b, omega=1.5, rtol=1e-8)
    assert chunked.iterations == full.iterations
    assert np.array_equal(chunked.x, full.x)
    assert np.allclose(chunked.residual_norms, full.residual_norms, rtol=1e-13)
    chunked_capped = sor_result(A, b, omega=1.5, rtol=1e-8, maxiter=50)
    assert chunked_capped.info == full_capped.info == 50
    assert np.array_equal(chunked_capped.x, full_capped.x)
    assert len(chunked_capped.residual_norms) == 51


def test_default_maxiter_is_10n():
    A = linsolve.problems.poisson((4, 4))
    res = sor_result(A, np.ones(16), omega=0.05, rtol=1e-14)
    assert res.iterations <= 160
    assert res.info in (0, 160)
    assert res.info == 0 or res.iterations == 160


def test_warm_start():
    A = linsolve.problems.poisson((16, 16))
    b = np.random.default_rng(4).standard_normal(256)
    cold = linsolve.solve(A, b, method="sor", omega=1.6, rtol=1e-8)
    x_exact = sp.linalg.spsolve(A.tocsc(), b)
    done = linsolve.solve(A, b, method="sor", omega=1.6, rtol=1e-8, x0=x_exact)
    assert done.iterations == 0 and done.converged
    assert np.array_equal(done.x, x_exact)
    near = linsolve.solve(A, b, method="sor", omega=1.6, rtol=1e-8, x0=x_exact + 1e-6 * np.ones(256))
    assert near.converged and near.iterations < cold.iterations / 2


def test_zero_rhs_and_float32():
    A = linsolve.problems.poisson((8, 8))
    x, info = linsolve.sor(A, np.zeros(64), x0=np.ones(64))
    assert info == 0 and not x.any()
    A32 = A.astype(np.float32)
    b32 = np.ones(64, dtype=np.float32)
    x32, info32 = linsolve.sor(A32, b32, omega=1.5, rtol=1e-5)
    assert info32 == 0 and x32.dtype == np.float32
    assert np.linalg.norm(b32 - A32 @ x32) <= 1e-5 * np.linalg.norm(b32)


def test_divergence_is_reported_not_converged():
    # Positive diagonal but indefinite: SOR diverges; we must say so (info -3).
    A = sp.csr_matrix(np.array([[1.0, 3.0], [3.0, 1.0]]))
    x, info = linsolve.sor(A, np.array([1.0, 2.0]), omega=1.0, maxiter=5000)
    assert info == -3
    res = sor_result(A, np.array([1.0, 2.0]), omega=1.0, maxiter=20)
    assert not res.converged and res.info == 20


def test_sor_accepts_dense_and_coo_converting_once(monkeypatch):
    A = linsolve.problems.poisson((10, 10))
    b = np.ones(100)
    x_ref, _ = linsolve.sor(A, b, omega=1.5, rtol=1e-8)
    x_dense, info = linsolve.sor(A.toarray(), b, omega=1.5, rtol=1e-8)
    assert info == 0 and np.array_equal(x_dense, x_ref)
    calls = []
    original = sp.coo_matrix.tocsr

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sp.coo_matrix, "tocsr", counting)
    seen = []
    x_coo, info = linsolve.sor(A.tocoo(), b, omega=1.5, rtol=1e-8, callback=seen.append)
    assert info == 0 and np.array_equal(x_coo, x_ref)
    assert len(seen) > 20 and len(calls) == 1


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("omega", [0.0, 2.0, -0.5, 2.5, float("nan")])
def test_bad_omega(omega):
    A = linsolve.problems.poisson((5, 5))
    with pytest.raises(ValueError, match="omega"):
        linsolve.sor(A, np.ones(25), omega=omega)
    with pytest.raises(ValueError, match="omega"):
        ssor(A, omega)
    with pytest.raises(ValueError, match="omega"):
        linsolve.solve(A, np.ones(25), method="ssor-cg", omega=omega)


def test_bad_types():
    A = linsolve.problems.poisson((5, 5))
    b = np.ones(25)
    with pytest.raises(TypeError, match="omega"):
        linsolve.sor(A, b, omega="1.5")
    with pytest.raises(TypeError, match="symmetric"):
        linsolve.sor(A, b, symmetric="yes")
    with pytest.warns(UserWarning, match="LinearOperator"):        # no entries to sweep: CG, said so
        assert linsolve.sor(aslinearoperator(A), b)[1] == 0
    with pytest.raises(ValueError, match="length"):
        linsolve.sor(A, np.ones(24))
    with pytest.raises(ValueError, match="M must be None"):
        linsolve.solve(A, b, method="sor", M=ssor(A))
    with pytest.raises(ValueError, match="do not pass M"):
        linsolve.solve(A, b, method="ssor-cg", M=ssor(A))


@pytest.mark.parametrize("value", [0.0, -2.0])
def test_bad_diagonal_names_first_row(value):
    A = linsolve.problems.poisson((5, 5)).tolil()
    A[7, 7] = value
    A[12, 12] = value
    A = A.tocsr()
    for call in (lambda: linsolve.sor(A, np.ones(25)), lambda: ssor(A),
                 lambda: linsolve.solve(A, np.ones(25), method="ssor-cg"),
                 lambda: jacobi_spectral_radius(A)):
        with pytest.raises(ValueError, match="row 7"):
            call()
    # A structurally missing diagonal entry is a zero diagonal too.
    B = linsolve.problems.poisson((5, 5)).tolil()
    B[3, 3] = 0.0
    B = B.tocsr()
    B.eliminate_zeros()
    with pytest.raises(ValueError, match="row 3"):
        linsolve.sor(B, np.ones(25))


# ---------------------------------------------------------------- SSOR preconditioner and SSOR-CG

@pytest.mark.parametrize("omega", [1.0, 1.5, 1.9])
def test_ssor_preconditioner_symmetric_positive_definite(omega):
    A = _varcoeff((14, 13), seed=5)
    M = ssor(A, omega)
    assert isinstance(M, LinearOperator) and M.shape == A.shape
    rng = np.random.default_rng(6)
    for _ in range(3):
        x, y = rng.standard_normal(A.shape[0]), rng.standard_normal(A.shape[0])
        xMy, yMx = x @ M.matvec(y), y @ M.matvec(x)
        assert abs(xMy - yMx) <= 1e-12 * max(abs(xMy), np.linalg.norm(x) * np.linalg.norm(M.matvec(y)))
        assert x @ M.matvec(x) > 0
    assert np.allclose(M.rmatvec(x), M.matvec(x))
    assert np.allclose(M.matmat(np.column_stack([x, y]))[:, 1], M.matvec(y))


def test_ssor_converts_once_and_cg_converges(monkeypatch):
    A = linsolve.problems.poisson((32, 32))
    M = ssor(A.tocsc(), 1.7)

    def forbidden(*args, **kwargs):
        raise AssertionError("conversion during application")

    monkeypatch.setattr(sp.csc_matrix, "tocsr", forbidden)
    b = np.ones(A.shape[0])
    plain = linsolve.krylov.cg_result(A, b, rtol=1e-8)
    pre = linsolve.krylov.cg_result(A, b, rtol=1e-8, M=M)
    assert pre.converged and np.linalg.norm(b - A @ pre.x) <= 1e-8 * np.linalg.norm(b)
    assert pre.iterations < plain.iterations / 2


def test_ssor_cg_method():
    A = _varcoeff((24, 24), seed=7)
    b = np.random.default_rng(8).standard_normal(A.shape[0])
    res = linsolve.solve(A, b, method="ssor-cg", omega=1.6, rtol=1e-8)
    assert res.converged and res.method == "ssor-cg" and res.extras["omega"] == 1.6
    assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
    assert 0 <= res.setup_time_s <= res.time_s
    direct = ssor_cg_result(A, b, rtol=1e-8, omega=1.6, x0=res.x)
    assert direct.iterations == 0
    # default omega is 1 (symmetric Gauss-Seidel)
    assert linsolve.solve(A, b, method="ssor-cg", rtol=1e-8).extras["omega"] == 1.0


def test_ssor_rejects_nonsymmetric():
    A = linsolve.problems.poisson((6, 6)).tolil()
    A[0, 1] = -2.0
    with pytest.raises(ValueError, match="symmetric"):
        ssor(A.tocsr())


# ---------------------------------------------------------------- optimal omega accuracy

@pytest.mark.parametrize("make", [
    lambda: linsolve.problems.poisson((12, 15)),
    lambda: linsolve.problems.poisson((5, 6, 7)),
    lambda: _varcoeff((12, 13), seed=9),
    lambda: linsolve.problems.poisson((10, 10)) + 0.3 * sp.identity(100, format="csr"),
    lambda: linsolve.problems.poisson((5, 6)),  # dense path (n <= 64)
])
def test_spectral_radius_against_dense_reference(make):
    A = sp.csr_matrix(make())
    d = A.diagonal()
    S = A.toarray() / np.sqrt(np.outer(d, d))
    rho = np.abs(1.0 - np.linalg.eigvalsh(S)).max()
    est = jacobi_spectral_radius(A)
    assert abs(est - rho) < 1e-9
    assert est <= rho + 1e-12
    w_true = 2 / (1 + np.sqrt(1 - rho ** 2))
    assert abs(optimal_omega(A) - w_true) < 1e-7


def test_spectral_radius_budget_and_bad_input():
    A = linsolve.problems.poisson((40, 40))
    with pytest.warns(RuntimeWarning, match="did not reach"):
        rough = jacobi_spectral_radius(A, maxiter=5)
    assert rough <= np.cos(np.pi / 41) + 1e-12
    with pytest.raises(ValueError, match="tol"):
        jacobi_spectral_radius(A, tol=0)
    with pytest.raises(ValueError, match="maxiter"):
        jacobi_spectral_radius(A, maxiter=0)
    with pytest.raises(ValueError, match="symmetric"):
        jacobi_spectral_radius(sp.csr_matrix(np.array([[2.0, 1.0], [0.0, 2.0]])))
    # rho >= 1: Young's formula does not apply; warn and fall back to Gauss-Seidel.
    B = sp.csr_matrix(np.array([[1.0, 2.0], [2.0, 1.0]]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert optimal_omega(B) == 1.0
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)


@pytest.mark.parametrize("with_callback", [False, True])
def test_explicit_check_disagreement_keeps_iterating(monkeypatch, with_callback):
    # Simulate the fused and the explicit residual straddling tol once.
    sor_module = sys.modules["linsolve.krylov.sor"]
    real = sor_module._explicit_residual_norm
    calls = []

    def first_call_fails(mat, x, b):
        calls.append(1)
        value = real(mat, x, b)
        return 1e3 * value + 1.0 if len(calls) == 1 else value

    A = linsolve.problems.poisson((12, 12))
    b = np.ones(144)
    normal = sor_result(A, b, omega=1.5, rtol=1e-8)
    monkeypatch.setattr(sor_module, "_explicit_residual_norm", first_call_fails)
    seen = []
    res = sor_result(A, b, omega=1.5, rtol=1e-8, callback=seen.append if with_callback else None)
    assert res.converged and res.iterations == normal.iterations + 1
    assert len(res.residual_norms) == res.iterations + 1
    assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
    assert res.true_residual_norm == pytest.approx(np.linalg.norm(b - A @ res.x), rel=1e-10)
    if with_callback:
        assert len(seen) == res.iterations


def test_info_zero_iff_true_residual_meets_tol_property():
    pytest.importorskip("hypothesis")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=40, deadline=None)
    @given(n=st.integers(2, 40), seed=st.integers(0, 10_000), omega=st.floats(0.05, 1.95),
           rtol=st.sampled_from([1e-2, 1e-6, 1e-10]), maxiter=st.integers(1, 400),
           symmetric=st.booleans())
    def check(n, seed, omega, rtol, maxiter, symmetric):
        rng = np.random.default_rng(seed)
        B = sp.random(n, n, density=0.3, random_state=rng, format="csr")
        A = (B @ B.T + sp.identity(n) * rng.uniform(0.01, 1.0)).tocsr()
        b = rng.standard_normal(n)
        res = sor_result(A, b, omega=omega, rtol=rtol, maxiter=maxiter, symmetric=symmetric)
        true = np.linalg.norm(b - A @ res.x)
        tol = rtol * np.linalg.norm(b)
        if res.info == 0:
            assert true <= tol
        elif abs(true - tol) > 1e-10 * tol:  # away from rounding ties at the threshold
            assert true > tol
        assert res.iterations <= maxiter and len(res.residual_norms) == res.iterations + 1
        assert res.info in (0, res.iterations, -3)

    check()
