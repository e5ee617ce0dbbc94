"""The torch backend on the CPU against the NumPy path: same iterates, exact counts, honest results.

GPU tests are marked ``gpu`` and skipped without CUDA (bench/gpu.py runs them on a GPU machine).
"""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla

import linsolve

torch = pytest.importorskip("torch")

from linsolve.backends import torch_backend as tb  # noqa: E402
from linsolve.backends.array_api import NUMPY, torch_ops  # noqa: E402
from linsolve.backends.torch_kernels import (CSROperator, RedBlack, StencilOperator, TorchVCycle,  # noqa: E402
                                             is_grid_stencil, red_mask)

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

ITERATE_RTOL = 1e-6  # acceptance: torch-CPU iterates equal NumPy's to 1e-6 relative in float64


def _varcoeff(shape, seed=4, sigma=0.3):
    coeff = np.exp(sigma * np.random.default_rng(seed).standard_normal(shape))
    return linsolve.problems.poisson(shape, coeff=coeff)


def _obstacle_matrix(shape, seed=5):
    """Pressure-like matrix: Poisson on fluid cells, identity rows/cols for solid cells."""
    rng = np.random.default_rng(seed)
    solid = rng.random(shape) < 0.15
    coeff = np.where(solid, 0.0, 1.0)
    A = linsolve.problems.poisson(shape, coeff=coeff).tolil()
    for i in np.flatnonzero(solid.ravel()):
        A[i, i] = 1.0
    A = A.tocsr()
    b = rng.standard_normal(A.shape[0])
    b[solid.ravel()] = 0.0
    cell_types = solid.astype(np.int8)  # FLUID=0, SOLID=1
    return A, b, cell_types


def _history(solver, *args, **kwargs):
    hist = []
    out = solver(*args, callback=lambda xk: hist.append(np.array(xk.cpu().numpy() if hasattr(xk, "cpu") else xk,
                                                                  copy=True)), **kwargs)
    return out, hist


def _assert_same_iterates(hist, hist_ref, rtol=ITERATE_RTOL):
    assert len(hist) == len(hist_ref) > 0
    for ours, theirs in zip(hist, hist_ref):
        assert np.linalg.norm(ours - theirs) <= rtol * max(np.linalg.norm(theirs), 1e-300)


# ----------------------------------------------------------------------------- CG

@pytest.mark.parametrize("problem", ["2d", "3d-varcoeff", "obstacles"])
def test_cg_iterates_match_numpy_float64(problem):
    if problem == "2d":
        A = linsolve.problems.poisson((30, 30))
        b = np.random.default_rng(0).standard_normal(A.shape[0])
    elif problem == "3d-varcoeff":
        A = _varcoeff((10, 10, 10))
        b = np.random.default_rng(0).standard_normal(A.shape[0])
    else:
        A, b, _ = _obstacle_matrix((12, 12, 12))
    ref, hist_ref = _history(linsolve.krylov.cg_result, A, b, rtol=1e-9)
    res, hist = _history(linsolve.solve, A, torch.from_numpy(b), method="cg", rtol=1e-9)
    assert isinstance(res.x, torch.Tensor) and res.x.dtype == torch.float64
    _assert_same_iterates(hist, hist_ref)
    assert res.iterations == ref.iterations and res.converged and res.info == 0
    np.testing.assert_allclose(res.residual_norms, ref.residual_norms, rtol=1e-6)


def test_rounding_sensitive_problem_deviates_no_more_than_scipy_itself():
    # With coefficients exp(N(0,1)) CG amplifies rounding ~10x per iteration for a while: SciPy's own
    # iterates move by ~1e-3 when b is perturbed by 1e-16 relative. The torch backend (different
    # summation order in dot products) cannot do better than that, and must not do worse.
    A = _varcoeff((10, 10, 10), seed=3, sigma=1.0)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    b_pert = b * (1 + 1e-16 * np.random.default_rng(5).standard_normal(b.shape))
    _, h_ref = _history(sla.cg, A, b, rtol=1e-8)
    _, h_pert = _history(sla.cg, A, b_pert, rtol=1e-8)
    res, h = _history(linsolve.solve, A, torch.from_numpy(b), method="cg", rtol=1e-8)
    dev_scipy = max(np.linalg.norm(p - r) / np.linalg.norm(r) for p, r in zip(h_pert, h_ref))
    dev_torch = max(np.linalg.norm(p - r) / np.linalg.norm(r) for p, r in zip(h, h_ref))
    assert dev_torch <= 100 * dev_scipy + 1e-6
    assert res.converged and abs(res.iterations - len(h_ref)) <= 2
    assert np.linalg.norm(res.x.numpy() - h_ref[-1]) <= 1e-5 * np.linalg.norm(h_ref[-1])


