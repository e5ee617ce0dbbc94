"""SequenceSolver: warm starts, AMG reuse, online tuning, statistics, save/load."""
import json
import time

import numpy as np
import pytest
import scipy.sparse as sp

import linsolve
from linsolve import SequenceSolver
from linsolve.problems import FLUID, SOLID, fluid_sequence, poisson
from linsolve.sequence import matrix_fingerprint

try:  # the tuners live in linsolve.tuning (another module); skip tuner tests until it exists
    from linsolve.tuning import make_tuner  # noqa: F401
    HAVE_TUNING = True
except ImportError:  # pragma: no cover
    HAVE_TUNING = False

needs_tuning = pytest.mark.skipif(not HAVE_TUNING, reason="linsolve.tuning.make_tuner not available")


def _true_rel(A, b, x):
    return np.linalg.norm(b - A @ x) / np.linalg.norm(b)


def test_amg_hierarchy_built_once_while_a_is_unchanged():
    A = poisson((16, 16, 16))
    rng = np.random.default_rng(0)
    solver = SequenceSolver(method="amg-cg", tuner=None, rtol=1e-8)
    for _ in range(4):
        b = rng.standard_normal(A.shape[0])
        res = solver.solve(A, b)
        assert res.converged and _true_rel(A, b, res.x) <= 1e-8
    assert solver.amg_setups == 1
    assert [s["hierarchy_reused"] for s in solver.stats] == [False, True, True, True]
    assert [s["amg_setup"] for s in solver.stats] == [True, False, False, False]
    assert all(s["method"].startswith("amg-cg") for s in solver.stats)


def test_multigrid_takes_over_the_unchanged_hierarchy_when_a_obstacle_moves():
    """A moving obstacle: every frame a new matrix, each multigrid built from the last one's hierarchy,
    bitwise the preconditioner built afresh (so the same iterations), and every solve truly converged."""
    frames = list(fluid_sequence((20, 20, 20), 4, scene="moving_sphere", solver="gmg-pcg"))
    solver = SequenceSolver(method="gmg-pcg", tuner=None, rtol=1e-8, warm_start=False)
    for inst in frames:
        res = solver.solve(inst.A, inst.b, grid_shape=(20, 20, 20))
        fresh = linsolve.solve(inst.A, inst.b, method="gmg-pcg", rtol=1e-8, grid_shape=(20, 20, 20))
        assert res.converged and _true_rel(inst.A, inst.b, res.x) <= 1e-8
        assert res.iterations == fresh.iterations and np.array_equal(res.x, fresh.x)
    assert [s["hierarchy_updated"] for s in solver.stats] == [False, True, True, True]
    assert solver.setups == 4


def test_amg_hierarchy_rebuilt_when_values_change_even_in_place():
    A = poisson((12, 12, 12))
    b = np.ones(A.shape[0])
    solver = SequenceSolver(method="amg-cg", tuner=None, rtol=1e-8)
    solver.solve(A, b)
    solver.solve(A.copy(), b)                      # equal content, other object: reuse
    assert solver.amg_setups == 1
    A.data[A.indices == np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))] *= 1.5   # edit in place
    res = solver.solve(A, b)
    assert solver.amg_setups == 2 and not solver.stats[-1]["hierarchy_reused"]
    assert res.converged and _true_rel(A, b, res.x) <= 1e-8
    solver.solve(2.0 * A, b)
    assert solver.amg_setups == 3


def test_matrix_fingerprint_sees_values_and_pattern():
    A = poisson((6, 6))
    B = A.copy()
    B.data[3] = np.nextafter(B.data[3], 10.0)
    assert matrix_fingerprint(A) == matrix_fingerprint(A.copy())
    assert matrix_fingerprint(A) != matrix_fingerprint(B)
    assert matrix_fingerprint(A) != matrix_fingerprint(poisson((6, 6), bc="neumann"))


