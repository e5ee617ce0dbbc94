"""The scenes of fluid_sequence built on pressure_coefficients: dam_break, rising_bubble, moving_sphere_graded."""
import numpy as np
import pytest

from linsolve.problems import AIR, FLUID, SOLID, fluid_sequence, pressure_coefficients, pressure_matrix
from linsolve.problems.fluid import SCENES
from linsolve.problems.pressure import check_rhs_matches_cells, divergence
from linsolve.problems.scenes import redistance

NEW_SCENES = ("dam_break", "rising_bubble", "moving_sphere_graded")
SIZES = {2: (24, 20), 3: (12, 12, 12)}
FRAMES = {2: 6, 3: 4}


def _same(A, B):
    return A.shape == B.shape and (A != B).nnz == 0


@pytest.fixture(scope="module")
def runs():
    """Each new scene in 2D and 3D at small sizes, generated once for the module."""
    return {(scene, ndim): list(fluid_sequence(SIZES[ndim], FRAMES[ndim], scene=scene, seed=1))
            for scene in NEW_SCENES for ndim in (2, 3)}


def test_new_scenes_are_listed_with_descriptions():
    for scene in NEW_SCENES:
        assert scene in SCENES and len(SCENES[scene]) > 40


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("scene", NEW_SCENES)
def test_a_changes_every_frame_and_is_rebuilt_from_the_extras(runs, scene, ndim):
    seq = runs[scene, ndim]
    shape = SIZES[ndim]
    for k, inst in enumerate(seq):
        e = inst.extras
        assert inst.index == k and inst.grid_shape == shape and inst.A.shape == (int(np.prod(shape)),) * 2
        assert _same(inst.A, pressure_matrix(inst.cell_types, **e["matrix_options"]))
        # The named extras are the fields that built A (phi before any redistancing of this frame).
        rebuilt = {"h": e["spacing"]}
        if scene == "dam_break":
            rebuilt.update(phi=e["phi"], face_fractions=e["face_fractions"])
        if scene == "rising_bubble":
            rebuilt.update(density=e["density"])
        assert _same(inst.A, pressure_matrix(inst.cell_types, **rebuilt))
        check_rhs_matches_cells(inst.b, inst.cell_types)
        assert np.any(inst.b != 0)
        assert e["divergence_before"] > 0
        assert e["divergence_after"] <= 1e-6 * e["divergence_before"], (k, e["divergence_after"])
        div = divergence(e["velocity"], e["spacing"], face_fractions=e.get("face_fractions"))
        assert np.abs(div[inst.cell_types == FLUID]).max() == pytest.approx(e["divergence_after"])
        assert e["solve"]["converged"] and e["solve"]["method"]          # the default solver="auto"
        assert 0.0 <= inst.context <= 1.0
        if k == 0:
            assert inst.x_prev is None
        else:
            np.testing.assert_array_equal(inst.x_prev, seq[k - 1].extras["pressure"])
            assert not _same(seq[k - 1].A, inst.A), f"A did not change at frame {k}"
        # Symmetric, SPD-compatible structure: at most 2 ndim + 1 entries per row.
        assert abs(inst.A - inst.A.T).max() == 0.0
        assert inst.A.getnnz(axis=1).max() <= 2 * ndim + 1


@pytest.mark.parametrize("ndim", [2, 3])
def test_dam_break_uses_ghost_fluid_and_cut_cells(runs, ndim):
    inst = runs["dam_break", ndim][-1]
    e = inst.extras
    options = e["matrix_options"]
    assert set(options) == {"h", "phi", "face_fractions"}
    fractions = options["face_fractions"]
    partial = sum(int(((f > 0) & (f < 1)).sum()) for f in fractions)
    assert partial > 0                                         # the bump is a cut-cell solid
    types = inst.cell_types
    assert np.any(types == AIR) and np.any(types == SOLID) and np.any(types == FLUID)
    np.testing.assert_array_equal(types[(types != SOLID)], np.where(e["phi"] < 0, FLUID, AIR)[types != SOLID])
    # The ghost-fluid weights (theta < 1) make A differ from the plain matrix of the same cells ...
    without_phi = pressure_matrix(types, face_fractions=fractions)
    assert not _same(inst.A, without_phi)
    # ... and only on the diagonal of fluid cells next to air.
    diff = (inst.A - without_phi).tocoo()
    diff.eliminate_zeros()
    assert np.all(diff.row == diff.col) and np.all(diff.data > 0)
    # Without the fractions the bump would be a voxel staircase.
    assert not _same(inst.A, pressure_matrix(types, phi=e["phi"]))