@pytest.mark.parametrize("check_every", [2, 3, 8, 64])
@pytest.mark.parametrize("rtol", [1e-3, 1e-8])
def test_batched_check_keeps_iteration_count_and_iterate_exact(check_every, rtol):
    A = _varcoeff((9, 9, 9))
    b = np.random.default_rng(1).standard_normal(A.shape[0])
    ref = linsolve.krylov.cg_result(A, b, rtol=rtol)
    res = linsolve.solve(A, torch.from_numpy(b), method="cg", rtol=rtol, check_every=check_every)
    assert res.iterations == ref.iterations
    assert len(res.residual_norms) == ref.iterations + 1
    np.testing.assert_allclose(res.residual_norms, ref.residual_norms, rtol=1e-6)
    assert np.linalg.norm(res.x.numpy() - ref.x) <= 1e-6 * np.linalg.norm(ref.x)
    assert res.converged
    assert res.true_residual_norm == pytest.approx(np.linalg.norm(b - A @ res.x.numpy()), rel=1e-6)
    assert res.extras["check_every"] == check_every


def test_maxiter_boundaries_with_batching():
    A = linsolve.problems.poisson((12, 12, 12))
    b = np.random.default_rng(2).standard_normal(A.shape[0])
    needed = linsolve.krylov.cg_result(A, b, rtol=1e-6).iterations
    tb_ = torch.from_numpy(b)
    res = linsolve.solve(A, tb_, method="cg", rtol=1e-6, maxiter=needed, check_every=8)
    assert res.info == 0 and res.iterations == needed
    res = linsolve.solve(A, tb_, method="cg", rtol=1e-6, maxiter=needed - 1, check_every=8)
    assert res.info == needed - 1 and not res.converged
    assert res.true_residual_norm > 1e-6 * np.linalg.norm(b)


def test_float32_stays_float32_and_is_honest():
    A = linsolve.problems.poisson((24, 24)).astype(np.float32)
    b = torch.ones(A.shape[0], dtype=torch.float32)
    res = linsolve.solve(A, b, method="cg", rtol=1e-5)
    assert res.x.dtype == torch.float32 and res.converged
    true = np.linalg.norm(b.double().numpy() - A.astype(np.float64) @ res.x.double().numpy())
    assert true <= 1.05e-5 * np.linalg.norm(b.numpy())
    ref = linsolve.krylov.cg_result(A, b.numpy(), rtol=1e-5)
    assert abs(res.iterations - ref.iterations) <= 2
    res = linsolve.solve(A, b, method="cg", rtol=1e-12, maxiter=300)
    assert not res.converged and res.info > 0


def test_pure_numpy_pcg_loop_is_scipy():
    # the refactored loop (array interface) still gives SciPy's iterates bit for bit
    A = _varcoeff((8, 8, 8))
    b = np.random.default_rng(4).standard_normal(A.shape[0])
    hist_ref, hist = [], []
    sla.cg(A, b, rtol=1e-8, callback=lambda xk: hist_ref.append(xk.copy()))
    linsolve.cg(A, b, rtol=1e-8, callback=lambda xk: hist.append(xk.copy()))
    _assert_same_iterates(hist, hist_ref, rtol=1e-13)


# ----------------------------------------------------------------------------- preconditioners

def test_jacobi_and_matrix_preconditioners_match_numpy():
    A = _varcoeff((10, 10, 10))
    b = np.random.default_rng(5).standard_normal(A.shape[0])
    Dinv = sp.diags(1.0 / A.diagonal()).tocsr()
    ref, hist_ref = _history(linsolve.krylov.cg_result, A, b, rtol=1e-8, M=Dinv)
    for M in ("jacobi", Dinv, torch.from_numpy(Dinv.toarray()), lambda r: r / torch.from_numpy(A.diagonal())):
        res, hist = _history(linsolve.solve, A, torch.from_numpy(b), method="cg", rtol=1e-8, M=M)
        _assert_same_iterates(hist, hist_ref)
        assert res.iterations == ref.iterations and res.converged


