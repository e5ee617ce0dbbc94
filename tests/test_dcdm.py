"""DCDM solver: shipped models, the safeguard fallback, grid inference, masks, and the learned operator."""
import importlib
import warnings
import weakref

import numpy as np
import pytest
import scipy.sparse as sp

import linsolve

torch = pytest.importorskip("torch")

from linsolve.krylov.dcdm import dcdm_result  # noqa: E402
from linsolve.learn.networks import DCDMNet  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rhs(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n)


def _random_net(dims=2, seed=0):
    torch.manual_seed(seed)
    return DCDMNet(dims=dims, channels=8, n_down=1, n_coarse=1, n_up=1).eval()


class _NaNNet(torch.nn.Module):
    dims = 2

    def forward(self, x):
        return torch.full_like(x, float("nan"))


def _true_rel(A, b, x):
    return np.linalg.norm(b - A @ x) / np.linalg.norm(b)


def test_shipped_2d_model_beats_cg_on_a_finer_grid_than_trained_half():
    A = linsolve.problems.poisson((32, 32))
    b = _rhs(A.shape[0])
    res = dcdm_result(A, b, rtol=1e-6)
    cg = linsolve.krylov.cg_result(A, b, rtol=1e-6)
    assert res.converged and res.method == "dcdm" and res.residual_kind == "true"
    assert _true_rel(A, b, res.x) <= 1e-6
    assert res.iterations < cg.iterations
    assert len(res.residual_norms) == res.iterations + 1
    assert res.residual_norms[-1] == pytest.approx(np.linalg.norm(b - A @ res.x), rel=1e-8)
    assert res.extras["model"].startswith("poisson2d-64")


def test_shipped_3d_model_on_16_cubed_infers_the_grid():
    A = linsolve.problems.poisson((16, 16, 16))  # n = 4096 = 64^2 = 16^3: the stencil decides
    b = _rhs(A.shape[0], 1)
    res = dcdm_result(A, b, rtol=1e-6)
    assert res.converged and res.extras["grid_shape"] == (16, 16, 16)
    assert res.iterations < linsolve.krylov.cg_result(A, b, rtol=1e-6).iterations


def test_drop_in_signature_and_solve_entry_point():
    A = linsolve.problems.poisson((16, 16))
    b = _rhs(256, 2)
    calls = []
    x, info = linsolve.dcdm(A, b, rtol=1e-8, callback=lambda xk: calls.append(xk))
    assert info == 0 and _true_rel(A, b, x) <= 1e-8
    assert calls and not np.shares_memory(calls[-1], x)
    res = linsolve.solve(A, b, method="dcdm", rtol=1e-8)
    assert res.converged and res.iterations == len(calls)


def test_random_weights_converge_through_the_safeguard():
    A = linsolve.problems.poisson((24, 24))
    b = _rhs(A.shape[0], 3)
    with pytest.warns(RuntimeWarning, match="continuing from iteration"):
        res = dcdm_result(A, b, rtol=1e-6, model=_random_net())
    assert res.method == "dcdm->pcg" and res.converged and res.info == 0
    assert _true_rel(A, b, res.x) <= 1e-6
    assert res.extras["fallback_at_iteration"] <= 10
    assert res.iterations == res.extras["fallback_at_iteration"] + res.extras["fallback_iterations"]
    assert len(res.residual_norms) == res.iterations + 1
    assert res.residual_norms[-1] == pytest.approx(np.linalg.norm(b - A @ res.x), rel=1e-6)


def test_nan_network_falls_back_or_reports_breakdown():
    A = linsolve.problems.poisson((12, 12))
    b = _rhs(144, 4)
    with pytest.warns(RuntimeWarning, match="NaN"):
        res = dcdm_result(A, b, rtol=1e-6, model=_NaNNet())
    assert res.converged and res.method == "dcdm->pcg" and res.extras["fallback_at_iteration"] == 0
    res = dcdm_result(A, b, rtol=1e-6, model=_NaNNet(), fallback=False)
    assert not res.converged and res.info == -3


