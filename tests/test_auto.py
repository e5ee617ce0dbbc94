"""method="auto" decides from the matrix; grid hints are accepted by every method."""
import numpy as np
import pytest
import scipy.sparse as sp

import linsolve
from linsolve import _auto
from linsolve.problems import AIR, FLUID, SOLID, pressure_matrix


def _pressure(shape, seed=0):
    types = np.full(shape, FLUID)
    types[(0,) + (slice(None),) * (len(shape) - 1)] = AIR
    centre = tuple(s // 2 for s in shape)
    r = max(2, min(shape) // 6)
    idx = np.indices(shape)
    inside = sum((idx[a] - centre[a]) ** 2 for a in range(len(shape))) <= r * r
    types[inside] = SOLID
    A = pressure_matrix(types)
    fluid = types.ravel() == FLUID
    b = np.where(fluid, np.random.default_rng(seed).standard_normal(fluid.size), 0.0)
    return A, b, types


def _methods():
    names = [m for m in linsolve.available_methods() if m != "dcdm"]
    try:
        import torch  # noqa: F401
        names.append("dcdm")
    except ImportError:
        pass
    return sorted(names)


@pytest.mark.parametrize("method", _methods())
def test_every_method_accepts_grid_hints(method):
    A, b, types = _pressure((12, 10, 8))      # 3D: learned-pcg ships a 3D model only
    res = linsolve.solve(A, b, method=method, rtol=1e-6, cell_types=types, grid_shape=types.shape, maxiter=20000)
    assert res.converged, res.message
    assert np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b)


def test_hints_reach_the_methods_that_use_them():
    A, b, types = _pressure((24, 20))
    with pytest.raises(ValueError, match="grid_shape|cells"):
        linsolve.solve(A, b, method="gmg-pcg", grid_shape=(20, 20))   # used, hence checked
    res = linsolve.solve(A, b, method="amg-cg", grid_shape=(20, 20))  # unused, hence ignored
    assert res.converged


def _grid_method(dims):
    return "learned-pcg" if _auto.learned_model_for(dims) else "gmg-pcg"


def test_auto_takes_the_grid_path_without_hints():
    A, b, _ = _pressure((128, 128))
    res = linsolve.solve(A, b, rtol=1e-6)
    assert res.method == _grid_method(2) and res.converged
    assert res.iterations < linsolve.solve(A, b, method="cg", rtol=1e-6).iterations / 10


def test_auto_uses_the_learned_model_in_3d():
    A, b, _ = _pressure((24, 24, 24))
    assert A.shape[0] >= _auto.GRID_MIN_CELLS[3]
    res = linsolve.solve(A, b, rtol=1e-6)
    assert res.method == "learned-pcg" and res.converged


def test_auto_is_plain_cg_below_the_crossover():
    for shape in [(40, 40), (16, 16, 16)]:
        A, b, _ = _pressure(shape)
        assert A.shape[0] < _auto.GRID_MIN_CELLS[len(shape)]
        assert linsolve.solve(A, b).method == "cg"


def test_auto_on_non_grid_matrices_uses_ruge_stuben_when_large():
    A, b, _ = _pressure((260, 260))
    perm = np.random.default_rng(1).permutation(A.shape[0])
    P, bp = A[perm][:, perm].tocsr(), b[perm]
    assert linsolve.find_grid(P) is None and P.shape[0] >= _auto.AMG_MIN_ROWS
    res = linsolve.solve(P, bp, rtol=1e-6)
    assert res.method == "amg-cg(rs)" and res.converged
    small = P[:2000, :2000]
    assert _auto.choose_method(small.tocsr(), {}) == ("cg", {})


def _periodic_laplacian(shape):
    factors = []
    for n in shape:
        T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n)).tolil()
        T[0, n - 1] = T[n - 1, 0] = -1.0
        factors.append(T.tocsr())
    out = 0
    for a in range(len(shape)):
        term = None
        for i, n in enumerate(shape):
            f = factors[a] if i == a else sp.identity(n)
            term = f if term is None else sp.kron(term, f)
        out = out + term
    return sp.csr_matrix(out)


@pytest.mark.parametrize("shape, coefficient, expected", [((32, 32, 32), 1.0, "cg"), ((260, 260), 1.0, "cg"),
                                                           ((260, 260), 1000.0, "amg-cg")])