def test_warm_start_cuts_iterations_and_is_skipped_when_worse():
    A = poisson((24, 24))
    rng = np.random.default_rng(1)
    b = rng.standard_normal(A.shape[0])
    warm = SequenceSolver(method="cg", tuner=None, rtol=1e-8)
    cold = SequenceSolver(method="cg", tuner=None, rtol=1e-8, warm_start=False)
    for solver in (warm, cold):
        solver.solve(A, b)
        solver.solve(A, b + 1e-4 * rng.standard_normal(A.shape[0]))
    assert warm.stats[1]["warm_start"] and not cold.stats[1]["warm_start"]
    assert warm.stats[1]["iterations"] < cold.stats[1]["iterations"]
    warm.solve(A, -b)                              # previous x is worse than zero here
    assert not warm.stats[-1]["warm_start"]


def test_stats_fields_and_result_extras():
    A = poisson((10, 10))
    solver = SequenceSolver(method="cg", tuner=None, rtol=1e-9)
    res = solver.solve(A, np.ones(100))
    entry = solver.stats[0]
    assert entry["iterations"] == res.iterations and entry["converged"]
    assert entry["seconds"] >= entry["solve_seconds"] > 0
    assert entry["param"] is None and entry["method"] == "cg"
    assert res.extras["sequence"] == entry
    assert solver.summary()["calls"] == 1


def test_cell_types_checks_b_and_bad_input():
    types = np.full((8, 8), FLUID)
    types[3:5, 3:5] = SOLID
    A = linsolve.problems.pressure_matrix(types)
    b = np.where(types.ravel() == FLUID, 1.0, 0.0)
    solver = SequenceSolver(method="cg", tuner=None)
    assert solver.solve(A, b, cell_types=types).converged
    b_bad = b.copy()
    b_bad[3 * 8 + 3] = 1.0
    with pytest.raises(ValueError, match="does not match the fluid cells"):
        solver.solve(A, b_bad, cell_types=types)
    with pytest.raises(ValueError, match="cell_types has 16 cells"):
        solver.solve(A, b, cell_types=np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="length 10"):
        solver.solve(A, np.ones(10))
    with pytest.raises(ValueError, match="square"):
        solver.solve(np.ones((3, 4)), np.ones(3))
    with pytest.raises(TypeError, match="x0"):
        solver.solve(A, b, x0=b)
    with pytest.raises(ValueError, match="unknown method"):
        SequenceSolver(method="magic")
    with pytest.raises(ValueError, match="rtol"):
        SequenceSolver(method="cg", tuner=None, rtol=-1.0)


def test_fallback_finishes_a_failed_solve():
    A = poisson((20, 20))
    b = np.ones(A.shape[0])
    solver = SequenceSolver(method="cg", tuner=None, rtol=1e-8, maxiter=3, fallback="amg-cg")
    res = solver.solve(A, b)
    assert "->" in res.method and solver.stats[0]["method"] == res.method
    assert res.converged == (_true_rel(A, b, res.x) <= 1e-8)
    nofb = SequenceSolver(method="cg", tuner=None, rtol=1e-8, maxiter=3, fallback=None)
    res = nofb.solve(A, b)
    assert not res.converged and res.info == 3 and nofb.stats[0]["method"] == "cg"


def test_nullspace_option_is_passed_through():
    types = np.full((8, 8), SOLID)
    types[1:-1, 1:-1] = FLUID
    A = linsolve.problems.pressure_matrix(types)
    N = linsolve.problems.fluid.pressure_nullspace(types)
    b = np.where(types.ravel() == FLUID, np.arange(64.0), 0.0)
    b -= N @ (N.T @ b)
    solver = SequenceSolver(method="amg-cg", tuner=None, rtol=1e-9)
    for _ in range(2):
        res = solver.solve(A, b, cell_types=types, nullspace=N)
        assert res.converged and _true_rel(A, b, res.x) <= 1e-9
    assert solver.amg_setups == 1


