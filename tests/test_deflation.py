"""Aggregation deflation: the coarse-space algebra, its validation, and what it does to DCDM (NumPy and torch)."""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import aslinearoperator

import linsolve
from linsolve.krylov.dcdm import build_deflation, dcdm_result
from linsolve.precond.deflation import AUTO_MAX_COARSE, aggregation_deflation, resolve_block


def _neumann_laplacian(m):
    T = sp.diags([-np.ones(m - 1), np.r_[1.0, 2 * np.ones(m - 2), 1.0], -np.ones(m - 1)], [-1, 0, 1])
    return (sp.kron(T, sp.identity(m)) + sp.kron(sp.identity(m), T)).tocsr()


def test_correction_leaves_a_residual_orthogonal_to_the_aggregates_and_is_the_coarse_optimum():
    A = linsolve.problems.poisson((12, 12, 12))
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    D = aggregation_deflation(A, (12, 12, 12), block=4)
    assert D.n_coarse == 27 and D.Z.shape == (1728, 27)
    x = D.correction(b)
    assert np.abs(D.Z.T @ (b - A @ x)).max() < 1e-10 * np.linalg.norm(b)
    # Galerkin: no other coarse vector has a smaller A-norm error.
    x_exact = sp.linalg.spsolve(A.tocsc(), b)
    err = lambda y: (x_exact - y) @ (A @ (x_exact - y))  # noqa: E731
    other = x + D.Z @ np.random.default_rng(1).standard_normal(27) * 1e-3
    assert err(x) < err(other)


def test_projected_directions_are_a_orthogonal_to_the_coarse_space():
    A = linsolve.problems.poisson((20, 20))
    D = aggregation_deflation(A, (20, 20), block=3)  # 20 is not a multiple of 3: partial blocks at the edge
    assert D.n_coarse == 49
    q = np.random.default_rng(2).standard_normal(400)
    p = D.project(q)
    assert np.abs(D.Z.T @ (A @ p)).max() < 1e-10 * np.linalg.norm(q)
    assert np.allclose(D.project(p), p)  # a projection


def test_masked_cells_stay_out_of_the_coarse_space():
    from linsolve.cli import demo_problem

    A, b, cells = demo_problem(16)
    fluid = cells.ravel() == 0
    D = aggregation_deflation(A, cells.shape, block=4, mask=fluid)
    assert np.all(D.labels[~fluid] == -1) and np.all(D.labels[fluid] >= 0)
    assert np.all(D.correction(b)[~fluid] == 0)