def test_auto_takes_plain_cg_for_a_well_conditioned_non_grid_matrix(shape, coefficient, expected):
    # A backward-Euler heat step on a periodic domain (no grid find_grid knows): its Gershgorin bound is
    # 9-13, so AMG's set-up could not pay; a stiff step (bound 8,001) on long grid lines still takes AMG.
    L = _periodic_laplacian(shape)
    A = (sp.identity(L.shape[0]) + coefficient * L).tocsr()
    assert linsolve.find_grid(A) is None
    assert (_auto.condition_bound(A) <= _auto.CG_MAX_CONDITION) == (coefficient == 1.0)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    res = linsolve.solve(A, b, rtol=1e-8)
    assert res.method.startswith(expected) and res.converged
    assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
    x, info = linsolve.auto_cg(A, b, rtol=1e-8)
    assert info == 0 and np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b)
    assert (linsolve.shim.auto_cg_result(A, b, rtol=1e-8).method == "auto_cg[cg]") == (expected == "cg")


@pytest.mark.parametrize("shape", [(128, 128), (32, 32, 32)])
def test_auto_grid_heat_step_takes_cg_only_when_it_is_well_conditioned(shape):
    L = linsolve.problems.poisson(shape)
    mild = (sp.identity(L.shape[0]) + L).tocsr()            # bound 9 (2D) / 13 (3D)
    stiff = (sp.identity(L.shape[0]) + 100.0 * L).tocsr()   # bound 801 / 1201
    assert _auto.choose_method(mild, {})[0] == "cg"
    assert _auto.choose_method(stiff, {})[0] == _grid_method(len(shape))
    b = np.random.default_rng(1).standard_normal(L.shape[0])
    for A in (mild, stiff):
        res = linsolve.solve(A, b, rtol=1e-8)
        assert res.converged and np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)


def test_auto_on_non_grid_3d_matrices_prefers_cg():
    # CG's iterations grow like a grid line (n^(1/3)); RS set-up does not pay below ~250^3 (64^3: 1.3 s vs 0.65 s)
    A, b, _ = _pressure((40, 40, 40))
    perm = np.random.default_rng(2).permutation(A.shape[0])
    P = A[perm][:, perm].tocsr()
    assert linsolve.find_grid(P) is None and P.shape[0] >= _auto.AMG_MIN_ROWS and not _auto.amg_pays(P)
    res = linsolve.solve(P, b[perm], rtol=1e-6)
    assert res.method == "cg" and res.converged


def test_auto_falls_back_when_the_grid_path_refuses():
    A = linsolve.problems.poisson((64, 64)).tolil()
    A[10, 11] = A[11, 10] = 0.5         # a positive coupling: no M-matrix, multigrid refuses
    A = A.tocsr()
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    res = linsolve.solve(A, b, rtol=1e-8)
    assert res.converged and res.method == "cg" and _grid_method(2) in res.extras["auto_fallback"]


def test_auto_on_negative_definite_grid_solves_minus_a():
    """The +Laplacian convention: (-A) x = -b is the same system, and takes the grid path."""
    A, b, _ = _pressure((64, 64))
    res = linsolve.solve(-A, -b, rtol=1e-8)
    ref = linsolve.solve(A, b, rtol=1e-8)
    assert res.method == ref.method == _grid_method(2) and res.extras["negated"] and "negated" not in ref.extras
    assert res.converged and res.iterations == ref.iterations
    assert np.linalg.norm(-b + A @ res.x) <= 1e-8 * np.linalg.norm(b)
    np.testing.assert_allclose(res.x, ref.x, rtol=0, atol=1e-12 * np.abs(ref.x).max())
    # PhiFlow's rows: a negative block beside +1 identity rows (indefinite as a whole) takes the grid path too
    mixed = (-A).tolil()
    decoupled = np.flatnonzero(np.diff(A.indptr) == 1)
    mixed[decoupled, decoupled] = 1.0
    mixed = mixed.tocsr()
    rhs = -b.copy()
    rhs[decoupled[:3]] = 2.0                                        # x = 2 there
    res = linsolve.solve(mixed, rhs, rtol=1e-8)
    assert res.extras["negated"] and res.method == _grid_method(2) and res.converged
    assert np.linalg.norm(rhs - mixed @ res.x) <= 1e-8 * np.linalg.norm(rhs)
    assert np.allclose(res.x[decoupled[:3]], 2.0)