def test_without_fallback_a_useless_network_is_never_reported_converged():
    A = linsolve.problems.poisson((24, 24))
    b = _rhs(A.shape[0], 5)
    res = dcdm_result(A, b, rtol=1e-10, model=_random_net(), fallback=False)
    assert not res.converged and res.info > 0
    assert res.true_residual_norm > 1e-10 * np.linalg.norm(b)


def test_maxiter_reached_is_not_converged():
    A = linsolve.problems.poisson((32, 32))
    b = _rhs(A.shape[0], 6)
    res = dcdm_result(A, b, rtol=1e-12, maxiter=3)
    assert not res.converged and res.info == 3 and res.iterations == 3


def test_grid_shape_inference_and_errors():
    A = linsolve.problems.poisson((12, 10))       # not square: read off the offsets 1 and 10
    b = _rhs(120)
    res = dcdm_result(A, b, rtol=1e-6)
    assert res.converged and res.extras["grid_shape"] == (12, 10)
    chain = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(64, 64), format="csr")   # n = 8^2 but no grid
    with pytest.raises(ValueError, match="not a 5/7-point stencil.*grid_shape"):
        linsolve.dcdm(chain, _rhs(64), model="poisson2d-64")      # the network asked for by name: refused
    with pytest.warns(UserWarning, match="no 5/7-point stencil"):
        res = dcdm_result(chain, _rhs(64), rtol=1e-8)             # else: what any CG takes, by PCG, said so
    assert res.converged and res.method == "dcdm->pcg" and "fallback_reason" in res.extras
    with pytest.raises(ValueError, match="120 rows|cells but A"):
        linsolve.dcdm(A, b, grid_shape=(10, 10))
    A3 = linsolve.problems.poisson((8, 8, 8))
    with pytest.raises(ValueError, match="2D model but the problem grid is 3D"):
        linsolve.dcdm(A3, _rhs(512), model="poisson2d-64", grid_shape=(8, 8, 8))


def test_2d_model_refuses_a_16_cubed_matrix():
    A = linsolve.problems.poisson((16, 16, 16))   # n = 4096 = 64^2: never read as a 64x64 grid
    with pytest.raises(ValueError, match="3D grid \\(16, 16, 16\\).*2D grids"):
        linsolve.dcdm(A, _rhs(4096), model="poisson2d-64")
    with pytest.raises(ValueError, match="3D grid"):
        linsolve.precond.learned(A, model="poisson2d-64")


def test_argument_validation():
    A = linsolve.problems.poisson((8, 8))
    b = _rhs(64)
    with pytest.raises(ValueError, match="no preconditioner"):
        dcdm_result(A, b, M=np.eye(64))
    with pytest.raises(ValueError, match="n_orth"):
        linsolve.dcdm(A, b, n_orth=-1)
    with pytest.raises(TypeError, match="unexpected options"):
        dcdm_result(A, b, bogus=1)
    with pytest.raises(TypeError, match="model must be"):
        linsolve.dcdm(A, b, model=3.5)
    with pytest.raises(ValueError, match="not symmetric"):
        import scipy.sparse as sp

        linsolve.dcdm(A + sp.triu(A, 1) * 0.5, b)


def test_zero_rhs_and_exact_start():
    A = linsolve.problems.poisson((8, 8))
    x, info = linsolve.dcdm(A, np.zeros(64))
    assert info == 0 and not x.any()
    b = _rhs(64)
    exact = np.linalg.solve(A.toarray(), b)
    res = dcdm_result(A, b, x0=exact, rtol=1e-6)
    assert res.converged and res.iterations == 0


