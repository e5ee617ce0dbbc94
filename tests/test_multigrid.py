"""Geometric multigrid preconditioners (classical twin and learned V-cycle) and their kernels."""
import numpy as np
import pytest
import scipy.sparse as sp

import linsolve
from linsolve.kernels import multigrid as K
from linsolve.precond.multigrid import (GeometricMG, _stencil_csr, coarsen_cell_types, fast_learned, geometric_mg,
                                        gmg_pcg_result, learned_pcg_result, load_mg_parameters, stencil_from_matrix)

FLUID, SOLID, AIR = 0, 1, 2


def _box_types(n, sphere=True, dims=3):
    """Walls on the sides and bottom, open top (axis 1), a solid sphere and a few air cells."""
    shape = (n,) * dims
    t = np.zeros(shape, dtype=np.int8)
    for axis in range(dims):
        sl = [slice(None)] * dims
        sl[axis] = 0
        t[tuple(sl)] = SOLID
        if axis != 1:
            sl[axis] = n - 1
            t[tuple(sl)] = SOLID
    if sphere:
        c = np.indices(shape)
        t[((c - 0.45 * n) ** 2).sum(0) <= (0.18 * n) ** 2] = SOLID
    sl = [slice(2, 4)] * dims
    sl[1] = slice(n - 2, n)
    t[tuple(sl)] = AIR
    return t


def _pressure(types):
    fluid = getattr(linsolve.problems, "pressure_matrix", None)
    if fluid is not None:
        return fluid(types)
    # Fallback while problems/fluid.py is missing: k = 0 in solid cells, identity rows for non-fluid.
    A = linsolve.problems.poisson(types.shape, coeff=(types == FLUID).astype(float)).tolil()
    for i in np.flatnonzero(types.ravel() != FLUID):
        A[i, i] = 1.0
    return A.tocsr()


def _rhs(types, seed=0):
    rng = np.random.default_rng(seed)
    return np.where(types.ravel() == FLUID, rng.standard_normal(types.size), 0.0)


RANDOM_MODEL = {"tables": np.random.default_rng(3).normal(0, 0.5, (3, 4, 27)), "bias": [0.3, -0.2, 0.1],
                "log_correction": [0.2, -0.3, 0.4]}


# ----------------------------------------------------------------------------- stencil extraction

@pytest.mark.parametrize("shape", [(6, 5, 4), (7, 9)])
def test_stencil_round_trip(shape):
    rng = np.random.default_rng(0)
    A = linsolve.problems.poisson(shape, coeff=rng.uniform(0.5, 2.0, shape))
    d, w0, w1, w2 = stencil_from_matrix(A, shape)
    assert d.shape == tuple(shape) + (1,) * (3 - len(shape))
    assert abs(_stencil_csr(d, w0, w1, w2) - A).max() < 1e-12


def test_stencil_rejects_wrong_grid_and_non_stencil():
    A = linsolve.problems.poisson((4, 4, 4))
    with pytest.raises(ValueError, match="stencil|grid"):
        stencil_from_matrix(A, (8, 8))  # right size, wrong grid: couplings at distance 16 exist
    B = (A + sp.eye(64, k=5) + sp.eye(64, k=-5)).tocsr()
    with pytest.raises(ValueError, match="outside the 7-point stencil"):
        stencil_from_matrix(B, (4, 4, 4))
    C = A.tolil()
    C[0, 1] = -0.5
    with pytest.raises(ValueError, match="symmetric"):
        stencil_from_matrix(C.tocsr(), (4, 4, 4))
    D = A.copy()
    D.setdiag(-1.0)
    with pytest.raises(ValueError, match="diagonal"):
        stencil_from_matrix(D, (4, 4, 4))


def test_geometric_mg_input_errors():
    A = linsolve.problems.poisson((8, 8, 8))
    with pytest.raises(ValueError, match="grid"):
        geometric_mg(linsolve.problems.poisson((5, 7)))  # 35 cells: no square or cube
    with pytest.raises(ValueError, match="omega"):
        geometric_mg(A, omega=2.5)
    with pytest.raises(ValueError, match="smoothing_steps"):
        geometric_mg(A, smoothing_steps=0)
    with pytest.raises(TypeError, match="cell_types"):
        geometric_mg(A, np.zeros((8, 8, 8)))
    with pytest.raises(ValueError, match="cell_types"):
        geometric_mg(A, np.full((8, 8, 8), 5))
    with pytest.raises(ValueError, match="do not pass M"):
        gmg_pcg_result(A, np.ones(512), M=geometric_mg(A))
    with pytest.raises(ValueError, match="tables"):
        load_mg_parameters({"tables": np.zeros((2, 3, 27)), "bias": [0, 0], "log_correction": [0, 0]})


# ----------------------------------------------------------------------------- kernels