@pytest.mark.parametrize("hint", ["cell_types", "grid_shape"])
def test_a_grid_hint_keeps_the_negative_definite_grid_path(hint):
    # A correct hint used to switch the sign detection off: plain CG, 691 iterations instead of 9.
    A, b, types = _pressure((64, 64))
    hints = {"cell_types": types} if hint == "cell_types" else {"grid_shape": (64, 64)}
    plain = linsolve.solve(-A, -b, rtol=1e-8)
    for res in (linsolve.solve(-A, -b, rtol=1e-8, **hints), linsolve.SequenceSolver(rtol=1e-8).solve(-A, -b, **hints)):
        assert res.method == _grid_method(2) and res.extras["negated"] and res.converged
        assert res.iterations <= plain.iterations + 1
        assert np.linalg.norm(-b + A @ res.x) <= 1e-8 * np.linalg.norm(b)


def test_sequence_solver_auto_falls_back_like_solve():
    # The grid path refuses a positive coupling; solve(auto) fell back to CG, SequenceSolver(auto) raised.
    A = linsolve.problems.poisson((96, 96)).tolil()
    A[100, 101] = A[101, 100] = 0.3
    A = A.tocsr()
    b = np.ones(A.shape[0])
    seq = linsolve.SequenceSolver(tuner=None, rtol=1e-8)
    first = seq.solve(A, b)
    assert first.converged and "auto_fallback" in first.extras
    assert first.method == linsolve.solve(A, b, rtol=1e-8).method
    again = seq.solve(A, 2 * b)                      # the choice is kept: no second refusal
    assert again.converged and "auto_fallback" not in again.extras
    assert np.linalg.norm(2 * b - A @ again.x) <= 1e-8 * np.linalg.norm(2 * b)


@pytest.mark.parametrize("shape", [(48, 48), (20, 20, 20)])
def test_small_grid_with_a_density_jump_takes_multigrid(shape):
    # Below the crossover plain CG is right for Poisson, not for a 1000:1 bubble (3,000 iterations at 48^2).
    inst = list(linsolve.problems.fluid_sequence(shape, 2, scene="rising_bubble", seed=0, solver="auto"))[-1]
    A, b = inst.A, inst.b
    assert A.shape[0] < _auto.GRID_MIN_CELLS[len(shape)] and _auto.diagonal_contrast(A) > 100
    res = linsolve.solve(A, b, rtol=1e-6)
    cg = linsolve.solve(A, b, rtol=1e-6, method="cg")
    assert res.method == _grid_method(len(shape)) and res.converged and res.iterations * 50 < cg.iterations
    fast = linsolve.shim.auto_cg_result(A, b, rtol=1e-6)
    assert fast.method == f"auto_cg[{_grid_method(len(shape))}]" and fast.converged
    P = linsolve.problems.poisson(shape)
    assert _auto.choose_method(P, {}) == ("cg", {})            # no jump: plain CG as before


def test_registered_rule_still_wins():
    A, b, _ = _pressure((64, 64))
    rule = lambda A, options: "ssor-cg"   # noqa: E731
    linsolve.solve.__globals__["_AUTO_RULES"].append(rule)
    try:
        assert linsolve.solve(A, b).method == "ssor-cg"
    finally:
        linsolve.solve.__globals__["_AUTO_RULES"].remove(rule)


def test_takes_option_reads_the_signature():
    from linsolve.solve import get_driver, takes_option

    assert takes_option(get_driver("gmg-pcg"), "cell_types")
    assert not takes_option(get_driver("amg-cg"), "cell_types")   # **amg_options does not count
    assert not takes_option(get_driver("cg"), "grid_shape")


# ----------------------------------------------------------------------------- SequenceSolver(method="auto")

def test_sequence_solver_defaults_to_auto_and_keeps_the_hierarchy():
    solver = linsolve.SequenceSolver(rtol=1e-8)
    assert solver.method == "auto" and solver.tuner is None
    A, b, _ = _pressure((96, 96))
    for k in range(3):
        res = solver.solve(A, b * (1 + 0.1 * k))
        assert res.converged and res.method == _grid_method(2)
    assert solver.setups == 1 and [s["hierarchy_reused"] for s in solver.stats] == [False, True, True]
    A.data *= 2.0                                    # edited in place: a new matrix, a new hierarchy
    assert solver.solve(A, b).converged and solver.setups == 2 and not solver.stats[-1]["hierarchy_reused"]


