"""Sequences for online tuning: the paper's synthetic shifted Laplacians and the heat equation."""
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla

import linsolve
from linsolve.problems import heat_sequence, shifted_laplacian_sequence
from linsolve.problems.sequences import heat_diffusion


def test_shifted_laplacian_instances():
    seq = shifted_laplacian_sequence(10, 40, variance="high", seed=3)
    assert len(seq) == 40
    lo, hi = seq.context_range
    base = linsolve.problems.poisson((10, 10))
    for inst in seq:
        assert inst.A.shape == (100, 100) and inst.grid_shape == (10, 10)
        assert lo <= inst.context <= hi
        assert abs(inst.A - base - inst.context * sp.identity(100)).max() < 1e-15
        assert np.linalg.norm(inst.b) <= 10.0
    # The exact Jacobi radius and Young's omega carried in extras match a dense computation.
    for inst in list(seq)[:3]:
        A = inst.A.toarray()
        J = np.eye(100) - A / np.diag(A)[:, None]
        rho = np.max(np.abs(np.linalg.eigvals(J)))
        assert inst.extras["jacobi_rho"] == pytest.approx(rho, rel=1e-10)
        w = inst.extras["omega_opt"]
        assert 1.0 < w < 2.0 and w == pytest.approx(1 + (rho / (1 + np.sqrt(1 - rho ** 2))) ** 2)


def test_shifted_laplacian_reproducible_and_variance():
    a = [(i.context, i.b) for i in shifted_laplacian_sequence(6, 5, seed=1)]
    b = [(i.context, i.b) for i in shifted_laplacian_sequence(6, 5, seed=1)]
    c = [(i.context, i.b) for i in shifted_laplacian_sequence(6, 5, seed=2)]
    assert all(x[0] == y[0] and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert any(x[0] != y[0] for x, y in zip(a, c))
    seq = shifted_laplacian_sequence(6, 5, seed=1)
    assert [i.context for i in seq] == [i.context for i in seq]   # re-iterable
    # Beta(2,6) vs Beta(1/2,3/2): same mean shift (0), larger spread for "high".
    low = np.array([i.context for i in shifted_laplacian_sequence(3, 2000, variance="low", seed=0)])
    high = np.array([i.context for i in shifted_laplacian_sequence(3, 2000, variance="high", seed=0)])
    assert abs(low.mean()) < 0.02 and abs(high.mean()) < 0.02
    assert high.std() > 1.4 * low.std()
    assert low.std() == pytest.approx(0.6 * np.sqrt(12 / (64 * 9)), rel=0.1)


def test_heat_sequence_is_crank_nicolson_and_exact():
    nx, dt, T = 16, 1e-3, 30
    seq = heat_sequence(nx, T, dt=dt)
    insts = list(seq)
    assert len(insts) == T and insts[0].A.shape == ((nx - 1) ** 2,) * 2
    lo, hi = seq.context_range
    # Independent Crank–Nicolson with a sparse LU from the same initial condition.
    L = linsolve.problems.poisson((nx - 1, nx - 1), h=1.0 / nx)
    I = sp.identity(L.shape[0], format="csc")
    u = seq.initial()
    for k, inst in enumerate(insts):
        kappa = float(heat_diffusion((k + 0.5) * dt))
        assert inst.context == pytest.approx(kappa) and lo <= inst.context <= hi
        A = (I + 0.5 * kappa * dt * L).tocsc()
        b = (I - 0.5 * kappa * dt * L) @ u + dt * seq.forcing((k + 0.5) * dt)
        assert np.array_equal(inst.x_prev, u) or np.allclose(inst.x_prev, u, rtol=1e-12, atol=1e-14)
        assert abs(inst.A - A).max() < 1e-12
        assert np.allclose(inst.b, b, rtol=1e-12, atol=1e-14)
        u = sla.splu(A).solve(b)
        assert np.allclose(inst.extras["x_ref"], u, rtol=1e-10, atol=1e-13)
        assert abs(inst.A - inst.A.T).max() == 0.0


def test_heat_diffusion_range_and_forcing():
    t = np.linspace(0, 1, 1001)
    kappa = heat_diffusion(t)
    assert kappa.min() >= 0 and kappa.max() == pytest.approx(10.0)
    assert heat_diffusion(0.25) == pytest.approx(0.1) and heat_diffusion(0.75) == pytest.approx(10.0)
    seq = heat_sequence(32, 1)
    f = seq.forcing(0.0)
    assert f.max() == pytest.approx(32.0, rel=0.05) and f.min() == 0.0
    assert np.count_nonzero(f) < 0.1 * f.size   # a bump of radius 1/8


@pytest.mark.parametrize("call, match", [
    (lambda: shifted_laplacian_sequence(10, 5, variance="medium"), "variance"),
    (lambda: shifted_laplacian_sequence(0, 5), "n must"),
    (lambda: shifted_laplacian_sequence(10, -1), "T must"),
    (lambda: heat_sequence(2, 5), "nx must"),
    (lambda: heat_sequence(10, 5, dt=0.0), "dt must"),
    (lambda: heat_sequence(10, 5, dt=float("nan")), "dt must"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("n", [10, 32, 64])
def test_shifted_laplacian_instances_stay_positive_definite(n):
    # The paper's shifts (down to -0.15) are for its 10 x 10 grid; at n = 32 half the instances were indefinite.
    import scipy.sparse.linalg as sla

    seq = linsolve.problems.shifted_laplacian_sequence(n, 30, variance="high", seed=0)
    lo, hi = seq.context_range
    for inst in seq:
        assert lo <= inst.context <= hi
        smallest = sla.eigsh(inst.A, k=1, sigma=-1, which="LM", return_eigenvectors=False)[0]
        assert smallest > 0 and np.isfinite(inst.extras["omega_opt"])
    if n == 10:
        assert seq.context_range == (-0.15, 0.45)   # the paper's distribution, unchanged
