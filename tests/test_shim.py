"""auto_cg and patch_scipy: SciPy's cg signature, linsolve's fastest path, honest results."""
import sys
import warnings
import types as pytypes

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla

import linsolve
from linsolve import shim
from linsolve.problems import AIR, FLUID, SOLID, pressure_matrix
from linsolve.shim import auto_cg, auto_cg_result, patch_scipy


@pytest.fixture(autouse=True)
def _fresh_cache():
    shim.clear_cache()
    yield
    shim.clear_cache()


def _cells(shape, closed=False, obstacle=True):
    t = np.full(shape, FLUID)
    if closed:
        for axis in range(len(shape)):
            idx = [slice(None)] * len(shape)
            idx[axis] = 0
            t[tuple(idx)] = SOLID
            idx[axis] = -1
            t[tuple(idx)] = SOLID
    else:
        t[(-1,) + (slice(None),) * (len(shape) - 1)] = AIR
    if obstacle:
        centre = np.array(shape) // 2
        r = max(2, min(shape) // 6)
        idx = np.indices(shape)
        t[sum((idx[a] - centre[a]) ** 2 for a in range(len(shape))) <= r * r] = SOLID
    return t


def phiflow_like(shape, closed=False, obstacle=True, dtype=np.float32, seed=0):
    """PhiFlow's pressure system: +Laplacian (negative definite), +identity rows, Lagrange border if closed."""
    cells = _cells(shape, closed, obstacle)
    A = -pressure_matrix(cells).tolil()
    inactive = np.flatnonzero(cells.ravel() != FLUID)
    A[inactive, inactive] = 1.0
    A = A.tocsr()
    fluid = cells.ravel() == FLUID
    b = np.where(fluid, np.random.default_rng(seed).standard_normal(fluid.size), 0.0)
    if closed:
        n = A.shape[0]
        ones = sp.csr_matrix(np.ones((n, 1)))
        A = sp.bmat([[A, ones], [ones.T, None]], format="csr")
        b = np.r_[b, 0.0]
    return A.astype(dtype), b.astype(dtype), cells


# ----------------------------------------------------------------------------- the fast path

@pytest.mark.parametrize("shape", [(96, 80), (26, 22, 24)])
def test_negative_definite_grid_with_identity_rows(shape):
    A, b, cells = phiflow_like(shape)
    res = auto_cg_result(A, b, rtol=1e-5)
    assert res.info == 0 and res.x.dtype == np.float32
    from linsolve._auto import learned_model_for

    expected = "learned-pcg" if learned_model_for(len(shape)) else "gmg-pcg"
    assert res.method == f"auto_cg[{expected}]"
    assert np.linalg.norm(b - A @ res.x) <= 1e-5 * np.linalg.norm(b)
    np.testing.assert_array_equal(res.x[cells.ravel() != FLUID], 0.0)      # b = 0 on identity rows
    assert res.iterations < linsolve.krylov.cg_result(A, b, rtol=1e-5).iterations / 5


@pytest.mark.parametrize("shape", [(96, 80), (26, 22, 24)])
def test_free_surface_grid_solves_the_coupled_box_alone(shape):
    """A liquid filling the lower part (air rows above): CG carries the liquid's box only, same answer."""
    cells = np.full(shape, FLUID)
    cells[(slice(None), slice(shape[1] // 2, None)) + (slice(None),) * (len(shape) - 2)] = AIR
    A = -pressure_matrix(cells)                                   # PhiFlow's sign; decoupled rows keep a_ii
    b = np.where(cells.ravel() == FLUID, np.random.default_rng(1).standard_normal(cells.size), 0.0)
    b[np.flatnonzero(cells.ravel() == AIR)[:5]] = 2.0              # b on decoupled rows: x = b / a_ii there
    seen = []
    res = auto_cg_result(A, b, rtol=1e-8, callback=lambda xk: seen.append(xk.shape))
    rows = res.extras["coupled_rows"]
    assert res.info == 0 and rows is not None and rows <= cells.size * 0.6
    assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
    assert seen and set(seen) == {(cells.size,)}
    ref = sla.spsolve(A.tocsc(), b)
    assert np.linalg.norm(res.x - ref) <= 1e-6 * np.linalg.norm(ref)


@pytest.mark.parametrize("shape", [(64, 72), (20, 18, 22)])
@pytest.mark.parametrize("obstacle", [False, True])
def test_lagrange_bordered_closed_box(shape, obstacle):
    A, b, _ = phiflow_like(shape, closed=True, obstacle=obstacle, dtype=np.float64)
    exact = sla.spsolve(A.tocsc(), b)
    x, info = auto_cg(A, b, rtol=1e-10)
    assert info == 0 and x.shape == b.shape
    assert np.linalg.norm(b - A @ x) <= 1e-10 * np.linalg.norm(b)
    np.testing.assert_allclose(x, exact, rtol=1e-6, atol=1e-8 * np.abs(exact).max())
    res = auto_cg_result(A, b, rtol=1e-10)
    assert res.extras["path"] == "grid" and res.extras["polish_iterations"] == 0


def test_decoupled_rows_of_any_value_and_zero_rows():
    A, b, cells = phiflow_like((64, 64), dtype=np.float64)
    A = A.tolil()
    inactive = np.flatnonzero(cells.ravel() != FLUID)
    A[inactive[::2], inactive[::2]] = 3.0          # decoupled diagonal rows: x = b / 3 there
    A[inactive[1::2], inactive[1::2]] = 0.0        # zero rows (b = 0 there)
    A = A.tocsr()
    A.eliminate_zeros()
    b[inactive[::2]] = 1.5
    x, info = auto_cg(A, b, rtol=1e-9)
    assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-9 * np.linalg.norm(b)
    np.testing.assert_allclose(x[inactive[::2]], 0.5)


def test_preconditioner_kept_while_the_matrix_is_unchanged():
    A, b, _ = phiflow_like((96, 96))
    first = auto_cg_result(A, b)
    again = auto_cg_result(A.copy(), 2 * b)         # another object, same content
    assert not first.extras["reused"] and again.extras["reused"]
    B = A.copy()
    B.data[B.data > 0.5] = 1.0                       # unchanged entries: still reused
    assert auto_cg_result(B, b).extras["reused"]
    C = (B * 1.5).tocsr()                           # new values, same pattern: rebuilt
    assert not auto_cg_result(C, b).extras["reused"]
    info = shim.cache_info()
    assert info["builds"] == 2 and info["reuses"] == 2 and info["calls"] == 4


def test_a_changed_matrix_on_the_same_grid_takes_over_the_last_hierarchy():
    """An obstacle that moves between two calls: a new plan, built from the last one's multigrid."""
    shape = (96, 96)
    A, b, cells = phiflow_like(shape, obstacle=False)
    cells = cells.copy()
    cells[40:48, 30:38] = SOLID
    moved = -pressure_matrix(cells).tolil()
    solid = np.flatnonzero(cells.ravel() != FLUID)
    moved[solid, solid] = 1.0
    moved = moved.tocsr().astype(np.float32)
    b2 = np.where(cells.ravel() == FLUID, b, 0).astype(np.float32)
    assert auto_cg_result(A, b).info == 0
    res = auto_cg_result(moved, b2, rtol=1e-6)
    assert not res.extras["reused"] and res.info == 0
    assert np.linalg.norm(b2 - moved @ res.x) <= 1e-6 * np.linalg.norm(b2)
    newest = next(reversed(shim._PLANS.values()))
    assert newest.M.hierarchy.reused_levels >= 1


def test_float32_where_safe_float64_where_not():
    A, b, _ = phiflow_like((80, 80))
    loose = auto_cg_result(A, b, rtol=1e-4)
    assert loose.info == 0 and loose.x.dtype == np.float32
    assert np.linalg.norm(b - A @ loose.x.astype(np.float64)) <= 1e-4 * np.linalg.norm(b)
    with pytest.warns(shim.PrecisionWarning):
        tight = auto_cg_result(A, b, rtol=1e-9, maxiter=2000)
    # float32 cannot hold an x this accurate: the float64 one is returned, converged for real
    assert tight.info == 0 and tight.x.dtype == np.float64 and tight.extras["x_dtype"] == "float64"
    A64 = A.astype(np.float64)
    assert np.linalg.norm(b - A64 @ tight.x) <= 1e-9 * np.linalg.norm(b)
    assert np.linalg.norm(b - A64 @ tight.x.astype(np.float32)) > 1e-9 * np.linalg.norm(b)


def test_callback_sees_full_iterates_once_per_iteration():
    A, b, _ = phiflow_like((64, 64), closed=True)
    seen = []
    res = auto_cg_result(A, b, callback=lambda xk: seen.append(xk.shape))
    assert res.info == 0 and len(seen) == res.iterations and set(seen) == {b.shape}


@pytest.mark.parametrize("shape", [(64, 64), (8, 8)])   # the multigrid path and the plain-CG path
def test_solves_run_with_one_blas_thread(shape):
    # Spinning OpenBLAS threads slow the single-threaded kernels on a busy CPU (set-up included), so the
    # whole call runs with one; the caller's setting is restored afterwards.
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        return [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    if not before or max(before) < 2:
        pytest.skip("no multi-threaded BLAS library that threadpoolctl can see")
    seen = []
    A = linsolve.problems.poisson(shape)
    x, info = auto_cg(A, np.ones(A.shape[0]), rtol=1e-8, callback=lambda xk: seen.append(blas_threads()))
    assert info == 0 and seen and all(t == [1] * len(before) for t in seen)
    assert blas_threads() == before


@pytest.mark.parametrize("maxiter", [1, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maxiter_bounds_the_whole_call(maxiter, dtype):
    # SciPy's contract: at most maxiter iterations (callbacks) in all, info == maxiter when not converged;
    # neither the plain-CG polish nor the float64 continuation of a float32 system may add any.
    A = linsolve.problems.poisson((64, 64)).astype(dtype)
    b = np.random.default_rng(0).random(A.shape[0]).astype(dtype)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shim.PrecisionWarning)
        x, info = auto_cg(A, b, rtol=1e-10, maxiter=maxiter, callback=lambda xk: seen.append(1))
    assert info == maxiter and len(seen) == maxiter


def test_inconsistent_closed_pocket_is_reported_not_hidden():
    cells = _cells((64, 64))
    cells[20:30, 20] = cells[20:30, 29] = cells[20, 20:30] = cells[29, 20:30] = SOLID   # a sealed pocket
    A = pressure_matrix(cells)
    b = np.where(cells.ravel() == FLUID, 1.0, 0.0)    # sum over the pocket != 0: no solution
    x, info = auto_cg(A, b, rtol=1e-8, maxiter=300)
    assert info != 0 and np.linalg.norm(b - A @ x) > 1e-8 * np.linalg.norm(b)


# ----------------------------------------------------------------------------- plain cg where it should be

def test_user_preconditioner_means_plain_cg_with_it():
    A, b, _ = phiflow_like((64, 64), dtype=np.float64)
    M = sp.diags(1.0 / A.diagonal())
    hist_ours, hist_ref = [], []
    x, info = auto_cg(A, b, M=M, rtol=1e-8, callback=lambda xk: hist_ours.append(xk.copy()))
    x_ref, info_ref = sla.cg(A, b, M=M, rtol=1e-8, callback=lambda xk: hist_ref.append(xk.copy()))
    assert info == info_ref == 0 and len(hist_ours) == len(hist_ref)
    for ours, theirs in zip(hist_ours, hist_ref):
        assert np.linalg.norm(ours - theirs) <= 1e-12 * np.linalg.norm(theirs)


@pytest.mark.parametrize("make", [
    lambda: (linsolve.problems.poisson((20, 20)), np.ones(400)),                      # below the crossover
    lambda: (sla.aslinearoperator(linsolve.problems.poisson((64, 64))), np.ones(4096)),  # no entries
    lambda: (linsolve.problems.poisson((64, 64)).astype(complex), np.ones(4096) * 1j),  # complex
])
def test_plain_paths_are_scipy_cg(make):
    A, b = make()
    x_ref, info_ref = sla.cg(A, b, rtol=1e-8)
    res = auto_cg_result(A, b, rtol=1e-8)
    assert res.method.startswith("auto_cg[cg") and res.info == info_ref == 0
    np.testing.assert_allclose(res.x, x_ref, rtol=1e-10)


def test_zero_rhs_and_scipy_signature_quirks():
    A, _, _ = phiflow_like((64, 64))
    x, info = auto_cg(A, np.zeros(A.shape[0], np.float32), x0=np.ones(A.shape[0], np.float32))
    assert info == 0 and not x.any()
    with pytest.raises(TypeError):
        auto_cg(A, np.ones(A.shape[0]), None, 1e-5)        # tolerances are keyword-only, as in SciPy
    with pytest.raises(ValueError, match="atol"):
        auto_cg(A, np.ones(A.shape[0]), atol=None)


def test_non_grid_large_matrix_uses_ruge_stuben():
    A, b, _ = phiflow_like((260, 260), dtype=np.float64)     # a grid line of 260 cells: AMG pays (amg_pays)
    perm = np.random.default_rng(0).permutation(A.shape[0])
    P, bp = A[perm][:, perm].tocsr(), b[perm]
    res = auto_cg_result(P, bp, rtol=1e-8)
    assert res.method == "auto_cg[amg-cg(rs)]" and res.info == 0
    assert np.linalg.norm(bp - P @ res.x) <= 1e-8 * np.linalg.norm(bp)


# ----------------------------------------------------------------------------- patch_scipy

def _module(name, source):
    mod = pytypes.ModuleType(name)
    sys.modules[name] = mod
    exec(source, mod.__dict__)
    return mod


def test_patch_scipy_swaps_bindings_and_restores_them():
    original = sla.cg
    early = _module("_early_client", "from scipy.sparse.linalg import cg\n"
                                     "class Solver:\n    solve = staticmethod(cg)\n")
    try:
        with patch_scipy():
            assert sla.cg is not original and sla.cg.__name__ == "auto_cg"
            assert early.cg is sla.cg and early.Solver.solve is sla.cg
            late = _module("_late_client", "from scipy.sparse.linalg import cg\n")
            assert late.cg is sla.cg
            kept = original                     # a user's own reference is left alone
        assert sla.cg is original and early.cg is original and early.Solver.solve is original
        assert late.cg is original and kept is original
    finally:
        sys.modules.pop("_early_client", None)
        sys.modules.pop("_late_client", None)


def test_patch_scipy_nests_and_restores_on_error():
    original = sla.cg
    with pytest.raises(RuntimeError, match="boom"):
        with patch_scipy():
            with patch_scipy():
                assert sla.cg.__name__ == "auto_cg"
            assert sla.cg.__name__ == "auto_cg"       # the inner exit keeps the outer block patched
            raise RuntimeError("boom")
    assert sla.cg is original and not shim.patched()


def test_patched_cg_solves_what_scipy_fails_on_as_plain_swap():
    A, b, _ = phiflow_like((64, 64))
    with patch_scipy():
        x, info = sla.cg(A, b, x0=np.zeros_like(b), rtol=np.float32(1e-5), atol=np.float32(1e-5),
                         maxiter=np.int64(1000), M=None, callback=lambda xk: None)
    assert info == 0 and np.linalg.norm(b - A @ x) <= max(1e-5, 1e-5 * np.linalg.norm(b))


def test_float32_beyond_its_accuracy_returns_float64():
    """A 1000:1 bubble in float32 at rtol 1e-5: even the exact x rounded to float32 misses it; x comes in float64."""
    n = 96
    cells = np.full((n, n), FLUID)
    cells[0] = cells[-1] = SOLID
    cells[:, 0] = SOLID
    cells[:, -1] = AIR
    c = np.indices((n, n))
    density = np.where((c[0] - 48) ** 2 + (c[1] - 40) ** 2 <= 15 ** 2, 1.0, 1000.0)
    A = pressure_matrix(cells, density=density)
    b = np.where(cells.ravel() == FLUID, np.random.default_rng(0).standard_normal(cells.size), 0.0)
    exact = linsolve.solve(A, b, rtol=1e-11).x.astype(np.float32)
    assert np.linalg.norm(b - A @ exact.astype(np.float64)) > 1e-5 * np.linalg.norm(b)   # beyond float32
    A32, b32 = A.astype(np.float32), b.astype(np.float32)
    with pytest.warns(shim.PrecisionWarning):
        res = auto_cg_result(A32, b32, rtol=1e-5)
    # not a false "converged" in float32 (SciPy's), not a failure either: the float64 x meets the tolerance
    assert res.info == 0 and res.converged and res.iterations < 100 and res.x.dtype == np.float64
    b32n = np.linalg.norm(b32.astype(np.float64))
    assert np.linalg.norm(b32 - A32.astype(np.float64) @ res.x) <= 1e-5 * b32n
    assert np.linalg.norm(b32 - A32.astype(np.float64) @ res.x.astype(np.float32)) > 1e-5 * b32n
    x, info = auto_cg(A, b, rtol=1e-5)                                  # float64: solved
    assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-5 * np.linalg.norm(b)


def test_auto_cg_on_an_inconsistent_singular_system_returns_the_least_squares_answer():
    """A closed box (all-Neumann) with a nonzero-mean b, and a zero row with b != 0 there: no x meets the
    tolerance. The fast path solved the consistent part, then plain CG ran 10 n iterations drifting to
    |x| ~ 1e21 (overflow on the zero row). Now the answer is the fast path's, not converged, said why."""
    import time

    A = linsolve.problems.poisson((64, 64), bc="neumann")
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    t0 = time.perf_counter()
    res = linsolve.shim.auto_cg_result(A, b, rtol=1e-6)
    seconds = time.perf_counter() - t0
    part = np.full(A.shape[0], 1.0 / np.sqrt(A.shape[0])) @ b  # b's part along the constants (A's null space)
    true = np.linalg.norm(b - A @ res.x)
    assert not res.converged and res.info > 0 and "null space" in res.message
    assert true <= abs(part) * (1 + 1e-6) + 1e-6 * np.linalg.norm(b)  # the least-squares residual, no drift
    assert res.extras["polish_iterations"] == 0 and seconds < 5
    zero_row = A.tolil()
    zero_row[5, :] = 0
    zero_row[:, 5] = 0
    zero_row = zero_row.tocsr()
    zero_row.eliminate_zeros()
    A2 = zero_row + sp.diags(np.r_[np.zeros(A.shape[0] - 1), 1.0])  # one Dirichlet cell: the rest is consistent
    b2 = A2 @ np.random.default_rng(1).standard_normal(A.shape[0])
    b2[5] = 1.0                                                      # a zero row asked for 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)               # overflowed before
        x, info = linsolve.auto_cg(A2, b2, rtol=1e-6)
    assert info > 0 and np.all(np.isfinite(x))
    assert np.linalg.norm(b2 - A2 @ x) <= 1.0 + 1e-6 * np.linalg.norm(b2)


def _heat(shape, c):
    L = linsolve.problems.poisson(shape)
    return (sp.identity(L.shape[0]) + c * L).tocsr()


def test_well_conditioned_grid_takes_plain_cg_once_and_the_multigrid_when_repeated():
    # I + 8 L on 128^2: Gershgorin bound 65, CG ~45 iterations to 1e-5: cheaper than building a hierarchy,
    # dearer than a kept one (linsolve._auto.grid_cg_pays)
    A = _heat((128, 128), 8.0)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    first = auto_cg_result(A, b, rtol=1e-5)
    assert first.method == "auto_cg[cg]" and first.info == 0
    assert np.linalg.norm(b - A @ first.x) <= 1e-5 * np.linalg.norm(b)
    assert shim.cache_info()["builds"] == 0 and shim.cache_info()["plain_first"] == 1
    again = auto_cg_result(A.copy(), b, rtol=1e-5)
    assert again.method.startswith("auto_cg[") and again.method != "auto_cg[cg]"
    assert again.info == 0 and again.iterations < first.iterations / 3
    assert shim.cache_info()["builds"] == 1
    # a milder step stays on plain CG even when repeated (bound 17: ~25 iterations, as cheap as a kept cycle)
    mild = _heat((128, 128), 2.0)
    for _ in range(2):
        res = auto_cg_result(mild, b, rtol=1e-5)
        assert res.method == "auto_cg[cg]" and res.info == 0
    assert shim.cache_info()["builds"] == 1


def test_a_varying_diagonal_is_judged_by_the_bound_plain_cg_sees():
    # Rows scaled by 1 .. 10^1.5: the Jacobi-scaled bound stays that of I + 8 L, but plain CG runs on the
    # unscaled matrix (ghost-fluid weights 1/theta beside unit ones are alike): the multigrid, at once.
    A0 = _heat((128, 128), 8.0)
    scale = sp.diags(np.logspace(0, 1.5, A0.shape[0]))
    A = (scale @ A0 @ scale).tocsr()
    b = np.random.default_rng(1).standard_normal(A.shape[0])
    res = auto_cg_result(A, b, rtol=1e-5)
    assert res.method != "auto_cg[cg]" and "plain_first_iterations" not in res.extras
    assert res.info == 0 and np.linalg.norm(b - A @ res.x) <= 1e-5 * np.linalg.norm(b)


def _overrun_plain_cg(n=128):
    """float32 plain CG asked for 1e-9 stalls at float32's floor, short of its bound: the multigrid takes over."""
    A = _heat((n, n), 8.0).astype(np.float32)
    b = np.random.default_rng(1).standard_normal(A.shape[0]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shim.PrecisionWarning)
        return A, b, auto_cg_result(A, b, rtol=1e-9)


def test_plain_cg_falling_short_of_its_bound_hands_over_to_the_multigrid():
    A, b, res = _overrun_plain_cg()
    tried = res.extras.get("plain_first_iterations")
    assert tried is not None and tried > 0                      # plain CG went first...
    assert res.method != "auto_cg[cg]" and res.info == 0        # ...and the multigrid finished
    assert res.iterations > tried
    x = np.asarray(res.x, np.float64)
    assert np.linalg.norm(b - A.astype(np.float64) @ x) <= 1e-9 * np.linalg.norm(b.astype(np.float64))
    # the next new matrix of that size and bound builds at once
    res2 = auto_cg_result((A.astype(np.float64) * 1.5).tocsr(), b.astype(np.float64), rtol=1e-5)
    assert "plain_first_iterations" not in res2.extras and res2.method != "auto_cg[cg]" and res2.info == 0


def test_a_hard_matrix_does_not_deny_plain_cg_to_a_well_conditioned_one_of_the_same_size():
    _, b, first = _overrun_plain_cg()
    assert "plain_first_iterations" in first.extras
    easy = _heat((128, 128), 0.5)                # bound 5 against the 65 plain CG fell short on
    res = auto_cg_result(easy, b.astype(np.float64), rtol=1e-5)
    assert res.method == "auto_cg[cg]" and res.info == 0 and res.iterations < 20


def test_the_easiest_matrices_take_plain_cg_before_any_structure_is_looked_for(monkeypatch):
    import linsolve.structure as structure

    def no_scan(*args, **kwargs):
        raise AssertionError("find_grid ran on a matrix one Gershgorin pass settles")

    monkeypatch.setattr(structure, "find_grid", no_scan)
    for A in (_heat((256, 256), 0.5), -_heat((256, 256), 0.5)):   # bound 5, either sign
        b = np.random.default_rng(0).standard_normal(A.shape[0])
        res = auto_cg_result(A.tocsr(), b, rtol=1e-8)
        assert res.method == "auto_cg[cg]" and res.info == 0
        assert res.extras["plain_reason"].startswith("well conditioned")
        assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("decoupled_diagonal", [0.0, 1.0, 2.5, -3.0])
def test_reduced_matrix_fast_path_equals_the_projection(sign, decoupled_diagonal):
    """Decoupled rows (a diagonal alone, or nothing) get a unit diagonal by a copy, not two sparse products."""
    rng = np.random.default_rng(0)
    A = linsolve.problems.poisson((20, 20)).tolil()
    inactive = rng.random(400) < 0.2
    for i in np.flatnonzero(inactive):
        A[i, :] = 0
        A[:, i] = 0
        A[i, i] = decoupled_diagonal
    A = A.tocsr()
    A.eliminate_zeros()
    given = A if sign > 0 else (-A).tocsr()
    keep = sp.diags((~inactive).astype(float))
    expected = (keep @ (sign * given) @ keep + sp.diags(inactive.astype(float))).tocsr()
    out = shim._reduced_matrix(given, sign, inactive)
    assert out.has_sorted_indices and abs(out - expected).max() == 0


def _periodic_poisson_with_obstacle(n):
    """Periodic 2D Poisson (no Dirichlet face: the constants are its null space), a square obstacle of identity rows."""
    one = sp.diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1], shape=(n, n)).tolil()
    one[0, n - 1] = one[n - 1, 0] = 1.0
    eye = sp.identity(n)
    adjacency = (sp.kron(one, eye) + sp.kron(eye, one)).tocsr()
    solid = np.zeros((n, n), bool)
    solid[n // 3:n // 2, n // 3:n // 2] = True
    keep = sp.diags((~solid.ravel()).astype(float))
    adjacency = (keep @ adjacency @ keep).tocsr()
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    A = (sp.diags(np.where(solid.ravel(), 1.0, degree)) - adjacency).tocsr()
    A.eliminate_zeros()
    return A, solid.ravel()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_periodic_singular_system_with_a_rounded_b_converges_without_a_grid(dtype):
    A, solid = _periodic_poisson_with_obstacle(256)  # the wrap hides the grid: Ruge-Stuben AMG
    rng = np.random.default_rng(0)
    b = np.where(solid, 0.0, rng.standard_normal(A.shape[0]))
    b[~solid] -= b[~solid].mean()
    b = b.astype(np.float32)  # off the range of A by float32 rounding (~1e-8), as PhiFlow's divergence is
    A = A.astype(dtype)
    linsolve.shim.clear_cache()
    res = linsolve.shim.auto_cg_result(A, b.astype(dtype), rtol=1e-6)
    assert res.method == "auto_cg[amg-cg(rs)]" and res.info == 0 and res.iterations <= 20
    r = b.astype(np.float64) - A.astype(np.float64) @ np.asarray(res.x, dtype=np.float64)
    assert np.linalg.norm(r) <= 1e-6 * np.linalg.norm(b.astype(np.float64))
    direct = linsolve.solve(A.astype(np.float64), b.astype(np.float64), method="auto", rtol=1e-6)
    assert direct.converged and direct.iterations <= 20
    # a b clearly off the range is said to be so, in a few iterations, not after a drift to overflow
    bad = b.astype(np.float64) + np.where(solid, 0.0, 1e-3)
    res = linsolve.shim.auto_cg_result(A.astype(np.float64), bad, rtol=1e-6)
    assert res.info > 0 and res.iterations <= 20 and "null space" in res.message
    assert np.all(np.isfinite(res.x))


@pytest.mark.parametrize("sign", [1, -1])
def test_a_step_well_conditioned_only_once_scaled_takes_jacobi_cg(sign):
    # backward-Euler step V/dt + L on cells whose volumes differ 1000x: the unscaled matrix is ill conditioned
    n = 40
    volume = 1000.0 ** (np.arange(n) / (n - 1))  # graded cells: volumes spread over 1000x
    V = np.multiply.outer(np.multiply.outer(volume, np.ones(n)), np.ones(n)).ravel()
    A = sign * (sp.diags(V / 1e-3) + linsolve.problems.poisson((n, n, n))).tocsr()
    b = np.random.default_rng(4).standard_normal(A.shape[0])
    linsolve.shim.clear_cache()
    res = linsolve.shim.auto_cg_result(A, b, rtol=1e-8)
    plain = linsolve.solve(A, b, method="cg", rtol=1e-8)
    assert res.method == "auto_cg[jacobi-cg]" and res.info == 0
    assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
    assert res.iterations <= 12 and 3 * res.iterations < plain.iterations


@pytest.mark.parametrize("case", ["pending", "built"])
def test_a_matrix_the_caller_changes_after_the_call_does_not_spoil_the_next_solve(case):
    # FiPy zeroes the matrix it handed to cg once the solve returns and assembles the next step's (same values)
    # into a new one: the plan found by content must not solve with, or build from, the zeroed object.
    n = 96
    if case == "pending":  # a heat step: plain CG first, the multigrid built at the next call from the plan
        A = (sp.identity(n * n) + 20.0 * linsolve.problems.poisson((n, n))).tocsr()
    else:  # a closed box: singular, the multigrid built at once and the grid block kept as the plan's matrix
        A = pressure_matrix(np.full((n, n), FLUID))
    rng = np.random.default_rng(0)
    b = rng.standard_normal(n * n)
    b -= b.mean()
    linsolve.shim.clear_cache()
    first = A.copy()
    res = auto_cg_result(first, b, rtol=1e-6)
    assert res.info == 0
    first.data[:] = 0.0
    for _ in range(2):
        res = auto_cg_result(A.copy(), b, rtol=1e-6)
        assert res.info == 0 and np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b)
        assert res.extras["fast_iterations"] > 0 and res.extras["polish_iterations"] == 0


def _periodic_laplacian(n):
    ring = sp.diags([2.0 * np.ones(n), -np.ones(n - 1), -np.ones(n - 1)], [0, 1, -1], format="lil")
    ring[0, n - 1] = ring[n - 1, 0] = -1.0
    eye = sp.identity(n)
    return (sp.kron(ring.tocsr(), eye) + sp.kron(eye, ring.tocsr())).tocsr()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_phiflow_periodic_bordered_matrix_is_solved_on_its_block_then_by_amg_when_it_comes_back(dtype):
    # PhiFlow borders its periodic pressure matrix [[-L, 1], [1^T, 0]]: no grid (the wrap), an indefinite saddle
    # point plain CG breaks down on in float32 (SciPy: info = maxiter, residual 6e-2 at rtol 1e-5)
    n = 128
    N = n * n
    ones = sp.csr_matrix(np.ones((N, 1)))
    B = sp.bmat([[-_periodic_laplacian(n), ones], [ones.T, None]]).tocsr().astype(dtype)
    rng = np.random.default_rng(0)
    b = np.append(rng.standard_normal(N), 0.0)
    b[:N] -= b[:N].mean()
    b = b.astype(dtype)
    assert linsolve.structure.find_border(B).size == N and linsolve.find_grid(B) is None
    linsolve.shim.clear_cache()
    tol = 1e-5 * np.linalg.norm(b.astype(np.float64))
    methods = []
    for _ in range(2):
        res = auto_cg_result(B.copy(), b, rtol=1e-5)
        x = np.asarray(res.x, dtype=np.float64)
        assert res.info == 0 and np.linalg.norm(b - B.astype(np.float64) @ x) <= tol
        assert abs(x[:N].sum()) <= 1e-3 * np.abs(x[:N]).sum()  # the border row: p sums to 0
        methods.append(res.method)
    # one solve does not pay for AMG's set-up (CG on the block); the matrix coming back does
    assert methods == ["auto_cg[cg]", "auto_cg[amg-cg(rs)]"] and res.iterations <= 10


def test_a_non_grid_matrix_that_comes_back_takes_amg_once_its_setup_is_paid_once():
    A = _periodic_laplacian(128) + 1e-3 * sp.identity(128 * 128, format="csr")  # the wrap hides the grid
    b = np.random.default_rng(1).standard_normal(A.shape[0])
    linsolve.shim.clear_cache()
    first = auto_cg_result(A, b, rtol=1e-6)
    again = [auto_cg_result(A.copy(), b, rtol=1e-6) for _ in range(2)]
    assert first.method == "auto_cg[cg]" and first.iterations > 150
    assert [r.method for r in again] == ["auto_cg[amg-cg(rs)]"] * 2 and again[1].extras["reused"]
    for res in [first] + again:
        assert res.info == 0 and np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b)
    assert again[1].iterations <= 10


@pytest.mark.parametrize("rtol", [1e-6, 1e-5])
def test_float32_two_phase_closed_box_converges_though_rounding_leaves_it_regular(rtol):
    # 1/rho faces at a density ratio of 1000 and 1/h^2 with h = 1/96 round in float32: the rows of the closed box
    # sum to ~1e-7 instead of 0, so the matrix as stored is regular (slightly indefinite). Projecting the
    # constants out broke PCG down and plain CG ran to maxiter (relres 2e-2); SciPy fails here too.
    n = 96
    cells = np.full((n, n), SOLID)
    cells[1:-1, 1:-1] = FLUID
    yy, xx = np.mgrid[:n, :n] + 0.5
    rho = np.full((n, n), 1000.0)
    for cy, cx, r in ((30, 30, 9), (60, 50, 5), (40, 70, 3), (75, 20, 1.5)):
        rho[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1.0
    A = pressure_matrix(cells, h=1.0 / n, density=rho).astype(np.float32)
    fluid = (cells == FLUID).ravel()
    b = np.where(fluid, np.random.default_rng(0).standard_normal(n * n), 0.0)
    b[fluid] -= b[fluid].mean()
    b = b.astype(np.float32)
    assert linsolve.structure.closed_region_labels(A) is None  # not singular as stored
    linsolve.shim.clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shim.PrecisionWarning)
        res = auto_cg_result(A, b, rtol=rtol, maxiter=3000)
    x = np.asarray(res.x, dtype=np.float64)
    b64 = b.astype(np.float64)
    assert res.info == 0 and np.linalg.norm(b64 - A.astype(np.float64) @ x) <= rtol * np.linalg.norm(b64)
    assert res.iterations <= 40


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bordered_closed_box_with_a_pinned_obstacle_takes_the_multigrid(dtype):
    # PhiFlow pins an obstacle's cells (identity rows the fluid rows still couple to) and borders the closed box:
    # the block is regular, so its constants are no null space to find the multiplier in; plain CG on the saddle
    # point took 602 iterations at 128^2 (SciPy's too; in float32 SciPy reports success at 13x the tolerance)
    n = 96
    L = (-linsolve.problems.poisson((n, n), bc="neumann")).tolil()
    obstacle = np.zeros((n, n), bool)
    obstacle[30:48, 30:48] = True
    for i in np.flatnonzero(obstacle.ravel()):
        L.rows[i], L.data[i] = [i], [1.0]
    N = n * n
    c = sp.csr_matrix(np.where(obstacle.ravel(), 0.0, 1.0)[:, None])
    B = sp.bmat([[L.tocsr(), c], [c.T, None]]).tocsr().astype(dtype)
    rng = np.random.default_rng(4)
    b = np.append(np.where(obstacle.ravel(), 0.0, rng.standard_normal(N)), 0.25).astype(dtype)
    linsolve.shim.clear_cache()
    B64, b64 = B.astype(np.float64), b.astype(np.float64)
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", shim.PrecisionWarning)
            res = auto_cg_result(B.copy(), b, rtol=1e-5)
        x = np.asarray(res.x, dtype=np.float64)
        assert res.info == 0 and np.linalg.norm(b64 - B64 @ x) <= 1e-5 * np.linalg.norm(b64)
        assert res.method == "auto_cg[learned-pcg]" and res.iterations <= 10


def test_six_matrices_per_step_keep_their_preconditioners():
    """A step that solves six different matrices (pressure, three velocity components, two scalars) in turn:
    every one of them is kept, not evicted by the others (4 kept matrices: 0 reuses)."""
    linsolve.shim.clear_cache()
    mats = [linsolve.problems.poisson((96, 96), coeff=np.full((96, 96), 1.0 + k)) for k in range(6)]
    b = np.ones(96 * 96)
    for _ in range(3):
        for A in mats:
            x, info = linsolve.auto_cg(A, b, rtol=1e-8)
            assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b)
    stats = linsolve.shim.cache_info()
    assert stats["entries"] == 6 and stats["fast"] == 18 and stats["builds"] == 6 and stats["reuses"] == 12


def test_a_warm_start_that_meets_the_tolerance_is_answered_before_any_build():
    """A converged nonlinear sweep or a steady state: x0 already meets the tolerance. The multigrid of a matrix
    that may never come back was built first (1.2 ms a call at 100^2 against SciPy's 0.1 ms)."""
    linsolve.shim.clear_cache()
    A = linsolve.problems.poisson((128, 128))
    x = np.random.default_rng(0).standard_normal(A.shape[0])
    b = A @ x
    result = linsolve.shim.auto_cg_result(A, b, x * (1 + 1e-12), rtol=1e-8)
    assert result.converged and result.iterations == 0
    assert np.linalg.norm(b - A @ result.x) <= 1e-8 * np.linalg.norm(b)
    stats = linsolve.shim.cache_info()
    assert stats["builds"] == 0 and stats["entries"] == 0


def test_an_adaptive_time_step_keeps_plain_cg_measured_on_the_step_before():
    """Implicit heat steps I/dt + L with dt growing 2 % a step (a new matrix every call), L with a 10x jump in
    its face coefficients: the Gershgorin bound over-estimates CG 3x (123 against 41), so from step ~50 on every
    call built a multigrid (12 ms against SciPy's 3). Plain CG's count on the step before now decides."""
    import scipy.sparse as sp

    linsolve.shim.clear_cache()
    n = 100
    line = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n))
    faces = np.where(np.arange(n + 1) > n // 2, 10.0, 1.0)
    jump = sp.diags([-faces[1:n], faces[:n] + faces[1:], -faces[1:n]], [-1, 0, 1], shape=(n, n))
    L = ((sp.kron(line, sp.identity(n)) + sp.kron(sp.identity(n), jump)) * n * n).tocsr()
    x = np.zeros(n * n)
    x[:n] = 1.0
    for step in range(90):
        dt = 2e-4 * 1.02 ** step
        A = (sp.identity(n * n) / dt + L).tocsr()
        b = x / dt + 1.0
        x, info = linsolve.auto_cg(A, b, x0=x, rtol=1e-8)
        assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b)
    assert linsolve.shim.cache_info()["builds"] == 0
