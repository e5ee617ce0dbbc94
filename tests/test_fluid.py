"""Pressure matrices, the smoke simulation's frame sequences and frame rendering."""
import time

import numpy as np
import pytest
import scipy.sparse as sp

import linsolve
from linsolve.problems import AIR, FLUID, SOLID, Instance, fluid_sequence, poisson, pressure_matrix
from linsolve.problems.fluid import (SCENES, check_cell_types, check_rhs_matches_cells, divergence,
                                     pressure_nullspace)


def _reference_pressure_matrix(types):
    """Cell-by-cell loop straight from the definition (independent of the vectorised code)."""
    shape = types.shape
    n = types.size
    A = np.zeros((n, n))
    for cell in np.ndindex(shape):
        i = np.ravel_multi_index(cell, shape)
        if types[cell] != FLUID:
            A[i, i] = 1.0
            continue
        for axis in range(types.ndim):
            for step in (-1, 1):
                nb = list(cell)
                nb[axis] += step
                if not 0 <= nb[axis] < shape[axis]:
                    A[i, i] += 1.0            # open domain boundary: Dirichlet
                    continue
                nb = tuple(nb)
                if types[nb] == SOLID:
                    continue                  # Neumann
                A[i, i] += 1.0
                if types[nb] == FLUID:
                    A[i, np.ravel_multi_index(nb, shape)] -= 1.0
    return A


@pytest.mark.parametrize("shape", [(7, 6), (5, 4, 6)])
def test_pressure_matrix_matches_cell_by_cell_reference(shape):
    rng = np.random.default_rng(3)
    types = rng.choice([FLUID, FLUID, FLUID, SOLID, AIR], size=shape)
    types.flat[0] = FLUID
    A = pressure_matrix(types)
    assert sp.isspmatrix_csr(A) and A.shape == (types.size, types.size)
    np.testing.assert_array_equal(A.toarray(), _reference_pressure_matrix(types))


def test_pressure_matrix_all_fluid_is_dirichlet_poisson_and_h_scales():
    types = np.zeros((6, 5, 4), dtype=np.int8)
    assert abs(pressure_matrix(types) - poisson((6, 5, 4))).max() == 0
    A_h = pressure_matrix(types, h=0.5)
    assert abs(A_h - 4.0 * poisson((6, 5, 4))).max() < 1e-12


def test_pressure_matrix_identity_rows_and_spd_with_obstacle_and_air():
    types = np.full((10, 9), FLUID, dtype=np.int8)
    types[3:6, 3:6] = SOLID
    types[:, -2:] = AIR
    A = pressure_matrix(types)
    dense = A.toarray()
    nonfluid = np.flatnonzero(types.ravel() != FLUID)
    np.testing.assert_array_equal(dense[nonfluid][:, nonfluid], np.eye(nonfluid.size))
    fluid = np.flatnonzero(types.ravel() == FLUID)
    assert not dense[np.ix_(nonfluid, fluid)].any() and not dense[np.ix_(fluid, nonfluid)].any()
    np.testing.assert_array_equal(dense, dense.T)
    assert np.linalg.eigvalsh(dense).min() > 1e-6


def test_closed_region_is_spsd_with_indicator_null_space():
    types = np.full((9, 8), SOLID, dtype=np.int8)
    types[1:4, 1:-1] = FLUID          # sealed pocket: no Dirichlet face
    types[5:, 2:6] = FLUID            # touches the open domain edge (row 8)
    A = pressure_matrix(types)
    N = pressure_nullspace(types)
    assert N.shape == (types.size, 1)
    pocket = np.zeros(types.shape, bool)
    pocket[1:4, 1:-1] = True
    np.testing.assert_allclose(N[:, 0], pocket.ravel() / np.sqrt(pocket.sum()))
    assert np.abs(A @ N).max() < 1e-12
    eig = np.linalg.eigvalsh(A.toarray())
    assert np.sum(np.abs(eig) < 1e-10) == 1 and eig.min() > -1e-10
    # The documented way to solve it: a consistent b and nullspace= in linsolve.solve.
    rng = np.random.default_rng(0)
    b = np.where(types.ravel() == FLUID, rng.standard_normal(types.size), 0.0)
    b -= N @ (N.T @ b)
    res = linsolve.solve(A, b, method="cg", rtol=1e-10, nullspace=N)
    assert res.converged and np.linalg.norm(b - A @ res.x) <= 1e-10 * np.linalg.norm(b)
    assert pressure_nullspace(np.zeros((5, 5), dtype=int)) is None


