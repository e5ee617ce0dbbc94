"""linsolve.cg against scipy.sparse.linalg.cg: same iterates, honest convergence, exact counts."""
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla

import linsolve
from linsolve.krylov import cg_result

PROBLEMS = {
    "2d": lambda: linsolve.problems.poisson((40, 40)),
    "3d": lambda: linsolve.problems.poisson((14, 14, 14)),
    "3d-varcoeff": lambda: linsolve.problems.poisson(
        (12, 12, 12), coeff=np.exp(np.random.default_rng(3).standard_normal((12, 12, 12)))),
}


def _iterates(solver, A, b, **kwargs):
    history = []
    x, info = solver(A, b, callback=lambda xk: history.append(np.array(xk, copy=True)), **kwargs)
    return x, info, history


@pytest.mark.parametrize("name", sorted(PROBLEMS))
@pytest.mark.parametrize("use_amg", [False, True])
@pytest.mark.parametrize("settings", [
    dict(rtol=1e-8),
    dict(rtol=1e-3, atol=1e-6),
    dict(rtol=1e-10, maxiter=7),
    dict(rtol=1e-6, x0="random"),
])
def test_iterates_match_scipy(name, use_amg, settings):
    A = PROBLEMS[name]()
    rng = np.random.default_rng(0)
    b = rng.standard_normal(A.shape[0])
    kwargs = dict(settings)
    if kwargs.get("x0") == "random":
        kwargs["x0"] = rng.standard_normal(A.shape[0])
    if use_amg:
        kwargs["M"] = linsolve.precond.amg(A)
    x_ref, info_ref, hist_ref = _iterates(sla.cg, A, b, **kwargs)
    x, info, hist = _iterates(linsolve.cg, A, b, **kwargs)
    assert len(hist) == len(hist_ref)
    for ours, theirs in zip(hist, hist_ref):
        assert np.linalg.norm(ours - theirs) <= 1e-10 * np.linalg.norm(theirs)
    np.testing.assert_allclose(x, x_ref, rtol=1e-10, atol=1e-14 * np.abs(x_ref).max())
    if info_ref == 0:
        assert info == 0


def test_iterations_equal_callback_calls_and_history_length():
    A = PROBLEMS["2d"]()
    b = np.ones(A.shape[0])
    calls = []
    res = cg_result(A, b, rtol=1e-7, callback=lambda xk: calls.append(1))
    assert res.converged and res.info == 0
    assert res.iterations == len(calls) > 0
    assert len(res.residual_norms) == res.iterations + 1
    assert res.residual_norms[0] == pytest.approx(np.linalg.norm(b))
    assert res.true_residual_norm <= 1e-7 * np.linalg.norm(b)
    assert res.true_residual_norm == pytest.approx(np.linalg.norm(b - A @ res.x))


def test_converging_exactly_at_maxiter_is_success():
    # SciPy returns info == maxiter here even though the answer is converged (SciPy defect).
    A = PROBLEMS["3d"]()
    b = np.random.default_rng(1).standard_normal(A.shape[0])
    needed = cg_result(A, b, rtol=1e-6).iterations
    x, info = linsolve.cg(A, b, rtol=1e-6, maxiter=needed)
    assert info == 0
    assert np.linalg.norm(b - A @ x) <= 1e-6 * np.linalg.norm(b)
    x, info = linsolve.cg(A, b, rtol=1e-6, maxiter=needed - 1)
    assert info == needed - 1
    assert np.linalg.norm(b - A @ x) > 1e-6 * np.linalg.norm(b)


def test_callback_gets_a_copy():
    A = PROBLEMS["2d"]()
    b = np.ones(A.shape[0])
    seen = []
    linsolve.cg(A, b, rtol=1e-6, callback=seen.append)
    assert len(seen) > 2
    assert not np.allclose(seen[0], seen[-1])
    seen[-2][:] = 123.0  # mutating a copy must not disturb the solver's final answer
    x, info = linsolve.cg(A, b, rtol=1e-6)
    assert info == 0 and np.isfinite(x).all()


def test_zero_rhs_returns_zero_and_converged_x0_returns_at_once():
    A = PROBLEMS["2d"]()
    n = A.shape[0]
    x, info = linsolve.cg(A, np.zeros(n), x0=np.ones(n))
    assert info == 0 and not x.any()
    b = np.random.default_rng(2).standard_normal(n)
    x_exact = sla.spsolve(A.tocsc(), b)
    res = cg_result(A, b, x0=x_exact, rtol=1e-6)
    assert res.info == 0 and res.iterations == 0


def test_indefinite_matrix_reports_breakdown_not_wrong_answer():
    A = sp.diags([1.0, 2.0, -3.0, 4.0]).tocsr()
    b = np.ones(4)
    x, info = linsolve.cg(A, b, rtol=1e-10)
    if info == 0:  # CG may still reach the answer on an indefinite diagonal matrix; then it must be right
        assert np.linalg.norm(b - A @ x) <= 1e-10 * 2
    else:
        assert info == -1 and np.linalg.norm(b - A @ x) > 1e-10 * 2
    x, info = linsolve.cg(sp.diags([1.0, -1.0]).tocsr(), np.ones(2))   # p^T A p = 0 at once
    assert info == -1 and not x.any()


