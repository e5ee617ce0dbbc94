"""Property-based checks of the stopping rule: info == 0 exactly when the true residual meets it."""
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import linsolve


@st.composite
def spd_systems(draw):
    n = draw(st.integers(min_value=1, max_value=40))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    cond_exp = draw(st.floats(min_value=0.0, max_value=6.0))
    density = draw(st.floats(min_value=0.05, max_value=1.0))
    rng = np.random.default_rng(seed)
    B = sp.random(n, n, density=density, random_state=rng, format="csr")
    A = (B @ B.T).toarray()
    # Mix in a diagonal spanning 10**cond_exp so conditioning varies widely.
    A += np.diag(np.logspace(0, cond_exp, n)[rng.permutation(n)])
    A = sp.csr_matrix((A + A.T) / 2)
    b = rng.standard_normal(n) * 10 ** rng.uniform(-3, 3)
    if draw(st.booleans()):
        b[rng.random(n) < 0.5] = 0.0
    rtol = 10 ** draw(st.floats(min_value=-12, max_value=-1))
    maxiter = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=3 * n + 5)))
    return A, b, rtol, maxiter


def _check(A, b, x, info, rtol, atol=0.0):
    true = np.linalg.norm(b - A @ x)
    threshold = max(rtol * np.linalg.norm(b), atol)
    if info == 0:
        assert true <= threshold, (true, threshold)
    else:
        assert true > threshold or not np.isfinite(true), (info, true, threshold)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spd_systems())
def test_cg_info_matches_true_residual(system):
    A, b, rtol, maxiter = system
    x, info = linsolve.cg(A, b, rtol=rtol, maxiter=maxiter)
    _check(A, b, x, info, rtol)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spd_systems(), st.sampled_from(["cg", "amg-cg"]))
def test_solve_converged_flag_is_honest(system, method):
    A, b, rtol, maxiter = system
    if method == "amg-cg" and A.shape[0] < 2:
        return
    res = linsolve.solve(A, b, method=method, rtol=rtol, maxiter=maxiter)
    _check(A, b, res.x, res.info, rtol)
    assert res.converged == (res.info == 0)
    assert res.true_residual_norm == pytest.approx(np.linalg.norm(b - A @ res.x), rel=1e-6, abs=1e-300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spd_systems(), st.floats(min_value=0.2, max_value=1.9), st.booleans())
def test_sor_info_matches_true_residual(system, omega, symmetric):
    A, b, rtol, maxiter = system
    x, info = linsolve.sor(A, b, omega=omega, symmetric=symmetric, rtol=rtol,
                           maxiter=maxiter if maxiter is not None else 2000)
    _check(A, b, x, info, rtol)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=4, max_value=20), st.integers(min_value=4, max_value=20),
       st.integers(min_value=0, max_value=2**31 - 1), st.floats(min_value=-10, max_value=-2),
       st.integers(min_value=1, max_value=60))
def test_dcdm_info_matches_true_residual(nx, ny, seed, log_rtol, maxiter):
    import warnings

    rng = np.random.default_rng(seed)
    k = np.exp(rng.standard_normal((nx, ny)))
    A = linsolve.problems.poisson((nx, ny), coeff=k)
    b = rng.standard_normal(A.shape[0])
    rtol = 10.0 ** log_rtol
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = linsolve.solve(A, b, method="dcdm", grid_shape=(nx, ny), rtol=rtol, maxiter=maxiter)
    _check(A, b, res.x, res.info, rtol)
    assert res.iterations <= maxiter