def test_sequence_solver_auto_on_a_negative_definite_grid():
    """The +Laplacian convention in a loop: the grid path on (-A, -b), its hierarchy kept, warm starts."""
    solver = linsolve.SequenceSolver(rtol=1e-8)
    A, b, _ = _pressure((96, 96))
    xs = []
    for k in range(3):
        res = solver.solve(-A, -b * (1 + 0.1 * k))
        assert res.converged and res.method == _grid_method(2) and res.extras["negated"]
        assert np.linalg.norm(b * (1 + 0.1 * k) - A @ res.x) <= 1e-8 * np.linalg.norm(b * (1 + 0.1 * k))
        xs.append(res.x)
    assert solver.setups == 1 and [s["hierarchy_reused"] for s in solver.stats] == [False, True, True]
    assert solver.stats[-1]["warm_start"]
    ref = linsolve.solve(A, b, rtol=1e-10).x
    assert np.linalg.norm(xs[0] - ref) <= 1e-6 * np.linalg.norm(ref)


def test_sequence_solver_auto_on_a_moving_obstacle_rebuilds_per_frame():
    frames = list(linsolve.problems.fluid_sequence((24, 24, 24), 3, scene="moving_sphere", seed=0))
    solver = linsolve.SequenceSolver(rtol=1e-6)
    for inst in frames:
        res = solver.solve(inst.A, inst.b, cell_types=inst.cell_types)
        assert res.converged and res.method == "learned-pcg"
    assert solver.setups == 3 and not any(s["hierarchy_reused"] for s in solver.stats)


def test_sequence_solver_auto_small_system_is_cg():
    solver = linsolve.SequenceSolver()
    A, b, _ = _pressure((20, 20))
    assert solver.solve(A, b).method == "cg" and solver.setups == 0


def test_bare_auto_calls_along_a_sequence_take_over_the_last_hierarchy():
    """``solve(A, b)`` with no hints, frame after frame: the grid multigrid is built from the last one,
    with bitwise the result of a fresh build, and the kept preconditioner can be released."""
    from linsolve.solve import forget_last_preconditioners

    forget_last_preconditioners()
    frames = list(linsolve.problems.fluid_sequence((32, 32, 32), 3, scene="moving_sphere", solver="gmg-pcg"))
    results = [linsolve.solve(inst.A, inst.b) for inst in frames]
    assert all(r.method in _auto.GRID_METHODS for r in results)
    reused = [r.extras["preconditioner"].hierarchy.reused_levels for r in results]
    assert reused[0] == 0 and min(reused[1:]) >= 1
    forget_last_preconditioners()
    fresh = linsolve.solve(frames[-1].A, frames[-1].b)
    assert fresh.extras["preconditioner"].hierarchy.reused_levels == 0
    assert np.array_equal(fresh.x, results[-1].x) and fresh.iterations == results[-1].iterations
    for inst, r in zip(frames, results):
        assert r.converged and np.linalg.norm(inst.b - inst.A @ r.x) <= 1e-6 * np.linalg.norm(inst.b)


def test_the_fallback_of_a_refused_grid_follows_amg_pays():
    # A 40^3 grid with one positive coupling (no M-matrix): the fallback was RS-AMG by size alone; plain CG
    # is faster on a 3D matrix of no jumps (amg_pays).
    A = linsolve.problems.poisson((40, 40, 40)).tolil()
    A[10, 11] = A[11, 10] = 0.5
    A = A.tocsr()
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    assert A.shape[0] >= _auto.AMG_MIN_ROWS and not _auto.amg_pays(A)
    res = linsolve.solve(A, b, rtol=1e-8)
    assert res.converged and res.method == "cg" and "auto_fallback" in res.extras
    assert _auto.fallback_method(A.shape[0]) == "amg-cg"          # without the matrix: the size rule