def test_indefinite_preconditioner_detected():
    A = PROBLEMS["2d"]()
    signs = np.where(np.arange(A.shape[0]) % 2, 1.0, -1.0)
    x, info = linsolve.cg(A, np.ones(A.shape[0]), M=sla.aslinearoperator(sp.diags(signs)), maxiter=200)
    assert info == -2


def test_float32_solved_in_float32_and_result_honest():
    A = PROBLEMS["2d"]().astype(np.float32)
    b = np.ones(A.shape[0], dtype=np.float32)
    res = cg_result(A, b, rtol=1e-5)
    assert res.x.dtype == np.float32
    true = np.linalg.norm(b.astype(np.float64) - A.astype(np.float64) @ res.x.astype(np.float64))
    if res.converged:
        # float32 floor: the check is done in float32; allow the float32 rounding of the residual itself.
        assert true <= 1e-5 * np.linalg.norm(b) * 1.01 + 1e-6 * np.linalg.norm(b)
    # An rtol below float32's reach must not be claimed.
    res = cg_result(A, b, rtol=1e-12, maxiter=500)
    assert not res.converged and res.info > 0


def test_nan_in_preconditioner_output_reported():
    A = PROBLEMS["2d"]()
    n = A.shape[0]
    M = sla.LinearOperator((n, n), matvec=lambda r: np.full_like(r, np.nan))
    x, info = linsolve.cg(A, np.ones(n), M=M)
    assert info == -3


def test_float32_convergence_is_judged_on_the_residual_evaluated_in_double():
    """float32 rounding of b - A x itself exceeds the tolerance on a bordered closed box (a row of ones
    sums 4096 pressures): the verdict must be that of the data's exact residual, not of that noise."""
    n = 64
    N = linsolve.problems.poisson((n, n), bc="neumann")
    ones = sp.csr_matrix(np.ones((n * n, 1)))
    A = sp.bmat([[-N, ones], [ones.T, None]], format="csr").astype(np.float32)
    b = np.r_[np.random.default_rng(3).standard_normal(n * n), 0.0].astype(np.float32)
    A64, b64 = A.astype(np.float64), b.astype(np.float64)
    for rtol in (1e-4, 1e-5, 1e-6):
        res = linsolve.krylov.cg_result(A, b, rtol=rtol, maxiter=20_000)
        exact = np.linalg.norm(b64 - A64 @ res.x.astype(np.float64))
        assert res.true_residual_norm == pytest.approx(exact, rel=1e-6)
        assert res.converged == (exact <= rtol * np.linalg.norm(b64))


def test_float32_below_its_attainable_accuracy_stops_on_stagnation():
    """A tolerance float32 cannot meet: reported as not converged soon, not after maxiter restarts."""
    A = linsolve.problems.poisson((64, 64)).astype(np.float32)
    b = np.random.default_rng(0).standard_normal(A.shape[0]).astype(np.float32)
    res = linsolve.krylov.cg_result(A, b, rtol=1e-10, maxiter=100_000)
    true = np.linalg.norm(b - A @ res.x) / np.linalg.norm(b)
    assert not res.converged and 0 < res.info == res.iterations < 5_000
    assert "stays at" in res.message and "float32" in res.message
    assert true > 1e-10 and true < 1e-4          # the best float32 reaches, and said honestly
    x, info = linsolve.cg(A, b, rtol=1e-10, maxiter=100_000)
    assert info == res.info and np.array_equal(x, res.x)


def test_overflowing_norm_of_b_is_never_converged():
    """||b|| overflows although every entry is finite: rtol ||b|| was inf and x = 0 "converged"."""
    A = linsolve.problems.poisson((32, 32))
    b = 1e200 * np.random.default_rng(0).random(A.shape[0])
    with np.errstate(over="ignore", invalid="ignore"):
        for call in (lambda: linsolve.cg(A, b, rtol=1e-6), lambda: linsolve.auto_cg(A, b, rtol=1e-6)):
            x, info = call()
            assert info != 0 or np.linalg.norm((b - A @ x) / 1e200) <= 1e-6 * np.linalg.norm(b / 1e200)
        res = linsolve.solve(A, b, rtol=1e-6)
        assert not res.converged or np.linalg.norm((b - A @ res.x) / 1e200) <= 1e-6 * np.linalg.norm(b / 1e200)
    huge = np.full(A.shape[0], 1e308)               # x = A^-1 b overflows: never reported as converged
    with np.errstate(over="ignore", invalid="ignore"):
        x, info = linsolve.cg(A, huge, rtol=1e-6)
        res = linsolve.solve(A, huge, rtol=1e-6)
    assert info == -3 and res.info == -3 and not res.converged and "overflows" in res.message