@needs_tuning
@pytest.mark.parametrize("method", ["ssor-cg", "sor"])
def test_omega_is_tuned_for_sor_methods(method):
    A = poisson((12, 12))
    rng = np.random.default_rng(2)
    solver = SequenceSolver(method=method, tuner="tsallis", rtol=1e-6, warm_start=False, seed=3)
    arms = set(np.round(linsolve.tuning.default_omega_arms(), 12))
    for _ in range(6):
        b = rng.standard_normal(A.shape[0])
        res = solver.solve(A, b)
        assert res.converged and _true_rel(A, b, res.x) <= 1e-6
    chosen = [s["param"] for s in solver.stats]
    assert all(s["param_name"] == "omega" for s in solver.stats)
    assert all(round(c, 12) in arms for c in chosen)
    assert solver.tuner.t == 6


@needs_tuning
def test_contextual_and_spectral_tuners():
    A = poisson((12, 12))
    b = np.ones(A.shape[0])
    solver = SequenceSolver(method="ssor-cg", tuner="chebcb", rtol=1e-6)
    for c in (0.0, 0.5, 1.0):
        assert solver.solve(A, b, context=c).converged
    assert [s["context"] for s in solver.stats] == [0.0, 0.5, 1.0]
    with pytest.warns(UserWarning, match="without context"):
        solver.solve(A, b)
    with pytest.raises(ValueError, match="context"):
        solver.solve(A, b, context=5.0)
    spectral = SequenceSolver(method="ssor-cg", tuner="spectral", rtol=1e-6)
    spectral.solve(A, b)
    beta = np.cos(np.pi / 13)
    omega_star = 1 + (beta / (1 + np.sqrt(1 - beta ** 2))) ** 2
    assert abs(spectral.stats[0]["param"] - omega_star) < 1e-2


@needs_tuning
def test_param_rules_for_methods_without_a_default_parameter():
    solver = SequenceSolver(method="amg-cg")          # default chebcb has nothing to tune: off
    assert solver.tuner is None and "no tuning" in solver.tuner_note
    with pytest.raises(ValueError, match="param"):
        SequenceSolver(method="amg-cg", tuner="tsallis")
    with pytest.raises(ValueError, match="arms"):
        SequenceSolver(method="amg-cg", tuner="tsallis", param="theta")
    with pytest.raises(ValueError, match="tuned"):
        SequenceSolver(method="ssor-cg", tuner="tsallis", omega=1.5)