def test_a_free_surface_in_no_grid_order_takes_amg_in_2d():
    """A ghost-fluid matrix in an order that keeps no grid (fluid cells numbered at random): the weights
    make CG slow (a 10,000-row dam break needs ~390 iterations). Below 30,000 rows auto ran plain CG; in 2D
    with jumping coefficients AMG pays from AMG_MIN_ROWS_JUMPS_2D rows, smaller such systems keep CG."""
    frames = {n: list(linsolve.problems.fluid_sequence((n, n), 2, scene="dam_break", seed=0))[-1].A
              for n in (128, 256)}
    compact = {}
    for n, A in frames.items():
        fluid = np.random.default_rng(n).permutation(np.flatnonzero(np.diff(A.indptr) > 1))
        compact[n] = A[fluid][:, fluid].tocsr()
        assert linsolve.find_grid(compact[n]) is None and _auto.diagonal_contrast(compact[n]) > 10
        assert linsolve.structure.find_compact_grid(compact[n]) is None
    small, large = compact[128], compact[256]
    assert small.shape[0] < _auto.AMG_MIN_ROWS_JUMPS_2D <= large.shape[0] < _auto.AMG_MIN_ROWS
    assert _auto.choose_method(small, {})[0] == "cg" and _auto.choose_method(large, {})[0] == "amg-cg"
    b = np.random.default_rng(0).standard_normal(large.shape[0])
    res = linsolve.solve(large, b, rtol=1e-6)
    plain = linsolve.solve(large, b, rtol=1e-6, method="cg")
    assert res.method == "amg-cg(rs)" and res.converged and res.iterations * 20 < plain.iterations
    assert np.linalg.norm(b - large @ res.x) <= 1e-6 * np.linalg.norm(b)
    x, info = linsolve.auto_cg(large, b, rtol=1e-6)
    assert info == 0 and linsolve.shim.auto_cg_result(large, b, rtol=1e-6).method.startswith("auto_cg[amg-cg")


def test_amg_cg_takes_kind_as_precond_amg_names_it():
    """solve(method="amg-cg", kind="rs") raised a bare TypeError from inside the driver."""
    A = linsolve.problems.poisson((24, 24, 24))
    b = np.ones(A.shape[0])
    assert linsolve.solve(A, b, method="amg-cg", kind="rs").method == "amg-cg(rs)"
    assert linsolve.solve(A, b, method="amg-cg", amg_kind="rs").method == "amg-cg(rs)"
    with pytest.raises(TypeError, match="kind"):
        linsolve.solve(A, b, method="amg-cg", kind="sa", amg_kind="rs")


@pytest.mark.parametrize("pinned_value, pinned_diagonal", [(0.0, 4.0), (2.0, 4.0), (3.0, -1.0)])
def test_a_cell_pinned_by_its_row_alone_is_solved_on_the_grid_path(pinned_value, pinned_diagonal):
    """Closed-box codes pin one pressure cell by overwriting its row (a_00 x_0 = b_0) and leave its column
    in the neighbours' rows: A is no longer symmetric, the grid path refused it and plain CG took 1,373
    iterations at 256^2. The column moved to b is the same system, symmetric: multigrid takes it."""
    A = linsolve.problems.poisson((256, 256), bc="neumann").tolil()
    A[0, :] = 0
    A[0, 0] = pinned_diagonal
    A = A.tocsr()
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    b -= b.mean()
    b[0] = pinned_diagonal * pinned_value
    split = linsolve.structure.pinned_rows(A)
    assert split.rows.tolist() == [0] and abs(split.symmetric - split.symmetric.T).max() == 0
    assert split.symmetric[0, 0] == 1 and split.rhs(b)[0] == pinned_value
    alone = linsolve.solve(A, b, rtol=1e-6)
    assert alone.extras["pinned_rows"] == 1 and alone.method == "learned-pcg"
    for res in (alone, linsolve.shim.auto_cg_result(A, b, rtol=1e-6)):  # auto_cg: the pinned cell is inactive
        assert res.converged and res.iterations < 20 and "->" not in res.method, res.method
        assert np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b)
        assert res.x[0] == pinned_value
    x, info = linsolve.auto_cg(A, b, rtol=1e-6)
    assert info == 0 and x[0] == pinned_value
    other = A.tolil()
    other[5, 6] = -0.5                                    # an asymmetry that is not a pinned column
    assert linsolve.structure.pinned_rows(other.tocsr()) is None
    with pytest.raises(ValueError, match=r"not symmetric: .*method='auto' chose"):
        linsolve.solve(other.tocsr(), b, rtol=1e-6)   # CG cannot take it: said, not run to maxiter