@pytest.mark.parametrize("magnitude", [1e-300, 1e-160, 1e160, 1e200])
def test_right_hand_sides_of_any_magnitude_solve_like_a_unit_one(magnitude):
    """r^T M r of b ~ 1e-160 underflowed to 0 (a false breakdown) and of 1e200 overflowed: the system is
    solved scaled by a power of two, exactly, so iterations match the unit right-hand side's."""
    A = linsolve.problems.poisson((48, 48))
    b = np.random.default_rng(0).random(A.shape[0])
    unit = {"cg": linsolve.krylov.cg_result(A, b, rtol=1e-6), "solve": linsolve.solve(A, b, rtol=1e-6),
            "auto_cg": linsolve.shim.auto_cg_result(A, b, rtol=1e-6)}
    big = b * magnitude
    seen = []
    scaled = {"cg": linsolve.krylov.cg_result(A, big, rtol=1e-6, callback=lambda xk: seen.append(xk.copy())),
              "solve": linsolve.solve(A, big, rtol=1e-6),
              "auto_cg": linsolve.shim.auto_cg_result(A, big, rtol=1e-6)}
    for name, res in scaled.items():
        assert res.converged and res.iterations == unit[name].iterations, name
        np.testing.assert_allclose(res.x / magnitude, unit[name].x, rtol=1e-9, atol=0)
        assert res.b_norm == pytest.approx(magnitude * np.linalg.norm(b), rel=1e-12)
    assert len(seen) == scaled["cg"].iterations and np.allclose(seen[-1], scaled["cg"].x, rtol=1e-12, atol=0)


def test_real_preconditioners_serve_complex_hermitian_systems():
    """A real A with a complex b: the compiled multigrid and IC preconditioners raised numba TypingError
    (not even a TypeError); a real preconditioner is real-linear, so it is applied part by part."""
    A = linsolve.problems.poisson((48, 48))
    rng = np.random.default_rng(0)
    b = rng.standard_normal(A.shape[0]) + 1j * rng.standard_normal(A.shape[0])
    for M in (linsolve.precond.geometric_mg(A), linsolve.precond.ic0(A)):
        x, info = linsolve.cg(A, b, M=M, rtol=1e-8)
        assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b)
        xr, _ = linsolve.cg(A, b.real, M=M, rtol=1e-10)
        assert np.linalg.norm(x.real - xr) <= 1e-6 * np.linalg.norm(xr)
    D = sp.diags(1.0 / A.diagonal())                  # a real sparse M: SciPy's very products
    import scipy.sparse.linalg as sla
    ours, theirs = linsolve.cg(A, b, M=D, rtol=1e-8), sla.cg(A, b, M=D, rtol=1e-8)
    assert np.array_equal(ours[0], theirs[0]) and ours[1] == theirs[1]
    big = linsolve.problems.poisson((80, 80))          # above the multigrid crossover: auto still takes it
    bb = rng.standard_normal(big.shape[0]) + 1j * rng.standard_normal(big.shape[0])
    res = linsolve.solve(big, bb, rtol=1e-8)
    assert res.converged and np.linalg.norm(bb - big @ res.x) <= 1e-8 * np.linalg.norm(bb)


def test_zero_tolerance_with_a_single_precision_cycle_is_not_a_singular_preconditioner():
    """rtol = atol = 0: the residual falls until the float32 V-cycle flushes it to 0 (r^T M r = 0). That is
    the floor of the arithmetic, reported as not converged (info > 0), not as a breakdown of M (-2)."""
    A = linsolve.problems.poisson((64, 64))
    res = linsolve.solve(A, np.ones(A.shape[0]), rtol=0.0, atol=0.0, method="gmg-pcg", maxiter=400)
    assert res.info > 0 and not res.converged and "breakdown" not in res.message
    assert res.true_residual_norm < 1e-8 * np.sqrt(A.shape[0])


@pytest.mark.parametrize("magnitude", [1e-200, 1e200])
@pytest.mark.parametrize("solver", ["dcdm", "sor"])
def test_dcdm_and_sor_scale_right_hand_sides_like_cg(solver, magnitude):
    """Direct dcdm / sor calls on b ~ 1e-200 said info 0 with x = 0 (||b||^2 underflowed), and on 1e200
    broke down with NaN: they are solved scaled by a power of two, as cg is, with the same x up to scale."""
    A = linsolve.problems.poisson((16, 16))
    b = np.random.default_rng(1).random(A.shape[0])
    call = getattr(linsolve, solver)
    x_unit, info_unit = call(A, b, rtol=1e-6, maxiter=5000)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        x, info = call(A, b * magnitude, rtol=1e-6, maxiter=5000)
    assert info_unit == 0 and info == 0
    np.testing.assert_allclose(x / magnitude, x_unit, rtol=1e-9, atol=0)
    assert np.linalg.norm(b - A @ (x / magnitude)) <= 1e-6 * np.linalg.norm(b)