def test_pressure_matrix_is_fast_on_64_cubed():
    types = np.zeros((64, 64, 64), dtype=np.int8)
    centre = np.indices(types.shape).astype(float) - 31.5
    types[(centre ** 2).sum(axis=0) < 12 ** 2] = SOLID
    pressure_matrix(types[:8, :8, :8])
    t0 = time.perf_counter()
    A = pressure_matrix(types)
    elapsed = time.perf_counter() - t0
    assert A.shape == (64 ** 3, 64 ** 3)
    assert elapsed < 3.0, f"pressure_matrix(64^3) took {elapsed:.2f} s"


@pytest.mark.parametrize("bad, match", [
    (np.array([[0, 1], [3, 0]]), "unknown cell codes"),
    (np.array([[0, -1], [0, 0]]), "unknown cell codes"),
    (np.array([[0.0, 0.5], [0.0, 0.0]]), "unknown cell codes"),
    (np.zeros(8, dtype=int), "2D or 3D"),
    (np.zeros((2, 2, 2, 2), dtype=int), "2D or 3D"),
    (np.zeros((0, 3), dtype=int), "empty"),
    (np.full((3, 3), SOLID), "no FLUID cell"),
    (np.full((3, 3), AIR), "no FLUID cell"),
])
def test_bad_cell_types_raise_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        pressure_matrix(bad)


def test_bad_cell_types_type_and_h():
    with pytest.raises(TypeError, match="cell_types"):
        pressure_matrix(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="h"):
        pressure_matrix(np.zeros((3, 3), dtype=int), h=0.0)


def test_rhs_must_match_fluid_cells():
    types = np.zeros((4, 4), dtype=int)
    types[1, 2] = SOLID
    b = np.ones(16)
    with pytest.raises(ValueError, match=r"does not match the fluid cells.*SOLID cell \(1, 2\)"):
        check_rhs_matches_cells(b, types)
    b[6] = 0.0
    np.testing.assert_array_equal(check_rhs_matches_cells(b, types), b)
    np.testing.assert_array_equal(check_rhs_matches_cells(b.reshape(4, 4), types), b)
    with pytest.raises(ValueError, match="length 15"):
        check_rhs_matches_cells(np.ones(15), types)
    with pytest.raises(ValueError, match="NaN"):
        check_rhs_matches_cells(np.full(16, np.nan), types)
    assert check_cell_types(types.astype(float)).dtype == np.int8


def _frames(shape, frames, scene, **kw):
    return list(fluid_sequence(shape, frames, scene=scene, **kw))


@pytest.mark.parametrize("shape, frames", [((64, 64), 6), ((16, 16, 16), 4)])
@pytest.mark.parametrize("scene", sorted(SCENES))
def test_projection_leaves_relative_divergence_below_1e6(shape, frames, scene):
    seq = _frames(shape, frames, scene, seed=2)
    assert len(seq) == frames
    for k, inst in enumerate(seq):
        assert isinstance(inst, Instance) and inst.index == k and inst.grid_shape == shape
        e = inst.extras
        assert e["divergence_before"] > 0
        assert e["divergence_after"] <= 1e-6 * e["divergence_before"], (k, e["divergence_after"])
        # The reported divergence is recomputed from the stored velocity field.
        div = divergence(e["velocity"], e["spacing"], face_fractions=e["matrix_options"].get("face_fractions"))
        assert np.abs(div[inst.cell_types == FLUID]).max() == pytest.approx(e["divergence_after"])
        assert e["solve"]["converged"] and e["solve"]["method"]          # the default solver="auto"
        # b = -div u* on fluid cells and exactly 0 elsewhere.
        check_rhs_matches_cells(inst.b, inst.cell_types)
        assert inst.A.shape == (int(np.prod(shape)),) * 2
        assert _same_matrix(inst.A, pressure_matrix(inst.cell_types, **e["matrix_options"]))
        if scene in ("smoke_plume", "smoke_sphere", "moving_sphere"):
            assert _same_matrix(inst.A, pressure_matrix(inst.cell_types))
        if k == 0:
            assert inst.x_prev is None
        else:
            np.testing.assert_array_equal(inst.x_prev, seq[k - 1].extras["pressure"])
        assert 0.0 <= inst.context <= 1.0