def test_red_black_ssor_preconditioner_matches_numpy_reference():
    A, b, cell_types = _obstacle_matrix((10, 10, 10))
    shape = cell_types.shape
    rb = RedBlack(A.dot, A.diagonal(), red_mask(shape), omega=1.3)
    n = A.shape[0]
    M_np = sla.LinearOperator((n, n), matvec=rb.ssor_apply)
    # The preconditioner is symmetric positive definite (required by CG).
    Z = np.column_stack([rb.ssor_apply(e) for e in np.eye(n)[:, :60].T])
    np.testing.assert_allclose(Z[:60, :60], Z[:60, :60].T, atol=1e-12)
    ref, hist_ref = _history(linsolve.krylov.cg_result, A, b, rtol=1e-8, M=M_np)
    res, hist = _history(linsolve.solve, A, torch.from_numpy(b), method="ssor-cg", rtol=1e-8, omega=1.3,
                         grid_shape=shape)
    _assert_same_iterates(hist, hist_ref)
    assert res.method == "ssor-cg(red-black)" and res.converged
    plain = linsolve.solve(A, torch.from_numpy(b), method="cg", rtol=1e-8)
    assert res.iterations < plain.iterations
    res8 = linsolve.solve(A, torch.from_numpy(b), method="ssor-cg", rtol=1e-8, omega=1.3, cell_types=cell_types)
    assert res8.iterations == res.iterations


def test_symmetric_false_preconditioner_refused_everywhere():
    A = linsolve.problems.poisson((8, 8))
    n = A.shape[0]

    class Learned(sla.LinearOperator):
        symmetric = False

        def __init__(self):
            super().__init__(np.float64, (n, n))

        def _matvec(self, r):
            return r

    with pytest.raises(ValueError, match="M is not symmetric"):
        linsolve.cg(A, np.ones(n), M=Learned())
    with pytest.raises(ValueError, match="M is not symmetric"):
        linsolve.solve(A, torch.ones(n, dtype=torch.float64), method="cg", M=Learned())


def test_breakdowns_reported_on_torch():
    A = linsolve.problems.poisson((8, 8))
    n = A.shape[0]
    b = torch.ones(n, dtype=torch.float64)
    signs = sp.diags(np.where(np.arange(n) % 2, 1.0, -1.0))     # an indefinite M
    assert linsolve.solve(A, b, method="cg", M=signs).info == -2
    nan = linsolve.solve(A, b, method="cg", M=lambda r: torch.full_like(r, float("nan")))
    assert nan.info == -3 and not nan.converged
    A2 = sp.diags([1.0, -1.0, 2.0, -2.0]).tocsr()                 # p^T A p = 0 from b = ones
    for k in (1, 8):
        assert linsolve.solve(A2, torch.ones(4, dtype=torch.float64), method="cg", check_every=k).info == -1