@pytest.mark.parametrize("shape, scene", [((256, 256), "dam_break"), ((40, 40, 40), "moving_sphere")])
def test_a_fluid_only_numbering_gets_the_grid_path_through_every_entry_point(shape, scene):
    """A free surface (or a solid sphere) numbered over the fluid cells only: no grid, so auto ran plain CG
    (2D: ~390 iterations) or RS-AMG. It is now embedded on a grid and solved by the multigrid; x answers A."""
    A = list(linsolve.problems.fluid_sequence(shape, 2, scene=scene, seed=0))[-1].A
    fluid = np.flatnonzero(np.diff(A.indptr) > 1)
    compact = A[fluid][:, fluid].tocsr()
    b = np.random.default_rng(0).standard_normal(compact.shape[0])
    plain = linsolve.solve(compact, b, rtol=1e-6, method="cg")
    res = linsolve.solve(compact, b, rtol=1e-6)
    assert res.method in _auto.GRID_METHODS and res.extras["compact_grid"] and res.converged
    assert res.x.shape == b.shape and res.iterations * 10 < plain.iterations
    assert np.linalg.norm(b - compact @ res.x) <= 1e-6 * np.linalg.norm(b)
    seen = []
    fast = linsolve.shim.auto_cg_result(compact, b, rtol=1e-6, callback=lambda xk: seen.append(xk.shape))
    assert fast.method == f"auto_cg[{res.method}]" and fast.extras["compact_grid"] and fast.converged
    assert seen and set(seen) == {b.shape}
    assert np.linalg.norm(b - compact @ fast.x) <= 1e-6 * np.linalg.norm(b)
    solver = linsolve.SequenceSolver(rtol=1e-6)
    for k in range(2):  # a new b each step (the same b is met by the warm start alone: 0 iterations, at once)
        step = solver.solve(compact, b * (1 + k))
        assert step.converged and step.extras.get("compact_grid") and step.method in _auto.GRID_METHODS


@pytest.mark.parametrize("mask", ["channel", "porous"])
def test_fluid_only_layouts_the_grid_path_cannot_use_are_left_to_cg(mask):
    """A one-cell channel laid out as (1, 600) is no grid find_grid reads: solve() and auto_cg recursed
    into the embedding until RecursionError. A porous mask spanning 3.7 cells per row went to the multigrid
    at 10-20x plain CG's time. Both stay with the non-grid rule now."""
    rng = np.random.default_rng(0)
    shape = (600, 10) if mask == "channel" else (40, 40, 40)
    cells = np.zeros(shape, dtype=bool)
    if mask == "channel":
        cells[:, 5] = True
    else:
        cells = rng.random(shape) < 0.3
    A = linsolve.problems.poisson(shape)
    fluid = np.flatnonzero(cells.ravel())
    compact = A[fluid][:, fluid].tocsr()
    b = rng.standard_normal(compact.shape[0])
    for res in (linsolve.solve(compact, b, rtol=1e-6), linsolve.shim.auto_cg_result(compact, b, rtol=1e-6)):
        assert res.converged and "compact_grid" not in res.extras
        assert np.linalg.norm(b - compact @ res.x) <= 1e-6 * np.linalg.norm(b)


def test_a_negative_definite_float32_system_is_answered_like_its_positive_twin():
    """The sign flip of the +Laplacian convention cast b to float64 (signs * b), so solve() of -A, -b ran in
    double and returned float64 x while A, b ran in float32: the same system, two answers."""
    A = linsolve.problems.poisson((64, 64)).astype(np.float32)
    b = np.random.default_rng(0).standard_normal(A.shape[0]).astype(np.float32)
    plus = linsolve.solve(A, b, rtol=1e-4)
    minus = linsolve.solve(-A, -b, rtol=1e-4)
    assert minus.extras.get("negated") and minus.x.dtype == plus.x.dtype == np.float32
    assert minus.converged == plus.converged and minus.iterations == plus.iterations
    np.testing.assert_allclose(minus.x, plus.x, rtol=0, atol=1e-6 * np.abs(plus.x).max())


