"""Float32 data of a singular matrix: rounding leaves its rows summing to -8e-8, not 0 (regular, slightly
indefinite as stored). Projecting the constant out left part of b out of reach: learned-pcg stalled for 100-200
iterations and auto then ran plain CG to 10 n (relres 16 at 64^2). Taken as the matrix it is, it converges."""
import time

import numpy as np
import scipy.sparse as sp

import linsolve


def closed_two_phase(n, ratio=1e3, seed=0):
    """A closed box (Neumann walls) of heavy liquid below light gas with bubbles and drops; faces 1/rho with
    rho averaged harmonically across each face, diagonal the sum of its faces (a fluid code's assembly)."""
    rng = np.random.default_rng(seed)
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / n
    phi = (x - 0.6) * n
    for _ in range(30):
        c = rng.uniform(0.1, 0.9, 2)
        d = np.hypot(y - c[0], x - c[1]) * n - rng.uniform(2, 0.06 * n)
        phi = np.where(phi < 0, np.maximum(phi, -d), np.minimum(phi, d))
    rho = np.where(phi < 0, ratio, 1.0)
    idx = np.arange(n * n).reshape(n, n)
    rows, cols, vals, diag = [], [], [], np.zeros(n * n)
    for axis in (0, 1):
        lo, hi = [slice(None)] * 2, [slice(None)] * 2
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        r1, r2 = rho[tuple(lo)], rho[tuple(hi)]
        beta = ((r1 + r2) / (2 * r1 * r2)).ravel()
        i, j = idx[tuple(lo)].ravel(), idx[tuple(hi)].ravel()
        rows += [i, j]
        cols += [j, i]
        vals += [-beta, -beta]
        np.add.at(diag, i, beta)
        np.add.at(diag, j, beta)
    every = np.arange(n * n)
    A = sp.csr_matrix((np.concatenate(vals + [diag]), (np.concatenate(rows + [every]), np.concatenate(cols + [every]))),
                      shape=(n * n, n * n))
    b = (np.sin(3 * np.pi * y) * np.cos(2 * np.pi * x) + 0.3 * rng.standard_normal((n, n))).ravel()
    return A, b - b.mean()


def test_rounded_closed_two_phase_box_is_solved_as_stored():
    A, b = closed_two_phase(64)
    A32, b32 = A.astype(np.float32), b.astype(np.float32)
    sums = np.asarray(A32.astype(np.float64).sum(axis=1)).ravel() / A32.diagonal()
    assert sums.min() < -1e-9 and sums.max() <= 0    # the premise: not singular as stored
    stored = A32.astype(np.float64)
    res = linsolve.solve(stored, b32.astype(np.float64), method="learned-pcg", rtol=1e-6)
    assert res.converged and res.iterations <= 20, (res.iterations, res.message)
    assert np.linalg.norm(b32 - stored @ res.x) <= 1e-6 * np.linalg.norm(b32)
    start = time.perf_counter()
    res32 = linsolve.solve(A32, b32, rtol=1e-6)     # float32 arithmetic cannot meet 1e-6 here: said quickly
    assert time.perf_counter() - start < 5.0
    assert res32.iterations <= 250 and "->cg" not in res32.method
    true = np.linalg.norm(b32.astype(np.float64) - stored @ res32.x.astype(np.float64))
    assert res32.converged == (true <= 1e-6 * np.linalg.norm(b32.astype(np.float64)))
    assert true <= np.linalg.norm(b32)               # never farther off than x = 0


def test_a_stalled_preconditioned_loop_stops_without_a_sign_change():
    """The recurrence at the floor of the working precision above the tolerance: info > 0 after 2 x STALL_AFTER
    iterations without halving, not a run to maxiter."""
    from linsolve.backends.array_api import NUMPY
    from linsolve.krylov.cg import STALL_AFTER, pcg_loop

    A = linsolve.problems.poisson((32, 32)).astype(np.float32)
    b = np.random.default_rng(0).standard_normal(1024).astype(np.float32)
    x, info, its, norms, true, message = pcg_loop(NUMPY, A.dot, lambda r: r / np.float32(4), b,
                                                  np.zeros(1024, np.float32), tol=1e-12 * np.linalg.norm(b),
                                                  maxiter=100_000, stall_after=STALL_AFTER)
    assert info > 0 and its < 10 * STALL_AFTER and "no progress" in message