def test_auto_block_keeps_the_coarse_space_small():
    assert resolve_block("auto", (64, 64, 64)) == 4
    assert resolve_block("auto", (96, 96, 96)) == 4
    assert resolve_block("auto", (128, 128, 128)) == 4
    assert resolve_block("auto", (160, 160, 160)) == 8
    assert resolve_block("auto", (512, 512)) == 4
    for shape in [(128, 128, 128), (160, 160, 160), (200, 200, 200), (1024, 1024)]:
        block = resolve_block("auto", shape)
        assert np.prod([-(-s // block) for s in shape]) <= AUTO_MAX_COARSE
    assert resolve_block(6, (64, 64)) == 6


def test_nested_dissection_path_solves_the_coarse_system_exactly():
    from linsolve.precond.deflation import nested_dissection_order

    order = nested_dissection_order((13, 9, 7))
    assert np.array_equal(np.sort(order), np.arange(13 * 9 * 7))
    # A 2D fluid mask with holes: 50 x 50 aggregates minus the solid ones, over the nested-dissection threshold.
    shape = (200, 200)
    A = linsolve.problems.poisson(shape)
    yy, xx = np.indices(shape)
    mask = ((yy - 100) ** 2 + (xx - 60) ** 2 > 30 ** 2).ravel()
    D = aggregation_deflation(A, shape, block=4, mask=mask)
    assert D.n_coarse >= 2000 and D._perm is not None
    w = np.random.default_rng(5).standard_normal(D.n_coarse)
    assert np.allclose(D.coarse_solve(w), sp.linalg.spsolve(D.E.tocsc(), w), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("block", [1, 0, -4, 2.5, True, "big", "4"])
def test_bad_block_size_is_named(block):
    with pytest.raises(ValueError, match="deflation"):
        resolve_block(block, (16, 16))


def test_bad_grid_and_mask_are_named():
    A = linsolve.problems.poisson((8, 8))
    with pytest.raises(ValueError, match="grid_shape"):
        aggregation_deflation(A, (8, 9))
    with pytest.raises(ValueError, match="mask has 10 cells"):
        aggregation_deflation(A, (8, 8), mask=np.ones(10, bool))


def test_singular_coarse_matrix_is_refused_with_a_clear_message():
    A = _neumann_laplacian(8)  # constants are in both A's null space and range(Z)
    with pytest.raises(ValueError, match="singular"):
        aggregation_deflation(A, (8, 8), block=4)


# --- DCDM with deflation (needs torch) ---------------------------------------------------------


@pytest.fixture(scope="module")
def fluid_frame(one_torch_thread):
    pytest.importorskip("linsolve.problems.fluid")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = list(linsolve.problems.fluid_sequence((16, 16, 16), 3, scene="smoke_sphere", seed=0,
                                                       solver="amg-cg", rtol=1e-8, check=False))
    return frames[-1]


def _solve(inst, **kw):
    return dcdm_result(inst.A, inst.b, rtol=1e-6, grid_shape=inst.grid_shape, cell_types=inst.cell_types, **kw)


def test_deflation_cuts_dcdm_iterations_on_a_fluid_pressure_solve(fluid_frame):
    inst = fluid_frame
    paper = _solve(inst, deflation=None)
    deflated = _solve(inst)  # the default, "auto"
    assert paper.converged and deflated.converged and deflated.method == "dcdm"
    assert deflated.iterations <= 0.7 * paper.iterations
    assert deflated.extras["deflation_block"] == 4 and deflated.extras["deflation_coarse_size"] > 0
    assert paper.extras["deflation_coarse_size"] == 0
    b = inst.b
    assert np.linalg.norm(b - inst.A @ deflated.x) <= 1e-6 * np.linalg.norm(b)
    assert len(deflated.residual_norms) == deflated.iterations + 1
    # The first recorded residual is the one after the coarse correction (x0 = 0 gives ||b|| before it).
    assert deflated.extras["x0_residual_norm"] == pytest.approx(np.linalg.norm(b))
    assert abs(deflated.residual_norms[0] - np.linalg.norm(b)) > 1e-3 * np.linalg.norm(b)


def test_torch_driver_matches_the_numpy_driver_with_deflation(fluid_frame, one_torch_thread):
    torch = one_torch_thread
    inst = fluid_frame
    ref = _solve(inst, deflation=4)
    # A torch right-hand side routes the solve to the torch backend.
    res = linsolve.solve(inst.A, torch.from_numpy(inst.b), method="dcdm", rtol=1e-6, grid_shape=inst.grid_shape,
                         cell_types=inst.cell_types, deflation=4)
    assert res.extras["backend"] == "torch"
    assert res.converged and res.iterations == ref.iterations
    assert res.extras["deflation_coarse_size"] == ref.extras["deflation_coarse_size"]
    assert res.extras["network_calls"] >= ref.iterations  # batched checks may replay a few
    assert np.allclose(res.x.numpy(), ref.x, rtol=1e-6, atol=1e-6 * np.abs(ref.x).max())
    batched = linsolve.solve(inst.A, torch.from_numpy(inst.b), method="dcdm", rtol=1e-6, grid_shape=inst.grid_shape,
                             cell_types=inst.cell_types, deflation=4, check_every=8)
    assert batched.converged and batched.iterations == ref.iterations


def test_torch_driver_returns_a_converged_x0_untouched_with_deflation(one_torch_thread):
    torch = one_torch_thread
    A = linsolve.problems.poisson((16, 16))
    b = np.random.default_rng(4).standard_normal(256)
    exact = np.linalg.solve(A.toarray(), b)
    res = linsolve.solve(A, torch.from_numpy(b), x0=torch.from_numpy(exact), method="dcdm", rtol=1e-6,
                         grid_shape=(16, 16))
    assert res.iterations == 0 and torch.equal(res.x, torch.from_numpy(exact))


def test_deflation_with_a_random_network_still_converges_through_the_safeguard(one_torch_thread):
    torch = one_torch_thread
    from linsolve.learn.networks import DCDMNet

    torch.manual_seed(0)
    net = DCDMNet(dims=2, channels=8, n_down=1, n_coarse=1, n_up=1).eval()
    A = linsolve.problems.poisson((24, 24))
    b = np.random.default_rng(3).standard_normal(576)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = dcdm_result(A, b, rtol=1e-6, model=net)
    assert res.converged and np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b)


def test_operator_input_turns_auto_off_and_refuses_an_explicit_block(one_torch_thread):
    A = linsolve.problems.poisson((16, 16))
    b = np.ones(256)
    res = dcdm_result(aslinearoperator(A), b, rtol=1e-6, grid_shape=(16, 16))
    assert res.converged and res.extras["deflation_coarse_size"] == 0
    with pytest.raises(ValueError, match="deflation needs A as a sparse matrix"):
        dcdm_result(aslinearoperator(A), b, rtol=1e-6, grid_shape=(16, 16), deflation=4)
    with pytest.raises(ValueError, match="deflation must be"):
        dcdm_result(A, b, rtol=1e-6, deflation="yes")


def test_auto_deflation_on_a_singular_matrix_warns_and_turns_off(one_torch_thread):
    A = _neumann_laplacian(8)
    with pytest.warns(RuntimeWarning, match="deflation turned off"):
        assert build_deflation("auto", A, (8, 8), np.ones(64, bool)) is None
    with pytest.raises(ValueError, match="singular"):
        build_deflation(4, A, (8, 8), np.ones(64, bool))