@pytest.mark.parametrize("k", [1, 8])
def test_negative_definite_cg_on_torch_like_numpy(k):
    # CG only needs p^T A p (and r^T M r) to keep their sign: -A and -M give the iterates of A and M.
    A = linsolve.problems.poisson((12, 12))
    b = np.random.default_rng(3).standard_normal(A.shape[0])
    ref = linsolve.solve(A, b, method="cg", rtol=1e-8)
    for M in (None, -sp.identity(A.shape[0])):
        res = linsolve.solve(-A, torch.from_numpy(-b), method="cg", rtol=1e-8, M=M, check_every=k)
        assert res.converged and res.iterations == ref.iterations
        np.testing.assert_allclose(res.x.numpy(), ref.x, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- SOR

@pytest.mark.parametrize("symmetric", [False, True])
def test_red_black_sor_matches_numba_kernel(symmetric):
    from linsolve.kernels.sor import diagonal_positions, red_black_rows, sor_sweep_rows

    shape = (9, 8, 7)
    A = _varcoeff(shape)
    b = np.random.default_rng(6).standard_normal(A.shape[0])
    omega = 1.6
    dpos = diagonal_positions(A.indptr, A.indices)
    red, black = red_black_rows(shape)
    order = [red, black] + ([black, red] if symmetric else [])
    x = np.zeros(A.shape[0])
    hist_ref = []
    for _ in range(12):
        for rows in order:
            sor_sweep_rows(A.indptr, A.indices, A.data, dpos, x, b, omega, rows)
        hist_ref.append(x.copy())
    res, hist = _history(linsolve.solve, A, torch.from_numpy(b), method="sor", omega=omega, symmetric=symmetric,
                         rtol=1e-14, maxiter=12, grid_shape=shape)
    _assert_same_iterates(hist, hist_ref)
    assert res.info == 12 and res.residual_kind == "true"
    assert res.residual_norms[-1] == pytest.approx(np.linalg.norm(b - A @ hist_ref[-1]), rel=1e-8)


def test_sor_batched_count_exact_and_true_residual():
    A = linsolve.problems.poisson((16, 16))
    b = np.random.default_rng(7).standard_normal(A.shape[0])
    tb_ = torch.from_numpy(b)
    one = linsolve.solve(A, tb_, method="sor", omega=1.7, rtol=1e-6, check_every=1)
    for k in (5, 8):
        res = linsolve.solve(A, tb_, method="sor", omega=1.7, rtol=1e-6, check_every=k)
        assert res.iterations == one.iterations and res.converged
        np.testing.assert_allclose(res.residual_norms, one.residual_norms, rtol=1e-10)
        assert torch.equal(res.x, one.x)
    assert np.linalg.norm(b - A @ one.x.numpy()) <= 1e-6 * np.linalg.norm(b)
    assert one.iterations == len(one.residual_norms) - 1


def test_red_black_needs_a_grid():
    A = sp.random(50, 50, density=0.2, random_state=0)
    A = (A + A.T + 20 * sp.identity(50)).tocsr()
    with pytest.raises(ValueError, match="grid"):
        linsolve.solve(A, torch.ones(50, dtype=torch.float64), method="sor")
    B = linsolve.problems.poisson((6, 10))
    with pytest.raises(ValueError, match="stencil"):
        linsolve.solve(B, torch.ones(60, dtype=torch.float64), method="ssor-cg", grid_shape=(10, 6))
    from linsolve.structure import find_grid

    assert find_grid(linsolve.problems.poisson((7, 7, 7))).shape == (7, 7, 7)
    assert find_grid(A) is None


# ----------------------------------------------------------------------------- kernels

@pytest.mark.parametrize("shape", [(7, 9), (5, 6, 7)])
def test_stencil_and_csr_operators_equal_scipy(shape):
    A, _, _ = _obstacle_matrix(shape) if len(shape) == 3 else (_varcoeff(shape), None, None)
    x = np.random.default_rng(8).standard_normal(A.shape[0])
    for op in (CSROperator(A, dtype=torch.float64), StencilOperator(A, shape, dtype=torch.float64)):
        np.testing.assert_allclose(op(torch.from_numpy(x)).numpy(), A @ x, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(op.diagonal().numpy(), A.diagonal())
    assert is_grid_stencil(A, shape) and not is_grid_stencil(A, shape[::-1])
    res = linsolve.solve(A, torch.from_numpy(A @ x), method="cg", rtol=1e-10, operator="stencil", grid_shape=shape)
    assert res.extras["operator"] == "stencil" and res.converged
    np.testing.assert_allclose(res.x.numpy(), x, rtol=1e-6, atol=1e-6)


def test_torch_vcycle_equals_host_vcycle_and_learned_pcg_matches():
    from linsolve.krylov.pcg import gmg_pcg_result
    from linsolve.precond.multigrid import geometric_mg

    A, b, cell_types = _obstacle_matrix((12, 12, 12))
    M = geometric_mg(A, grid_shape=(12, 12, 12), coarse_size=64, precision="double")
    r = np.random.default_rng(9).standard_normal(A.shape[0])
    expected = M.matvec(r)
    np.testing.assert_allclose(TorchVCycle(M)(torch.from_numpy(r)).numpy(), expected, rtol=1e-10, atol=1e-12)
    ref = gmg_pcg_result(A, b, rtol=1e-8, grid_shape=(12, 12, 12), coarse_size=64, precision="double")
    res = linsolve.solve(A, torch.from_numpy(b), method="gmg-pcg", rtol=1e-8, grid_shape=(12, 12, 12),
                         coarse_size=64)
    assert res.iterations == ref.iterations and res.converged
    assert np.linalg.norm(res.x.numpy() - ref.x) <= 1e-6 * np.linalg.norm(ref.x)
    # a GeometricMG given as M is run as a torch V-cycle too
    via_m = linsolve.solve(A, torch.from_numpy(b), method="cg", M=M, rtol=1e-8)
    assert abs(via_m.iterations - ref.iterations) <= 1


def test_torch_vcycle_corrects_bubble_clusters_like_the_host_cycle():
    """Clusters (air bubbles at 1e5:1) are corrected a colour at a time on torch, one cluster after another on
    the host: the same operator, for one right-hand side or a batch."""
    from linsolve.precond.multigrid import geometric_mg
    from linsolve.problems import FLUID, pressure_matrix

    rng = np.random.default_rng(0)
    X = np.meshgrid(*[np.arange(16) + 0.5] * 3, indexing="ij")
    density = np.full((16, 16, 16), 1e5)
    for c in rng.uniform(0, 16, (100, 3)):
        density[sum((x - ci) ** 2 for x, ci in zip(X, c)) <= 1.0] = 1.0
    A = pressure_matrix(np.full((16, 16, 16), FLUID), density=density)
    M = geometric_mg(A, grid_shape=(16, 16, 16), coarse_size=8, precision="double")
    assert sum(L.clusters is not None for L in M.hierarchy.levels) >= 2
    R = rng.standard_normal((A.shape[0], 3))

    def close(z, ref):  # norm-wise: a few entries carry the 1e5 contrast's rounding
        return np.linalg.norm(z - ref) <= 1e-10 * np.linalg.norm(ref)

    assert close(TorchVCycle(M)(torch.from_numpy(R[:, 0])).numpy(), M.matvec(R[:, 0]))
    batch = TorchVCycle(M)(torch.from_numpy(R)).numpy()
    assert close(batch[:, 2], M.matvec(R[:, 2]))


def test_learned_pcg_with_a_model_matches_numpy():
    from linsolve.krylov.pcg import learned_pcg_result

    A = linsolve.problems.poisson((12, 12, 12))
    b = np.random.default_rng(10).standard_normal(A.shape[0])
    model = {"weights": np.random.default_rng(0).normal(0, 0.1, (1, 6)), "bias": [0.3], "log_correction": [0.1]}
    ref = learned_pcg_result(A, b, rtol=1e-8, model=model, precision="double")
    res = linsolve.solve(A, torch.from_numpy(b), method="learned-pcg", rtol=1e-8, model=model, precision="double")
    assert res.iterations == ref.iterations and res.converged and res.method == "learned-pcg"
    assert np.linalg.norm(res.x.numpy() - ref.x) <= 1e-6 * np.linalg.norm(ref.x)


# ----------------------------------------------------------------------------- DCDM

def _small_net(dims=2):
    from linsolve.learn.networks import DCDMNet

    torch.manual_seed(0)
    return DCDMNet(dims=dims, channels=4, n_down=1, n_coarse=1, n_up=1)


def test_dcdm_torch_matches_numpy_driver():
    from linsolve.krylov.dcdm import dcdm_result

    A = linsolve.problems.poisson((12, 12))
    b = np.random.default_rng(11).standard_normal(A.shape[0])
    net = _small_net()
    kwargs = dict(rtol=1e-6, model=net, maxiter=25, min_gain=0.0)
    ref, hist_ref = _history(dcdm_result, A, b, **kwargs)
    res, hist = _history(linsolve.solve, A, torch.from_numpy(b), method="dcdm", **kwargs)
    _assert_same_iterates(hist, hist_ref)
    np.testing.assert_allclose(res.residual_norms, ref.residual_norms, rtol=1e-6)
    assert res.residual_kind == "true" and res.info == ref.info
    batched = linsolve.solve(A, torch.from_numpy(b), method="dcdm", check_every=8, **kwargs)
    assert batched.iterations == res.iterations
    np.testing.assert_allclose(batched.residual_norms, res.residual_norms, rtol=1e-10)
    # the caller's network is not moved or modified
    assert next(net.parameters()).device.type == "cpu"


def test_dcdm_with_obstacles_and_cell_types_matches_numpy_driver():
    from linsolve.krylov.dcdm import dcdm_result

    shape = (14, 14)
    rng = np.random.default_rng(17)
    solid = rng.random(shape) < 0.15
    A = linsolve.problems.poisson(shape, coeff=np.where(solid, 0.0, 1.0))
    A = (A + sp.diags(solid.ravel().astype(float))).tocsr()
    b = rng.standard_normal(A.shape[0])
    b[solid.ravel()] = 0.0
    kwargs = dict(rtol=1e-6, model=_small_net(), maxiter=15, min_gain=0.0, cell_types=solid.astype(np.int8))
    ref = dcdm_result(A, b, **kwargs)
    res = linsolve.solve(A, torch.from_numpy(b), method="dcdm", **kwargs)
    assert res.iterations == ref.iterations
    np.testing.assert_allclose(res.residual_norms, ref.residual_norms, rtol=1e-6)
    assert np.linalg.norm(res.x.numpy() - ref.x) <= 1e-6 * np.linalg.norm(ref.x)


def test_dcdm_stall_falls_back_and_converges_honestly():
    A = linsolve.problems.poisson((12, 12))
    b = torch.from_numpy(np.random.default_rng(12).standard_normal(A.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = linsolve.solve(A, b, method="dcdm", model=_small_net(), rtol=1e-8)
    if res.method == "dcdm->pcg":
        assert "fallback_reason" in res.extras
    assert res.converged and res.info == 0
    assert np.linalg.norm(b.numpy() - A @ res.x.numpy()) <= 1e-8 * np.linalg.norm(b.numpy())
    assert len(res.residual_norms) == res.iterations + 1


def test_dcdm_loop_generic_on_numpy_and_torch():
    from linsolve.krylov.dcdm import dcdm_loop

    A = linsolve.problems.poisson((8, 8))
    b = np.random.default_rng(13).standard_normal(64)
    out_np = dcdm_loop(NUMPY, A.dot, lambda r: r / A.diagonal(), b, np.zeros(64), tol=1e-9, maxiter=300,
                       min_gain=0.0)
    At = CSROperator(A, dtype=torch.float64)
    d = torch.from_numpy(A.diagonal())
    out_t = dcdm_loop(torch_ops(), At, lambda r: r / d, torch.from_numpy(b), torch.zeros(64, dtype=torch.float64),
                      tol=1e-9, maxiter=300, min_gain=0.0, check_every=8)
    assert out_np[1] == out_t[1] == 0 and out_np[2] == out_t[2]
    np.testing.assert_allclose(out_t[0].numpy(), out_np[0], rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- inputs and devices

def test_inputs_kinds_and_result_device():
    A = linsolve.problems.poisson((10, 10))
    n = A.shape[0]
    b = np.random.default_rng(14).standard_normal(n)
    ref = linsolve.krylov.cg_result(A, b, rtol=1e-8)
    coo = A.tocoo()
    A_coo = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data, size=A.shape, check_invariants=False)
    for A_in in (A, A.toarray(), torch.from_numpy(A.toarray()), A_coo, A_coo.to_sparse_csr(),
                 CSROperator(A, dtype=torch.float64)):
        res = linsolve.solve(A_in, torch.from_numpy(b)[:, None], method="cg", rtol=1e-8)
        assert res.x.device.type == "cpu" and res.x.shape == (n,)
        assert res.iterations == ref.iterations
    # device="cpu" with NumPy inputs stays on the NumPy path (x is an ndarray)
    assert isinstance(linsolve.solve(A, b, method="cg").x, np.ndarray)
    # x0 as a tensor; b = 0 gives x = 0
    res = linsolve.solve(A, torch.from_numpy(b), x0=torch.from_numpy(ref.x), method="cg", rtol=1e-6)
    assert res.iterations == 0 and res.converged
    zero = linsolve.solve(A, torch.zeros(n, dtype=torch.float64), x0=torch.ones(n, dtype=torch.float64))
    assert zero.converged and not zero.x.any()
    assert linsolve.solve(A, torch.from_numpy(b), method="auto").method == "cg"


def test_auto_follows_the_numpy_rule_where_it_can_run_on_a_device():
    A = linsolve.problems.poisson((32, 32, 32))
    b = torch.from_numpy(np.random.default_rng(2).standard_normal(A.shape[0]))
    # A known grid, a large stencil matrix and a shipped model: the learned V-cycle, as on the NumPy path.
    numpy_choice = linsolve.solve(A, b.numpy(), method="auto", rtol=1e-6, grid_shape=(32, 32, 32)).method
    res = linsolve.solve(A, b, method="auto", rtol=1e-6, grid_shape=(32, 32, 32))
    assert res.method == numpy_choice == "learned-pcg" and res.converged
    # Without hints the grid is read off the pattern: the same choice.
    assert linsolve.solve(A, b, method="auto", rtol=1e-6).method == "learned-pcg"
    # No grid (a permuted matrix): the NumPy path picks AMG, which does not run on a device: CG.
    perm = np.random.default_rng(0).permutation(A.shape[0])
    assert linsolve.solve(A[perm][:, perm], b, method="auto", rtol=1e-6).method == "cg"
    # A user preconditioner means CG with it.
    assert linsolve.solve(A, b, method="auto", rtol=1e-6, grid_shape=(32, 32, 32), M="jacobi").method == "pcg[jacobi]"
    # Below the size threshold: CG.
    small = linsolve.problems.poisson((8, 8, 8))
    res = linsolve.solve(small, torch.ones(512, dtype=torch.float64), method="auto", grid_shape=(8, 8, 8))
    assert res.method == "cg"


def test_bad_inputs_raise_clear_errors():
    A = linsolve.problems.poisson((6, 6))
    n = A.shape[0]
    b = torch.ones(n, dtype=torch.float64)
    with pytest.raises(ValueError, match="length"):
        linsolve.solve(A, torch.ones(n + 1))
    bad = b.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        linsolve.solve(A, bad)
    with pytest.raises(TypeError, match="complex"):
        linsolve.solve(A, b.to(torch.complex128))
    with pytest.raises(TypeError, match="float16"):
        linsolve.solve(A, b.half())
    with pytest.raises(TypeError, match="LinearOperator"):
        linsolve.solve(sla.aslinearoperator(A), b)
    with pytest.raises(ValueError, match="unknown method"):
        linsolve.solve(A, b, method="nope")
    with pytest.raises(ValueError, match="amg-cg"):
        linsolve.solve(A, b, method="amg-cg")
    with pytest.raises(ValueError, match="check_every"):
        linsolve.solve(A, b, check_every=0)
    with pytest.raises(ValueError, match="operator"):
        linsolve.solve(A, b, operator="dia")
    with pytest.raises(TypeError, match="unexpected options"):
        linsolve.solve(A, b, method="cg", omgea=1.2)
    with pytest.raises(ValueError, match="omega"):
        linsolve.solve(A, b, method="sor", omega=2.5)
    with pytest.raises(ValueError, match="nullspace"):
        linsolve.solve(A, b, nullspace=np.ones(n))
    with pytest.raises(ValueError, match="square"):
        linsolve.solve(torch.ones(3, 4), torch.ones(3))
    if not CUDA:
        with pytest.raises(ValueError, match="CUDA is not available"):
            linsolve.solve(A, np.ones(n), device="cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        linsolve.solve(A, np.ones(n), device="gpu-please")


def test_backends_package_does_not_import_torch_eagerly():
    import subprocess
    import sys

    code = "import linsolve, linsolve.backends, linsolve.krylov.cg, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_gpu_benchmark_quick_runs_on_cpu(tmp_path):
    from linsolve.benchmarks.gpu import main

    assert main(["--quick", "--out", str(tmp_path), "--no-plots"]) == 0
    import json

    data = json.loads((tmp_path / "gpu.json").read_text())
    rows = data["results"]["rows"]
    assert rows and all(r["converged"] for r in rows if "solve_ms" in r and not r["solver"].startswith("dcdm"))
    timed = [r for r in rows if "solve_ms" in r]
    assert {r["solver"] for r in timed} >= {"cg (ours, csr)", "cg (ours, CPU NumPy)", "cg (ours, stencil)"}
    by_name = {r["solver"]: r for r in timed}
    assert by_name["cg (ours, csr)"]["iterations"] == by_name["cg (ours, CPU NumPy)"]["iterations"]
    assert all(r["rel_residual"] <= 1e-6 * 1.0001 for r in timed if r["converged"])
    assert all(r["rel_residual"] > 1e-6 for r in timed if not r["converged"])
    assert data["results"]["device"] == "cpu"


# ----------------------------------------------------------------------------- GPU (skipped without CUDA)

@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_cg_matches_cpu_and_stays_on_device(dtype):
    A = _varcoeff((16, 16, 16)).astype(np.float32 if dtype == torch.float32 else np.float64)
    b = torch.from_numpy(np.random.default_rng(15).standard_normal(A.shape[0])).to(dtype)
    cpu = linsolve.solve(A, b, method="cg", rtol=1e-5)
    res = linsolve.solve(A, b.cuda(), method="cg", rtol=1e-5)
    assert res.x.is_cuda and res.x.dtype == dtype and res.converged
    assert abs(res.iterations - cpu.iterations) <= (0 if dtype == torch.float64 else 3)
    res2 = linsolve.solve(A, b.numpy(), method="cg", rtol=1e-5, device="cuda")
    assert res2.x.is_cuda


@gpu
@needs_cuda
@pytest.mark.parametrize("method", ["ssor-cg", "sor", "gmg-pcg"])
def test_gpu_grid_methods(method):
    A, b, cell_types = _obstacle_matrix((16, 16, 16))
    kwargs = {"omega": 1.8} if method == "sor" else {}
    cpu = linsolve.solve(A, torch.from_numpy(b), method=method, rtol=1e-6, cell_types=cell_types, **kwargs)
    res = linsolve.solve(A, b, method=method, rtol=1e-6, device="cuda", cell_types=cell_types, **kwargs)
    # float64 on both devices; summation order differs, so allow one iteration either way
    assert res.x.is_cuda and res.converged and abs(res.iterations - cpu.iterations) <= 1
    assert np.linalg.norm(b - A @ res.x.cpu().numpy()) <= 1e-6 * np.linalg.norm(b)


@gpu
@needs_cuda
def test_gpu_dcdm_network_on_device():
    A = linsolve.problems.poisson((16, 16))
    b = np.random.default_rng(16).standard_normal(A.shape[0])
    net = _small_net()
    cpu = linsolve.solve(A, torch.from_numpy(b), method="dcdm", model=net, rtol=1e-6, maxiter=20, min_gain=0.0)
    res = linsolve.solve(A, b, method="dcdm", model=net, rtol=1e-6, maxiter=20, min_gain=0.0, device="cuda")
    assert res.x.is_cuda and res.iterations == cpu.iterations == 20
    # cuDNN may run the float32 convolutions in TF32 on the GPU: directions agree to ~1e-3, not 1e-7
    np.testing.assert_allclose(res.residual_norms, cpu.residual_norms, rtol=5e-2)
    assert next(net.parameters()).device.type == "cpu"


@pytest.mark.parametrize("device", ["meta", "mps"])
def test_unsupported_devices_are_a_value_error(device):
    A = linsolve.problems.poisson((16, 16))
    with pytest.raises(ValueError, match="not supported"):
        linsolve.solve(A, np.ones(256), device=device)
    with pytest.raises(ValueError, match="not supported"):
        linsolve.solve(A, torch.ones(256, dtype=torch.float64, device="meta"))
    dense_meta = torch.tensor(A.toarray()).to("meta")        # auto read A's entries first: NotImplementedError
    with pytest.raises(ValueError, match="not supported"):
        linsolve.solve(dense_meta, torch.ones(256, dtype=torch.float64, device="meta"))


def test_a_nan_tolerance_reaches_the_floor_not_a_breakdown():
    # rtol = NaN: CG runs until r vanishes; p^T A p = 0 then is the arithmetic's floor, not an indefinite A (-1)
    A = linsolve.problems.poisson((16, 16))
    res = linsolve.solve(torch.tensor(A.toarray()), torch.ones(256, dtype=torch.float64), method="cg",
                         rtol=float("nan"))
    assert res.info > 0 and not res.converged and "floor" in res.message


def test_an_unsymmetric_matrix_is_refused_as_on_the_numpy_path():
    """CG, SSOR-CG and DCDM ran on it (120-1066 iterations, x off by 1e14-1e17, info -1); NumPy says why."""
    import scipy.sparse as sp

    A = linsolve.problems.poisson((16, 16))
    A = (A + sp.triu(A, 1) * 0.5).tocsr()
    b = torch.ones(A.shape[0], dtype=torch.float64)
    for method in ("cg", "ssor-cg", "auto"):
        with pytest.raises(ValueError, match="not symmetric"):
            linsolve.solve(A, b, method=method)
    with pytest.raises(ValueError, match="not symmetric"):
        linsolve.solve(torch.from_numpy(A.toarray()), b, method="cg")
    assert linsolve.solve(A, b, method="sor", maxiter=20).x.shape == (256,)   # SOR needs no symmetry


def test_dcdm_on_a_system_with_nothing_to_deflate():
    """Every cell decoupled (a diagonal matrix on a grid): the coarse space is empty and the device
    deflation indexed into nothing (IndexError); NumPy's DCDM solves it in one step."""
    import scipy.sparse as sp

    A = sp.identity(256, format="csr") * 4.0
    b = np.random.default_rng(0).standard_normal(256)
    res = linsolve.solve(torch.from_numpy(A.toarray()).to_sparse_csr(), torch.from_numpy(b), method="dcdm",
                         grid_shape=(16, 16))
    assert res.converged and np.allclose(res.x.numpy(), b / 4.0)


def test_a_float32_verdict_is_taken_on_the_residual_in_double():
    """Red-black SOR in float32 on a two-phase box: float32's rounding of b - A x showed 9.9e-7 against a
    tolerance of 1e-6 and the solve said converged; in double the residual of the same data is 1.14e-6."""
    cells = np.zeros((40, 40), int)
    cells[0, :] = cells[-1, :] = cells[:, 0] = cells[:, -1] = 1
    cells[15:22, 15:22] = 1
    cells[1:8, 1:-1] = 2
    rho = np.ones((40, 40))
    rho[25:, :] = 1000.0
    A = linsolve.problems.pressure_matrix(cells, density=rho)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    res = linsolve.solve(A.astype(np.float32), b.astype(np.float32), method="sor", rtol=1e-6, cell_types=cells,
                         device="cpu:0")   # "cpu:0": the torch backend on the CPU ("cpu" is NumPy's path)
    b32 = b.astype(np.float32).astype(np.float64)
    wide = np.linalg.norm(b32 - A.astype(np.float32).astype(np.float64) @ res.x.numpy().astype(np.float64))
    assert res.converged == (wide <= 1e-6 * np.linalg.norm(b32))
    assert abs(res.true_residual_norm - wide) <= 1e-3 * wide