def test_coefficients_jumping_by_orders_of_magnitude_take_amg_on_small_non_grid_matrices():
    """P1 elements with a jumping conductivity (7 entries per row, so taken for 3D) went to plain CG below
    30,000 rows: 43,000+ iterations at 5,000 rows. A diagonal ratio above AMG_HIGH_CONTRAST takes AMG from
    AMG_MIN_ROWS_HIGH_CONTRAST rows on."""
    n = 60
    coeff = np.ones((n, n))
    coeff[:, n // 2:] = 1e4
    A = linsolve.problems.poisson((n, n), coeff=coeff)
    p = np.random.default_rng(0).permutation(n * n)          # no grid order left
    P = A[p][:, p].tocsr()
    assert linsolve.find_grid(P) is None and linsolve.structure.find_compact_grid(P) is None
    assert _auto.diagonal_contrast(P) > _auto.AMG_HIGH_CONTRAST and P.shape[0] < _auto.AMG_MIN_ROWS_JUMPS_2D
    b = np.random.default_rng(1).standard_normal(n * n)
    res = linsolve.solve(P, b, rtol=1e-6)
    plain = linsolve.solve(P, b, rtol=1e-6, method="cg")
    assert res.method == "amg-cg(rs)" and res.converged and res.iterations * 100 < plain.iterations
    assert linsolve.shim.auto_cg_result(P, b, rtol=1e-6).method == "auto_cg[amg-cg(rs)]"


def test_grid_rule_weighs_conditioning_tolerance_and_reuse():
    from linsolve._auto import choose_method, grid_cg_pays

    L = linsolve.problems.poisson((256, 256))
    heat = (sp.identity(L.shape[0]) + 8.0 * L).tocsr()          # Gershgorin bound 65
    assert choose_method(heat, {}, rtol=1e-5)[0] == "cg"
    assert choose_method(heat, {}, rtol=1e-5, kept=True)[0] in ("learned-pcg", "gmg-pcg")
    assert choose_method(heat, {}, rtol=1e-14)[0] in ("learned-pcg", "gmg-pcg")  # tighter: CG pays less
    assert choose_method(L, {}, rtol=1e-2)[0] in ("learned-pcg", "gmg-pcg")     # no finite bound
    # a grid of more cells needs a smaller bound for CG to pay
    assert grid_cg_pays(10_000, 200.0, 1e-6) and not grid_cg_pays(2_000_000, 200.0, 1e-6)


def test_solve_weighs_an_absolute_tolerance_relative_to_b():
    L = linsolve.problems.poisson((128, 128))
    heat = (sp.identity(L.shape[0]) + 0.5 * L).tocsr()          # bound 5
    b = np.random.default_rng(0).standard_normal(heat.shape[0])
    res = linsolve.solve(heat, b, rtol=0.0, atol=1e-8 * np.linalg.norm(b))
    assert res.method == "cg" and res.converged
    assert np.linalg.norm(b - heat @ res.x) <= 1e-8 * np.linalg.norm(b)


def test_sequence_solver_weighs_an_absolute_tolerance_relative_to_b():
    L = linsolve.problems.poisson((128, 128))
    heat = (sp.identity(L.shape[0]) + 0.5 * L).tocsr()          # bound 5: CG within a kept multigrid's cost
    b = np.random.default_rng(0).standard_normal(heat.shape[0])
    solver = linsolve.SequenceSolver(rtol=0.0, atol=1e-8 * np.linalg.norm(b))
    res = solver.solve(heat, b)
    assert res.method == "cg" and res.converged
    assert np.linalg.norm(b - heat @ res.x) <= 1e-8 * np.linalg.norm(b)


def test_a_matrix_well_conditioned_only_once_scaled_takes_jacobi_cg():
    from linsolve._auto import choose_method

    volumes = np.geomspace(1.0, 1e3, 32 ** 3)  # a transient step over cells of very different volumes
    A = (sp.diags(volumes / 1e-3) + linsolve.problems.poisson((32, 32, 32))).tocsr()
    b = np.random.default_rng(5).standard_normal(A.shape[0])
    assert choose_method(A, {})[0] == "jacobi-cg"
    res = linsolve.solve(A, b, method="auto", rtol=1e-8)
    plain = linsolve.solve(A, b, method="cg", rtol=1e-8)
    assert res.method == "jacobi-cg" and res.converged and res.iterations <= 10 < plain.iterations
    assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
    # a uniform diagonal: plain CG sees the same conditioning, no preconditioner is worth it
    assert choose_method((1e3 * sp.identity(32 ** 3) + linsolve.problems.poisson((32, 32, 32))).tocsr(), {})[0] \
        != "jacobi-cg"