def test_restrict_is_transpose_of_prolong():
    rng = np.random.default_rng(1)
    fine, coarse = (5, 6, 3), K.coarse_shape((5, 6, 3))
    scale = rng.uniform(0, 2, fine)
    cact = (rng.uniform(size=coarse) > 0.3).astype(float)
    e, r = rng.standard_normal(coarse), rng.standard_normal(fine)
    pe = np.zeros(fine)
    K.prolong_add(e, scale, cact, pe)
    rt = np.empty(coarse)
    K.restrict(r, scale, cact, rt)
    assert np.isclose(np.vdot(pe, r), np.vdot(e, rt), rtol=1e-12)


def test_coarsen_operator_is_halved_aggregation_galerkin():
    rng = np.random.default_rng(2)
    shape = (6, 4, 5)
    types = np.where(rng.uniform(size=shape) < 0.2, SOLID, FLUID).astype(np.int8)
    A = _pressure(types)
    d, w0, w1, w2 = stencil_from_matrix(A, shape)
    active = ((w0 + w1 + w2) > 0)
    active[1:] |= w0[:-1] > 0
    active[:, 1:] |= w1[:, :-1] > 0
    active[:, :, 1:] |= w2[:, :, :-1] > 0
    cs = K.coarse_shape(shape)
    out = [np.empty(cs) for _ in range(5)]
    K.coarsen_operator(d, w0, w1, w2, active.astype(float), 0.5, *out)
    # Piecewise-constant P0 on active fine cells.
    agg = np.ravel_multi_index(tuple(np.indices(shape)[a] // 2 for a in range(3)), cs).ravel()
    P0 = sp.csr_matrix((active.ravel().astype(float), (np.arange(d.size), agg)), shape=(d.size, int(np.prod(cs))))
    galerkin = (0.5 * P0.T @ A @ P0).toarray()
    cact = out[4].ravel() > 0
    mine = _stencil_csr(*out[:4]).toarray()
    assert np.allclose(mine[np.ix_(cact, cact)], galerkin[np.ix_(cact, cact)], atol=1e-12)
    assert np.array_equal(cact, np.asarray(P0.sum(axis=0)).ravel() > 0)


def test_coarsen_cell_types():
    t = np.full((4, 4, 3), SOLID, dtype=np.int8)
    t[0, 0, 0] = FLUID
    t[3, 3, 2] = AIR
    c = coarsen_cell_types(t)
    assert c.shape == (2, 2, 2)
    assert c[0, 0, 0] == FLUID and c[1, 1, 1] == AIR and c[0, 1, 0] == SOLID


# ----------------------------------------------------------------------------- the V-cycle

@pytest.mark.parametrize("model", [None, "random"])
def test_vcycle_is_symmetric_positive_definite(model):
    types = _box_types(14)
    A = _pressure(types)
    M = geometric_mg(A, types, coarse_size=64) if model is None else \
        fast_learned(A, types, RANDOM_MODEL, coarse_size=64)
    assert len(M.levels) >= 2
    rng = np.random.default_rng(4)
    for _ in range(3):
        x, y = rng.standard_normal(A.shape[0]), rng.standard_normal(A.shape[0])
        assert np.isclose(x @ (M @ y), y @ (M @ x), rtol=1e-10)
        assert x @ (M @ x) > 0
    # Identity rows (solid / air cells) are solved exactly and stay decoupled.
    r = np.zeros(A.shape[0])
    solid = np.flatnonzero(types.ravel() != FLUID)[5]
    r[solid] = 3.0
    z = M @ r
    assert np.isclose(z[solid], 3.0) and np.count_nonzero(z) == 1


def test_pcg_converges_fast_and_mesh_independently():
    its = []
    for n in (16, 32):
        types = _box_types(n)
        A, b = _pressure(types), _rhs(types)
        res = gmg_pcg_result(A, b, rtol=1e-8, cell_types=types)
        assert res.converged and res.info == 0
        assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
        assert res.method == "gmg-pcg" and res.setup_time_s > 0
        its.append(res.iterations)
    assert its[0] <= 20
    assert its[1] <= its[0] + 4, its


def test_poisson_2d_and_dirichlet():
    A = linsolve.problems.poisson((40, 40))
    b = np.ones(1600)
    res = gmg_pcg_result(A, b, rtol=1e-8)
    assert res.converged and res.iterations <= 15
    x_cg, info = linsolve.cg(A, b, rtol=1e-8, M=geometric_mg(A, grid_shape=(40, 40), smoothing_steps=2))
    assert info == 0


def test_learned_pcg_with_random_model_converges_and_reuse():
    types = _box_types(16)
    A, b = _pressure(types), _rhs(types, 1)
    res = learned_pcg_result(A, b, rtol=1e-8, cell_types=types, model=RANDOM_MODEL)
    assert res.converged and res.method == "learned-pcg"
    again = learned_pcg_result(A, 2 * b, rtol=1e-8, preconditioner=res.extras["preconditioner"])
    assert again.converged and again.iterations == res.iterations


def test_solve_registry_and_auto():
    A = linsolve.problems.poisson((30, 30, 30))
    b = np.ones(A.shape[0])
    res = linsolve.solve(A, b, method="gmg-pcg", rtol=1e-7)
    assert res.converged and res.method == "gmg-pcg"
    auto = linsolve.solve(A, b, method="auto", grid_shape=(30, 30, 30), rtol=1e-7)
    assert auto.converged and auto.method in ("gmg-pcg", "learned-pcg")
    # Not a grid stencil: auto must not pick the multigrid.
    B = (A + 0.01 * sp.eye(A.shape[0], k=40) + 0.01 * sp.eye(A.shape[0], k=-40)).tocsr()
    other = linsolve.solve(B, b, method="auto", grid_shape=(30, 30, 30), rtol=1e-7)
    assert other.method not in ("gmg-pcg", "learned-pcg")


# ----------------------------------------------------------------------------- torch twin and shipped model

def test_torch_vcycle_matches_numba():
    torch = pytest.importorskip("torch")
    from linsolve.learn.multigrid import MGVCycle, TorchHierarchy

    types = _box_types(12)
    A = _pressure(types)
    net = MGVCycle()
    with torch.no_grad():
        net.tables.copy_(torch.tensor(RANDOM_MODEL["tables"]))
        net.log_correction.copy_(torch.tensor([0.2, -0.3, 0.4]))
    H = TorchHierarchy(A, types, coarse_size=8)  # 4 levels: every parameter group is used
    assert len(H.levels) == 4
    r = np.random.default_rng(5).standard_normal((A.shape[0], 2))
    zt = H.vcycle(net, torch.tensor(r)).detach().numpy()
    M = fast_learned(A, types, net, coarse_size=8)
    zn = np.stack([M @ r[:, 0], M @ r[:, 1]], axis=1)
    assert np.abs(zt - zn).max() <= 1e-10 * np.abs(zn).max()
    # At initialisation the learned V-cycle is the classical twin.
    M0 = fast_learned(A, types, MGVCycle(), coarse_size=64)
    G = geometric_mg(A, types, coarse_size=64)
    assert np.allclose(M0 @ r[:, 0], G @ r[:, 0], rtol=1e-12, atol=1e-12)


def test_training_lowers_the_loss(tmp_path):
    torch = pytest.importorskip("torch")
    from linsolve.learn.multigrid import MGTrainConfig, TorchHierarchy, pcg_loss, train_mg

    types = _box_types(12)
    A = _pressure(types)
    B = np.stack([_rhs(types, s) for s in range(2)], axis=1)
    cfg = MGTrainConfig(steps=30, pcg_steps=3, lr=0.02, out=str(tmp_path / "m.safetensors"), progress=False,
                        grid_shape=(12, 12, 12))
    net = train_mg(cfg, systems=[(A, types, B)])
    start, final = net.train_loss
    assert final < start
    params = load_mg_parameters(cfg.out)
    assert np.allclose(params["tables"], net.tables.detach().numpy())
    with torch.no_grad():
        again = np.mean([pcg_loss(net, TorchHierarchy(A, types, coarse_size=c), torch.tensor(B), 3).item()
                         for c in cfg.coarse_sizes])
    assert np.isclose(again, final, rtol=1e-6)


def test_shipped_model_if_any():
    names = [n for n in linsolve.models.available() if n.startswith("mg-")]
    if not names:
        pytest.skip("no mg-* model shipped yet")
    types = _box_types(20)
    A, b = _pressure(types), _rhs(types, 2)
    res = learned_pcg_result(A, b, rtol=1e-8, cell_types=types)
    assert res.converged and res.iterations <= 25


def test_parameter_groups_cover_deep_hierarchies():
    from linsolve.precond.multigrid import parameter_group

    assert [parameter_group(lev, 3, 3) for lev in range(2)] == [0, 2]
    assert [parameter_group(lev, 6, 3) for lev in range(5)] == [0, 1, 1, 1, 2]
    assert [parameter_group(lev, 6, 2) for lev in range(5)] == [0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="no learned multigrid model for 2D"):
        fast_learned(linsolve.problems.poisson((30, 30)))


def test_closed_container_singular_system():
    fluid = pytest.importorskip("linsolve.problems.fluid")
    t = np.full((14, 14, 14), SOLID, dtype=np.int8)
    t[1:-1, 1:-1, 1:-1] = FLUID  # no air, no open side: A is singular (constants on the fluid)
    A, N = fluid.pressure_matrix(t), fluid.pressure_nullspace(t)
    b = _rhs(t, 7)
    b -= N @ (N.T @ b)
    for method in ("gmg-pcg", "learned-pcg"):
        options = {"cell_types": t} if method == "gmg-pcg" else {"cell_types": t, "model": RANDOM_MODEL}
        res = linsolve.solve(A, b, method=method, rtol=1e-8, nullspace=N, **options)
        assert res.converged and res.info == 0
        assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