@needs_tuning
def test_save_load_continues_exactly_and_rejects_bad_files(tmp_path):
    A = poisson((10, 10))
    rng = np.random.default_rng(4)
    bs = [rng.standard_normal(100) for _ in range(8)]
    ref = SequenceSolver(method="ssor-cg", tuner="tsallis", rtol=1e-6, seed=1)
    first = SequenceSolver(method="ssor-cg", tuner="tsallis", rtol=1e-6, seed=1)
    for b in bs[:4]:
        ref.solve(A, b)
        first.solve(A, b)
    path = tmp_path / "state.json"
    first.save(path)
    restarted = SequenceSolver(method="ssor-cg", tuner="tsallis", rtol=1e-6, seed=1).load(path)
    assert restarted.stats == first.stats
    np.testing.assert_array_equal(restarted.last_x, first.last_x)
    for b in bs[4:]:
        ref.solve(A, b)
        restarted.solve(A, b)
    assert [s["param"] for s in restarted.stats] == [s["param"] for s in ref.stats]
    assert [s["iterations"] for s in restarted.stats] == [s["iterations"] for s in ref.stats]

    fresh = SequenceSolver(method="ssor-cg", tuner="tsallis", rtol=1e-6, seed=1)
    before = json.dumps(fresh.tuner.state_dict())
    text = path.read_text()
    bad_files = {
        "truncated.json": text[: len(text) // 2],
        "foreign.json": json.dumps({"hello": "world"}),
        "list.json": "[1, 2, 3]",
        "binary.json": "\x00\xff garbage",
        "bad_stats.json": text.replace('"iterations": ', '"iterations": "many", "x": ', 1),
        "bad_tuner.json": json.dumps({**json.loads(text), "tuner_state": {"kind": "TsallisINF"}}),
        "bad_x.json": json.dumps({**json.loads(text), "last_x": ["nan"]}),
    }
    for name, content in bad_files.items():
        bad = tmp_path / name
        bad.write_text(content)
        with pytest.raises(ValueError):
            fresh.load(bad)
        assert fresh.stats == [] and fresh.last_x is None, name
        assert json.dumps(fresh.tuner.state_dict()) == before, name
    with pytest.raises(ValueError, match="saved for"):
        SequenceSolver(method="sor", tuner="tsallis").load(path)
    with pytest.raises(ValueError, match="cannot read"):
        fresh.load(tmp_path / "missing.json")


def test_save_load_without_tuner(tmp_path):
    solver = SequenceSolver(method="amg-cg", tuner=None, rtol=1e-8)
    A = poisson((8, 8, 8))
    solver.solve(A, np.ones(512))
    solver.save(tmp_path / "s.json", include_x=False)
    other = SequenceSolver(method="amg-cg", tuner=None).load(tmp_path / "s.json")
    assert other.amg_setups == 1 and other.last_x is None and len(other.stats) == 1
    other.solve(A, np.ones(512))                   # hierarchies are not saved: rebuilt once
    assert other.amg_setups == 2


def test_drives_the_fluid_simulation():
    solver = SequenceSolver(method="amg-cg", tuner=None, rtol=1e-10)
    frames = list(fluid_sequence((16, 16, 16), 4, scene="smoke_sphere", solver=solver))
    assert solver.amg_setups == 1 and len(solver.stats) == 4
    for inst in frames:
        assert inst.extras["divergence_after"] <= 1e-6 * inst.extras["divergence_before"]
    moving = SequenceSolver(method="amg-cg", tuner=None, rtol=1e-10)
    list(fluid_sequence((16, 16, 16), 4, scene="moving_sphere", solver=moving))
    assert moving.amg_setups == 4                  # A changes every frame: never reused


@pytest.mark.slow
def test_amg_reuse_beats_rebuilding_on_smoke_sphere_48():
    """Acceptance: 50 frames of smoke_sphere 48^3, amg-cg; setup once; faster than rebuilding."""
    frames = [(f.A, f.b, f.cell_types) for f in
              fluid_sequence((48, 48, 48), 50, scene="smoke_sphere", seed=0,
                             solver=SequenceSolver(method="amg-cg", tuner=None, rtol=1e-8))]
    reuse = SequenceSolver(method="amg-cg", tuner=None, rtol=1e-8)
    rebuild = SequenceSolver(method="amg-cg", tuner=None, rtol=1e-8, reuse_hierarchy=False)
    t_reuse = t_rebuild = 0.0
    for A, b, types in frames:             # interleaved, so load changes hit both alike
        t0 = time.perf_counter()
        r1 = reuse.solve(A, b, cell_types=types)
        t1 = time.perf_counter()
        r2 = rebuild.solve(A, b, cell_types=types)
        t2 = time.perf_counter()
        t_reuse += t1 - t0
        t_rebuild += t2 - t1
        assert r1.converged and r2.converged
    print(f"\n48^3 smoke_sphere, 50 frames, amg-cg rtol 1e-8: reuse {t_reuse:.2f} s "
          f"({reuse.amg_setups} setups, {sum(s['iterations'] for s in reuse.stats)} its), "
          f"rebuild {t_rebuild:.2f} s ({rebuild.amg_setups} setups, "
          f"{sum(s['iterations'] for s in rebuild.stats)} its), ratio {t_rebuild / t_reuse:.2f}")
    assert reuse.amg_setups == 1 and rebuild.amg_setups == 50
    assert t_reuse < t_rebuild


def test_save_load_keeps_the_setup_count_and_warnings_name_the_caller(tmp_path):
    import warnings

    A = linsolve.problems.poisson((64, 64))
    solver = linsolve.SequenceSolver()
    solver.solve(A, np.ones(A.shape[0]))
    solver.solve(A, 2 * np.ones(A.shape[0]))
    path = tmp_path / "state.json"
    solver.save(path)
    assert solver.setups == 1 and linsolve.SequenceSolver().load(path).setups == 1
    tuned = linsolve.SequenceSolver(method="ssor-cg", tuner="chebcb", context_range=(0, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuned.solve(linsolve.problems.poisson((16, 16)), np.ones(256))
    assert [w.filename for w in caught if "without context" in str(w.message)] == [__file__]


def test_settings_it_cannot_use_are_refused_at_construction():
    with pytest.raises(ValueError, match="'maxiter' is managed"):
        linsolve.SequenceSolver(method="cg", tuner="tsallis", param="maxiter", arms=[10, 20])
    with pytest.raises(TypeError, match="unexpected options: \\['foo'\\]"):
        linsolve.SequenceSolver(method="cg", foo=1)
    with pytest.raises(ValueError, match="'M' is managed"):
        linsolve.SequenceSolver(method="ssor-cg", tuner=None, M=None)


def test_inconsistent_pocket_keeps_the_better_of_the_two_attempts():
    # b on a sealed pocket is inconsistent: neither attempt converges; the AMG fallback drifted along the
    # null space to |x| ~ 1e19 and was returned.
    cells = np.ones((16, 16), int)
    cells[4:12, 4:12] = 0
    A = linsolve.problems.pressure_matrix(cells)
    b = np.zeros(256)
    b[cells.ravel() == 0] = 1.0
    res = linsolve.SequenceSolver(tuner=None).solve(A, b)
    assert not res.converged
    assert np.linalg.norm(b - A @ res.x) <= np.linalg.norm(b) * 1.0000001


def test_a_float32_system_at_its_precision_floor_is_not_handed_to_the_fallback():
    """float32 cannot meet rtol 1e-6 on a 256^2 dam break: the multigrid says so (the attainable accuracy),
    and the AMG fallback in float32 only spent its set-up reaching the same floor (method 'learned-pcg->
    amg-cg(sa)', still not converged). solve() and SequenceSolver now answer alike."""
    inst = list(linsolve.problems.fluid_sequence((256, 256), 2, scene="dam_break", seed=0))[-1]
    A32, b32 = inst.A.astype(np.float32), inst.b.astype(np.float32)
    alone = linsolve.solve(A32, b32, rtol=1e-6)
    res = linsolve.SequenceSolver(rtol=1e-6).solve(A32, b32)
    assert not alone.converged and "attainable accuracy" in alone.message
    assert not res.converged and "->" not in res.method and res.method == alone.method
    assert res.info == alone.info > 0


def test_a_cell_pinned_by_its_row_alone_is_solved_like_solve_does():
    """SequenceSolver went from the refused grid path straight to plain CG on the unsymmetric A (500-760
    iterations, once cg->amg-cg info -1 with the pinned value wrong); it now takes solve()'s split."""
    N = 64
    A = poisson((N, N), bc="neumann").tolil()
    cells = [0, N - 1, N * N - 1]
    for c, d in zip(cells, [1.0, 2.5, -1.0]):   # any sign or scale of the pinned diagonal
        A[c, :] = 0
        A[c, c] = d
    A = A.tocsr()
    b = np.random.default_rng(0).standard_normal(N * N)
    b -= b.mean()
    for c, v in zip(cells, [1.0, -2.0, 3.0]):
        b[c] = A[c, c] * v
    solver = SequenceSolver(rtol=1e-6)
    for k in range(2):  # a new b each call (the same b is met by the warm start alone, at once)
        rhs = b * (1 + k)
        res = solver.solve(A, rhs)
        assert res.converged and res.iterations < 20 and "cg" not in res.method.replace("pcg", "")
        assert np.linalg.norm(rhs - A @ res.x) <= 1e-6 * np.linalg.norm(rhs)
        assert res.x[cells].tolist() == [v * (1 + k) for v in (1.0, -2.0, 3.0)]


def test_auto_sequence_solves_a_lagrange_bordered_matrix_on_its_definite_block():
    # PhiFlow's closed-box pressure matrix, bordered by a row and column of ones (a saddle point)
    n = 96
    inner = -linsolve.problems.poisson((n, n), bc="neumann")
    ones = sp.csr_matrix(np.ones((n * n, 1)))
    B = sp.bmat([[inner, ones], [ones.T, None]]).tocsr()
    rng = np.random.default_rng(5)
    linsolve.shim.clear_cache()  # auto_cg keeps plans per matrix content across solvers
    solver = linsolve.SequenceSolver(tuner=None, rtol=1e-8)
    for _ in range(2):
        b = np.append(rng.standard_normal(n * n), 0.0)
        b[:-1] -= b[:-1].mean()
        res = solver.solve(B, b)
        assert res.converged and np.linalg.norm(b - B @ res.x) <= 1e-8 * np.linalg.norm(b)
        assert res.iterations <= 12
    assert solver.setups == 1 and solver.stats[-1]["hierarchy_reused"]  # the plan of the matrix is kept


def test_auto_sequence_keeps_the_multigrid_of_a_fluid_cells_only_numbering():
    # most fluid codes number their fluid cells only: the grid is found once and the hierarchy kept per matrix
    cells = np.full((128, 128), FLUID)
    cells[40:70, 50:80] = SOLID
    full = linsolve.problems.pressure_matrix(cells)
    fluid = np.flatnonzero(cells.ravel() == FLUID)
    A = full[fluid][:, fluid].tocsr()
    rng = np.random.default_rng(2)
    linsolve.shim.clear_cache()  # auto_cg keeps plans per matrix content across solvers
    solver = SequenceSolver(tuner=None, rtol=1e-6)
    for _ in range(3):
        b = rng.standard_normal(A.shape[0])
        res = solver.solve(A.copy(), b)
        assert res.converged and np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b) and res.iterations <= 10
    assert solver.setups == 1 and [s["hierarchy_reused"] for s in solver.stats] == [False, True, True]


def _assert_one_result_over_both_attempts(solver, res, calls, r0):
    """A fallback's result reads as solve()'s do: iterations = callback calls = the record's, the residual
    history from the initial residual on (one entry per iteration), the method naming both attempts."""
    entry = solver.stats[-1]
    assert "->" in res.method and entry["method"] == res.method
    assert res.iterations == len(calls) == entry["iterations"]
    assert res.iterations > res.extras["first_attempt"]["iterations"] > 0
    assert res.residual_norms[0] == pytest.approx(r0, rel=1e-12)
    assert len(res.residual_norms) == res.iterations + 1
    assert res.info == (0 if res.converged else res.iterations) and entry["info"] == res.info
    assert entry["solve_seconds"] == res.time_s and entry["setup_seconds"] >= res.setup_time_s
    assert entry["seconds"] >= res.time_s >= res.setup_time_s >= 0 and res.time_s > 0


def test_a_fallback_result_counts_both_attempts_like_solve():
    """Tester's reproducer: 'ssor-cg->amg-cg(sa)' said iterations=2 (the fallback's alone) with the record
    at 22, 20 callback calls (none in the fallback) and residual_norms starting at 8.5e-4, where the
    fallback began, instead of ||b|| = 32."""
    A, b = poisson((32, 32)), np.ones(1024)
    calls = []
    solver = SequenceSolver(method="ssor-cg", maxiter=20, tuner=None)
    res = solver.solve(A, b, callback=lambda xk: calls.append(1))
    assert res.method == "ssor-cg->amg-cg(sa)" and res.converged
    _assert_one_result_over_both_attempts(solver, res, calls, np.linalg.norm(b))
    assert res.extras["first_attempt"]["iterations"] == 20
    # a warm-started call that falls back again: the history starts at ||b - A x0||
    x0 = solver.last_x
    b2 = b + 1e-3 * np.random.default_rng(0).standard_normal(1024)
    solver.rtol = 1e-10
    calls.clear()
    res = solver.solve(A, b2, callback=lambda xk: calls.append(1))
    assert solver.stats[-1]["warm_start"]
    _assert_one_result_over_both_attempts(solver, res, calls, np.linalg.norm(b2 - A @ x0))


@pytest.mark.parametrize("method, fallback, maxiter", [
    ("amg-cg", "cg", 1), ("cg", "amg-cg", 3), ("cg", "ssor-cg", 2), ("sor", "amg-cg", 5)])
def test_every_fallback_counts_both_attempts(method, fallback, maxiter):
    A, b = poisson((32, 32)), np.ones(1024)
    calls = []
    solver = SequenceSolver(method=method, tuner=None, rtol=1e-10, maxiter=maxiter, fallback=fallback)
    res = solver.solve(A, b, callback=lambda xk: calls.append(1))
    assert res.method.startswith(method) and res.method.split("->")[1].startswith(fallback)
    assert not res.converged and res.info > 0      # neither finishes: info is the total too
    _assert_one_result_over_both_attempts(solver, res, calls, np.linalg.norm(b))


def test_the_callback_runs_when_the_grid_path_refuses_the_matrix():
    """auto's refused grid method handed the matrix on without the caller's callback: 6 iterations, 0 calls."""
    N = 64
    A = poisson((N, N), bc="neumann").tolil()
    for c in (0, N - 1, N * N - 1):
        A[c, :] = 0
        A[c, c] = 1.0
    A = A.tocsr()
    b = np.random.default_rng(0).standard_normal(N * N)
    b -= b.mean()
    calls = []
    solver = SequenceSolver(rtol=1e-6)
    res = solver.solve(A, b, callback=lambda xk: calls.append(1))
    assert res.converged and "auto_fallback" in res.extras
    assert res.iterations == len(calls) == solver.stats[-1]["iterations"] > 0


def test_the_callback_runs_with_the_rented_factor(monkeypatch):
    """The sparse factor of a kept matrix solved without the caller's callback (1 iteration, 0 calls)."""
    from linsolve._auto import FactorRental

    # the factor pays at the first kept solve: built at the second call, used from the third
    monkeypatch.setattr(FactorRental, "kept", lambda self, seconds, matrix: self.refused is None
                        and self.factor is None)
    A = poisson((64, 64))
    rng = np.random.default_rng(0)
    solver = SequenceSolver(tuner=None, rtol=1e-8, warm_start=False)
    methods = []
    for _ in range(4):
        calls = []
        res = solver.solve(A, rng.standard_normal(A.shape[0]), callback=lambda xk: calls.append(1))
        assert res.converged and res.iterations == len(calls) == solver.stats[-1]["iterations"]
        methods.append(res.method)
    assert methods[-1] == "factor-cg"


@pytest.mark.parametrize("method", ["auto", "ssor-cg"])
def test_an_unknown_tuner_is_named_whatever_the_method(method):
    """With the default method='auto' it was reported as "method 'auto' has no default tuned parameter"."""
    with pytest.raises(ValueError, match="unknown tuner 'genius'"):
        linsolve.SequenceSolver(method=method, tuner="genius")


def test_a_new_callback_each_call_keeps_the_preconditioner():
    """The reuse key held repr(callback): a fresh callback per call rebuilt the AMG hierarchy every call."""
    A = linsolve.problems.poisson((24, 24))
    solver = linsolve.SequenceSolver(method="amg-cg", tuner=None)
    for _ in range(3):
        calls = []
        res = solver.solve(A, np.ones(A.shape[0]), callback=lambda xk, calls=calls: calls.append(1))
        assert res.converged and len(calls) == res.iterations
    assert solver.amg_setups == 1


def test_a_call_that_solves_nothing_gives_the_tuner_no_feedback():
    """b = 0 (a simulation at rest) was fed back as cost 0 for whatever omega was drawn: a win never earned."""
    solver = SequenceSolver(method="ssor-cg", tuner="tsallis", rtol=1e-8)
    A = poisson((16, 16))
    solver.solve(A, np.zeros(256))
    assert solver.tuner.t == 0 and solver.stats[-1]["cost"] is None
    solver.solve(A, np.ones(256))
    assert solver.tuner.t == 1 and solver.stats[-1]["cost"] > 0


def test_omega_arms_outside_the_sor_range_are_refused_at_construction():
    with pytest.raises(ValueError, match="omega"):
        SequenceSolver(method="sor", tuner="tsallis", arms=[1.2, 2.5])