def _same_matrix(A, B):
    return A.shape == B.shape and A.nnz == B.nnz and np.array_equal(A.indices, B.indices) \
        and np.array_equal(A.indptr, B.indptr) and np.array_equal(A.data, B.data)


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_moving_sphere_changes_a_every_frame_and_plume_does_not(shape):
    moving = _frames(shape, 6, "moving_sphere")
    for prev, cur in zip(moving, moving[1:]):
        assert not _same_matrix(prev.A, cur.A)
        assert not np.array_equal(prev.cell_types, cur.cell_types)
        assert prev.extras["obstacle_centre"] != cur.extras["obstacle_centre"]
    plume = _frames(shape, 6, "smoke_plume")
    for prev, cur in zip(plume, plume[1:]):
        assert _same_matrix(prev.A, cur.A)
        assert not np.array_equal(prev.b, cur.b)
    sphere = _frames(shape, 3, "smoke_sphere")
    assert _same_matrix(sphere[0].A, sphere[2].A)
    assert np.sum(sphere[0].cell_types == SOLID) > np.sum(plume[0].cell_types == SOLID)


def test_frames_are_reproducible_from_the_seed():
    a = _frames((24, 32), 4, "moving_sphere", seed=5)
    b = _frames((24, 32), 4, "moving_sphere", seed=5)
    c = _frames((24, 32), 4, "moving_sphere", seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.b, y.b)
        np.testing.assert_array_equal(x.extras["density"], y.extras["density"])
        assert _same_matrix(x.A, y.A)
    assert not np.allclose(a[-1].b, c[-1].b)


def test_solver_argument_accepts_names_sequence_solver_and_callables():
    calls = []

    def my_solver(A, b, x0):
        calls.append(x0 is None)
        return linsolve.solve(A, b, method="cg", x0=x0, rtol=1e-12)

    for solver in ("amg-cg", linsolve.SequenceSolver(method="amg-cg", tuner=None, rtol=1e-10), my_solver):
        seq = _frames((32, 32), 3, "smoke_sphere", solver=solver)
        for inst in seq:
            assert inst.extras["divergence_after"] <= 1e-6 * inst.extras["divergence_before"]
    assert seq[0].extras["solve"]["method"] == "cg"
    assert calls == [True, False, False]
    reference = _frames((32, 32), 3, "smoke_sphere")
    np.testing.assert_allclose(seq[-1].extras["density"], reference[-1].extras["density"], atol=1e-6)


def test_fluid_sequence_bad_arguments():
    with pytest.raises(ValueError, match="unknown scene"):
        fluid_sequence((16, 16), 2, scene="tornado")
    with pytest.raises(ValueError, match="frames"):
        fluid_sequence((16, 16), 0)
    with pytest.raises(TypeError, match="frames"):
        fluid_sequence((16, 16), 2.5)
    with pytest.raises(ValueError, match="2 or 3"):
        fluid_sequence((16,), 2)
    with pytest.raises(ValueError, match="at least 8"):
        fluid_sequence((4, 16), 2)
    with pytest.raises(TypeError, match="solver"):
        fluid_sequence((16, 16), 2, solver=3)
    with pytest.raises(ValueError, match="unknown method"):
        next(iter(fluid_sequence((16, 16), 1, solver="no-such-method")))


def test_render_frame_returns_a_figure_for_2d_and_3d():
    from matplotlib.figure import Figure

    from linsolve.problems.render import frame_slice, render_frame

    frame2 = _frames((24, 32), 2, "smoke_sphere")[-1]
    fig = render_frame(frame2, ("density", "pressure", "speed"))
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    density = frame_slice(frame2, "density")
    np.testing.assert_array_equal(density, frame2.extras["density"].T)
    pressure = frame_slice(frame2, "pressure")
    assert np.isnan(pressure[frame2.cell_types.T == SOLID]).all()

    frame3 = _frames((16, 20, 12), 1, "smoke_sphere")[0]
    assert frame_slice(frame3, "density").shape == (20, 16)
    assert frame_slice(frame3, "density", axis=0, index=3).shape == (12, 20)
    fig = render_frame(frame3)
    assert isinstance(fig, Figure)
    with pytest.raises(ValueError, match="unknown field"):
        render_frame(frame3, ("vorticity",))
    with pytest.raises(ValueError, match="index"):
        frame_slice(frame3, "density", axis=2, index=12)


@pytest.mark.slow
@pytest.mark.parametrize("shape, frames", [((128, 128), 30), ((32, 32, 32), 20)])
@pytest.mark.parametrize("scene", sorted(SCENES))
def test_divergence_criterion_at_acceptance_sizes(shape, frames, scene):
    worst = 0.0
    for inst in fluid_sequence(shape, frames, scene=scene, seed=0):
        e = inst.extras
        assert e["divergence_before"] > 0
        worst = max(worst, e["divergence_after"] / e["divergence_before"])
    assert worst <= 1e-6