@pytest.mark.parametrize("ndim", [2, 3])
def test_rising_bubble_has_density_ratio_1000_and_is_spd(runs, ndim):
    inst = runs["rising_bubble", ndim][-1]
    rho = inst.extras["matrix_options"]["density"]
    assert rho.min() == pytest.approx(1.0) and rho.max() == pytest.approx(1000.0)
    assert inst.extras["nullspace"] is None
    assert np.all(inst.cell_types[inst.cell_types != SOLID] == FLUID)
    off = -inst.A.tocoo().data[inst.A.tocoo().row != inst.A.tocoo().col]
    assert off.max() / off.min() > 400                       # 1/rho from 2/(1+1000)... to 2/2
    if ndim == 2:
        eig = np.linalg.eigvalsh(inst.A.toarray())
        assert eig.min() > 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_graded_scene_uses_a_graded_grid(runs, ndim):
    inst = runs["moving_sphere_graded", ndim][-1]
    widths = inst.extras["spacing"]
    assert len(widths) == ndim
    for w, n in zip(widths, SIZES[ndim]):
        assert w.shape == (n,) and w.sum() == pytest.approx(n)
        mid = w[n // 2]
        assert w[0] == w[-1] and mid / w[0] > 2.0         # several times thinner at the walls
        growth = w[1:n // 2] / w[:n // 2 - 1]
        assert np.all((growth >= 1.0) & (growth <= 1.2 + 1e-12))
    stencil = pressure_coefficients(inst.cell_types, widths)
    assert stencil.volume.max() / stencil.volume.min() > 2.0 ** ndim
    # b carries the volume factor: b = -volume * div(u*), so |b| / |div| varies with the cell.
    assert _same(inst.A, stencil.matrix())


def test_scenes_are_deterministic_by_seed():
    for scene in NEW_SCENES:
        a = list(fluid_sequence((20, 16), 3, scene=scene, seed=4))
        b = list(fluid_sequence((20, 16), 3, scene=scene, seed=4))
        c = list(fluid_sequence((20, 16), 3, scene=scene, seed=5))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.b, y.b)
            assert _same(x.A, y.A)
            np.testing.assert_array_equal(x.extras["pressure"], y.extras["pressure"])
        assert not np.allclose(a[-1].b, c[-1].b), scene


def _liquid(inst):
    return inst.cell_types == FLUID


def test_dam_break_liquid_falls_and_spreads():
    shape = (32, 24)
    seq = list(fluid_sequence(shape, 24, scene="dam_break", seed=0, solver="amg-cg"))
    x, y = np.indices(shape)
    first, last = _liquid(seq[0]), _liquid(seq[-1])
    assert y[last].mean() < y[first].mean() - 1.0              # the centre of mass drops
    assert x[last].max() > x[first].max() + 4                   # the front runs out along the floor
    assert y[last].max() < y[first].max()                       # the column's top comes down
    # A level set stays roughly volume-preserving over these frames.
    assert 0.75 < last.sum() / first.sum() < 1.25
    assert all(f.extras["solve"]["converged"] for f in seq)


@pytest.mark.parametrize("shape, frames", [((24, 32), 14), ((12, 16, 12), 8)])
def test_rising_bubble_rises(shape, frames):
    seq = list(fluid_sequence(shape, frames, scene="rising_bubble", seed=0, solver="amg-cg"))
    y = np.indices(shape)[1]

    def height(inst):
        air = inst.extras["phi"] < 0
        return y[air].mean()

    assert height(seq[-1]) > height(seq[0]) + 0.5
    # The bubble rises, the water around goes down: mean vertical velocity inside the bubble > 0.
    v = seq[-1].extras["velocity"][1]
    air = seq[-1].extras["phi"] < 0
    v_cells = 0.5 * (np.take(v, np.arange(shape[1]), axis=1) + np.take(v, np.arange(1, shape[1] + 1), axis=1))
    assert v_cells[air].mean() > 0


def test_redistance_keeps_the_interface_and_restores_unit_gradient():
    x, y = np.indices((40, 40), dtype=float)
    exact = np.sqrt((x - 19.3) ** 2 + (y - 21.1) ** 2) - 9.0
    squashed = exact * (1.0 + 0.5 * np.tanh(exact / 5.0)) * 3.0       # same zero set, |grad| far from 1
    out = redistance(squashed)
    assert np.array_equal(out < 0, exact < 0)
    near = np.abs(exact) < 6
    assert np.abs(out - exact)[near].max() < 0.35
    assert np.median(np.abs(out - exact)[near]) < 0.05
    gy, gx = np.gradient(out)
    assert np.median(np.hypot(gx, gy)[near]) == pytest.approx(1.0, abs=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("scene", NEW_SCENES)
def test_3d_step_at_64_cubed_costs_under_a_second_outside_the_solve(scene):
    seq = list(fluid_sequence((64, 64, 64), 3, scene=scene, seed=0, solver="amg-cg"))
    steps = [f.extras["step_seconds"] for f in seq[1:]]
    assert min(steps) < 1.0, steps
    assert all(f.extras["divergence_after"] <= 1e-6 * f.extras["divergence_before"] for f in seq)