def test_n_orth_zero_still_converges():
    A = linsolve.problems.poisson((16, 16))
    b = _rhs(256, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = dcdm_result(A, b, rtol=1e-6, n_orth=0)
    assert res.converged


def test_obstacle_cells_are_masked():
    pytest.importorskip("linsolve.problems.fluid")
    from linsolve.cli import demo_problem

    A, b, cells = demo_problem(16)
    res = dcdm_result(A, b, rtol=1e-6, cell_types=cells, grid_shape=cells.shape)
    assert res.converged and _true_rel(A, b, res.x) <= 1e-6
    assert np.all(res.x[cells.ravel() != 0] == 0)


def test_learned_operator_is_marked_non_symmetric():
    A = linsolve.problems.poisson((16, 16))
    M = linsolve.precond.learned(A)
    r = _rhs(256, 8)
    z = M @ r
    assert M.symmetric is False and z.shape == (256,)
    assert r @ z > 0
    # scaled by the exact line search: no multiple of z is better in the A-norm
    assert z @ (A @ z) == pytest.approx(r @ z, rel=1e-6)
    with pytest.raises(NotImplementedError, match="not symmetric"):
        M.rmatvec(r)
    with pytest.raises(ValueError, match="3D model but the problem grid is 2D"):
        linsolve.precond.learned(A, model="poisson3d-32", grid_shape=(16, 16))


def test_shipped_multilevel_3d_model_converges_with_fewer_iterations_than_cg():
    from linsolve.cli import demo_problem

    A, b, cells = demo_problem(20)  # sphere obstacle, odd-sized levels (20 -> 10 -> 5 -> 3)
    res = dcdm_result(A, b, rtol=1e-6, model="poisson3d-32-ml", grid_shape=cells.shape, cell_types=cells)
    cg = linsolve.krylov.cg_result(A, b, rtol=1e-6)
    assert res.converged and res.method == "dcdm"
    assert _true_rel(A, b, res.x) <= 1e-6
    assert res.iterations < cg.iterations
    assert res.extras["model"].startswith("poisson3d-32-ml")


def test_default_3d_model_and_faithful_model_by_name():
    from linsolve.precond.learned import _PREFERRED, resolve_model

    default = resolve_model(None, 3)
    assert default.metadata["preset"] == _PREFERRED[3]
    faithful = resolve_model("poisson3d-32", 3)
    assert faithful.metadata["preset"] == "poisson3d-32" and "levels" not in faithful.config


def test_repeated_solves_on_one_grid_use_a_frozen_network_with_the_same_result(monkeypatch):
    learned_mod = importlib.import_module("linsolve.precond.learned")  # the package's `learned` is the function
    monkeypatch.setattr(learned_mod, "_COMPILED", weakref.WeakKeyDictionary())
    A = linsolve.problems.poisson((24, 24))
    b = _rhs(A.shape[0], 11)
    first = dcdm_result(A, b, rtol=1e-6, model="poisson2d-64")
    second = dcdm_result(A, b, rtol=1e-6, model="poisson2d-64")
    assert not first.extras["network_optimized"] and second.extras["network_optimized"]
    assert second.converged and second.iterations == first.iterations
    assert _true_rel(A, b, second.x) <= 1e-6
    # The frozen copy computes the same directions as the eager network.
    net = linsolve.models.load("poisson2d-64")
    frozen, optimized = learned_mod.inference_network(net, (24, 24), "cpu", torch.float32)
    assert optimized
    x = torch.from_numpy(_rhs(576, 12).astype(np.float32)).reshape(1, 1, 24, 24)
    with torch.inference_mode():
        eager, fast = net(x), frozen(x)
    assert torch.allclose(eager, fast, rtol=1e-4, atol=1e-4 * float(eager.abs().max()))


def test_user_modules_and_the_opt_out_stay_eager(monkeypatch):
    learned_mod = importlib.import_module("linsolve.precond.learned")  # the package's `learned` is the function
    monkeypatch.setattr(learned_mod, "_COMPILED", weakref.WeakKeyDictionary())
    net = _random_net()  # a caller's module may change between solves: never frozen
    for _ in range(2):
        assert learned_mod.inference_network(net, (8, 8), "cpu", torch.float32) == (net, False)
    monkeypatch.setenv("LINSOLVE_JIT", "0")
    shipped = linsolve.models.load("poisson2d-64")
    for _ in range(3):
        assert learned_mod.inference_network(shipped, (8, 8), "cpu", torch.float32) == (shipped, False)


def test_float32_verdict_is_that_of_the_returned_x():
    """DCDM iterates in double; the float32 x it returns must meet the tolerance itself to be converged
    (a 1000:1 bubble: its float32 rounding leaves ~1e-2, where the double iterate met 1e-6)."""
    inst = next(iter(linsolve.problems.fluid_sequence((32, 32), 1, scene="rising_bubble", seed=1, solver="auto")))
    A, b = inst.A.tocsr().astype(np.float32), inst.b.astype(np.float32)
    res = linsolve.solve(A, b, method="dcdm", rtol=1e-6, maxiter=400)
    exact = np.linalg.norm(b.astype(np.float64) - A.astype(np.float64) @ res.x.astype(np.float64))
    assert res.x.dtype == np.float32
    assert res.true_residual_norm == pytest.approx(exact, rel=1e-6)
    assert res.converged == (exact <= 1e-6 * np.linalg.norm(b.astype(np.float64)))


def test_a_grid_shape_that_does_not_fit_a_is_refused():
    """(4, 16, 16) has as many cells as the (32, 32) grid A lives on: accepted silently before."""
    pytest.importorskip("torch")
    A = linsolve.problems.poisson((32, 32))
    with pytest.raises(ValueError, match="does not fit A"):
        linsolve.precond.learned(A, grid_shape=(4, 16, 16))
    with pytest.raises(ValueError, match="does not fit A"):
        linsolve.dcdm(A, np.ones(A.shape[0]), grid_shape=(4, 16, 16))
    assert linsolve.dcdm(A, np.ones(A.shape[0]), grid_shape=(32, 32))[1] == 0


def test_what_scipy_cg_accepts_dcdm_and_sor_accept():
    """The contract: everything SciPy's cg takes. No grid (a LinearOperator) or complex data: the network
    and the sweeps cannot run, so CG solves it and the result says so (method, message, a warning)."""
    import warnings

    from scipy.sparse.linalg import aslinearoperator

    A = linsolve.problems.poisson((24, 24))
    b = _rhs(A.shape[0])
    cases = {"LinearOperator": (aslinearoperator(A), b), "complex A": (A.astype(complex), b + 0j),
             "complex b": (A, b + 1j * b[::-1])}
    for name, (M, rhs) in cases.items():
        for fn, label in ((linsolve.dcdm, "dcdm->pcg"), (linsolve.sor, "sor->cg")):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                x, info = fn(M, rhs, rtol=1e-8)
            assert info == 0 and any("instead" in str(w.message) for w in caught), (name, label)
            assert np.linalg.norm(rhs - A @ x) <= 1e-8 * np.linalg.norm(rhs), (name, label)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = linsolve.solve(M, rhs, method=label.split("->")[0], rtol=1e-8)
            assert res.method == label and res.converged
    # a negative definite A: SOR iterates as on -A (each row's update is sign-free), the same iterates
    x_pos, _ = linsolve.sor(A, b, omega=1.5, rtol=1e-8)
    x_neg, info = linsolve.sor(-A, -b, omega=1.5, rtol=1e-8)
    assert info == 0 and np.array_equal(x_pos, x_neg)


# --- the safeguard's progress check ------------------------------------------------------------------------


def _lognormal_poisson(sigma, n=32, seed=0):
    """Poisson with a log-normal coefficient: the shipped model (trained on constant coefficients) crawls."""
    rng = np.random.default_rng(seed)
    A = linsolve.problems.poisson((n, n), coeff=np.exp(sigma * rng.standard_normal((n, n))))
    return A, rng.standard_normal(n * n)


@pytest.mark.parametrize("sigma", [2.0, 3.0])
def test_a_network_that_crawls_falls_back_to_pcg_and_converges(sigma):
    """Each network step was as good as steepest descent (0.6-2x), so the per-step check never fired: at
    sigma = 3 the residual was still above 0.1 ||b|| after all 10 n = 10240 iterations (CG: 4308, SSOR-PCG:
    150); at sigma = 2 it took 1662 (CG: 707). The progress window now hands over to PCG (at 30 / 57)."""
    A, b = _lognormal_poisson(sigma)
    with pytest.warns(RuntimeWarning, match="stopped making progress.*continuing from iteration"):
        res = dcdm_result(A, b, rtol=1e-8, maxiter=1000)
    assert res.method == "dcdm->pcg" and res.converged and res.info == 0
    assert _true_rel(A, b, res.x) <= 1e-8
    from linsolve.krylov.dcdm import PROGRESS_WINDOW

    assert res.true_residual_norm == pytest.approx(np.linalg.norm(b - A @ res.x), rel=1e-6)
    assert "stopped making progress" in res.extras["fallback_reason"]
    at = res.extras["fallback_at_iteration"]
    assert at == res.extras["dcdm_iterations"] and PROGRESS_WINDOW <= at <= 3 * PROGRESS_WINDOW
    if sigma == 3.0:
        assert at == PROGRESS_WINDOW  # the residual never got below half its first value
    assert res.iterations == at + res.extras["fallback_iterations"]
    assert len(res.residual_norms) == res.iterations + 1
    assert "after fallback to PCG (ssor)" in res.message
    assert res.iterations < linsolve.krylov.cg_result(A, b, rtol=1e-8).iterations
    # The drop-in and the solve() entry point take the same path.
    with pytest.warns(RuntimeWarning, match="stopped making progress"):
        x, info = linsolve.dcdm(A, b, rtol=1e-8, maxiter=1000)
    assert info == 0 and _true_rel(A, b, x) <= 1e-8
    with pytest.warns(RuntimeWarning, match="stopped making progress"):
        via_solve = linsolve.solve(A, b, method="dcdm", rtol=1e-8, maxiter=1000)
    assert via_solve.method == "dcdm->pcg" and via_solve.converged and via_solve.relative_residual <= 1e-8


def test_progress_check_on_the_torch_driver_batched_and_not():
    """The batched checks replay the progress window exactly: same hand-over iteration and iterates count."""
    A, b = _lognormal_poisson(3.0)
    runs = []
    for every in (1, 8):
        with pytest.warns(RuntimeWarning, match="stopped making progress"):
            runs.append(linsolve.solve(A, torch.from_numpy(b), method="dcdm", rtol=1e-8, maxiter=1000,
                                       check_every=every))
    from linsolve.krylov.dcdm import PROGRESS_WINDOW

    for res in runs:
        assert res.method == "dcdm->pcg" and res.converged
        assert res.extras["fallback_at_iteration"] == PROGRESS_WINDOW
        assert np.linalg.norm(b - A @ res.x.numpy()) <= 1e-8 * np.linalg.norm(b)
    assert runs[0].iterations == runs[1].iterations


def test_progress_check_is_off_with_min_gain_zero_and_stops_without_fallback():
    A, b = _lognormal_poisson(3.0)
    res = dcdm_result(A, b, rtol=1e-8, maxiter=50, min_gain=0.0)   # the paper's unguarded method
    assert res.method == "dcdm" and not res.converged and res.info == 50 and res.iterations == 50
    res = dcdm_result(A, b, rtol=1e-8, maxiter=1000, fallback=False)
    assert res.method == "dcdm" and not res.converged and res.info == res.iterations == 30
    assert "stopped making progress" in res.message and "fallback disabled" in res.message
    assert res.true_residual_norm > 1e-8 * np.linalg.norm(b)


def test_zero_tolerances_are_unconverged_and_the_message_quotes_the_true_residual():
    """rtol = atol = 0 cannot be met. The fallback PCG's recurrence residual underflowed (7.7e-162) and the
    message quoted it, where ||b - A x|| / ||b|| was 4e-16; the verdict and the message are the true ones."""
    A = linsolve.problems.poisson((12, 12))
    b = _rhs(144)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = dcdm_result(A, b, rtol=0.0, atol=0.0)
        x, info = linsolve.dcdm(A, b, rtol=0, atol=0)
    assert not res.converged and 0 < res.info == res.iterations <= 1440
    true = np.linalg.norm(b - A @ res.x)
    assert true <= 1e-14 * np.linalg.norm(b) and res.true_residual_norm == pytest.approx(true, rel=1e-6)
    assert f"||b - A x|| = {res.true_residual_norm:.3e}" in res.message
    assert f"({res.true_residual_norm / np.linalg.norm(b):.1e} of ||b||)" in res.message
    assert "e-162" not in res.message  # no recurrence residual
    if res.info < 1440:
        assert "no further progress possible" in res.message
    assert 0 < info <= 1440 and np.linalg.norm(b - A @ x) <= 1e-14 * np.linalg.norm(b)
