"""pressure_coefficients / pressure_matrix: density, ghost-fluid phi, cut-cell face fractions, graded grids."""
import time

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from linsolve.problems import (AIR, FLUID, SOLID, GridBox, graded_widths, porous_cells, pressure_coefficients,
                               pressure_matrix, pressure_nullspace)
from linsolve.problems.pressure import divergence


# ----------------------------------------------------------------------------- references
def _legacy_pressure_matrix(types, h=1.0):
    """The pressure matrix as the package built it before density/phi/fractions/graded grids
    (frozen copy of the vectorised code, COO assembly): the new code must reproduce it bit for bit."""
    types = np.asarray(types)
    shape = types.shape
    ndim = types.ndim
    spacing = np.broadcast_to(np.asarray(h, float), (ndim,)) if np.ndim(h) == 0 else np.asarray(h, float)
    fluid = (types == FLUID).astype(np.float64)
    n = types.size
    index = np.arange(n).reshape(shape)
    rows, cols, vals = [], [], []
    diag = np.zeros(shape)
    for axis in range(ndim):
        a = np.take(fluid, np.arange(shape[axis] - 1), axis=axis)
        b = np.take(fluid, np.arange(1, shape[axis]), axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            hm = np.where(a + b > 0, 2.0 * a * b / (a + b), 0.0)
        w = hm / spacing[axis] ** 2
        i = np.take(index, np.arange(shape[axis] - 1), axis=axis).ravel()
        j = np.take(index, np.arange(1, shape[axis]), axis=axis).ravel()
        wv = w.ravel()
        keep = wv != 0
        rows += [i[keep], j[keep]]
        cols += [j[keep], i[keep]]
        vals += [-wv[keep], -wv[keep]]
        pad_lo = [(0, 0)] * ndim
        pad_lo[axis] = (0, 1)
        pad_hi = [(0, 0)] * ndim
        pad_hi[axis] = (1, 0)
        diag += np.pad(w, pad_lo) + np.pad(w, pad_hi)
        diag_lo, diag_hi = np.zeros(shape), np.zeros(shape)
        sl_lo = [slice(None)] * ndim
        sl_lo[axis] = slice(0, 1)
        sl_hi = [slice(None)] * ndim
        sl_hi[axis] = slice(shape[axis] - 1, shape[axis])
        diag_lo[tuple(sl_lo)] = np.take(fluid, [0], axis=axis) / spacing[axis] ** 2
        diag_hi[tuple(sl_hi)] = np.take(fluid, [shape[axis] - 1], axis=axis) / spacing[axis] ** 2
        diag += diag_lo + diag_hi
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    vals.append(diag.ravel())
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    A.sum_duplicates()
    A.sort_indices()
    A.eliminate_zeros()
    extra = np.zeros(shape)
    air = types == AIR
    for axis in range(ndim):
        pad = [(1, 1) if d == axis else (0, 0) for d in range(ndim)]
        padded = np.pad(air, pad, constant_values=False)
        m = shape[axis]
        neighbours = (np.take(padded, np.arange(0, m), axis=axis).astype(np.float64)
                      + np.take(padded, np.arange(2, m + 2), axis=axis))
        extra += neighbours / spacing[axis] ** 2
    extra *= fluid
    extra[types != FLUID] = 1.0
    A = (A + sp.diags(extra.ravel(), format="csr")).tocsr()
    A.sum_duplicates()
    A.sort_indices()
    return A


def _identical(A, B):
    return (A.shape == B.shape and A.nnz == B.nnz and np.array_equal(A.indptr, B.indptr)
            and np.array_equal(A.indices, B.indices) and np.array_equal(A.data, B.data))


def _random_case(rng, shape, *, with_air=True):
    codes = [FLUID, FLUID, FLUID, SOLID] + ([AIR] if with_air else [])
    types = rng.choice(codes, size=shape).astype(np.int8)
    types.flat[0] = FLUID
    return types


def _faces(shape, axis):
    return tuple(s + (1 if d == axis else 0) for d, s in enumerate(shape))


def _all_options(rng, shape, *, h="graded"):
    types = _random_case(rng, shape)
    phi = rng.uniform(-1.0, 1.0, size=shape)
    phi[np.unravel_index(0, shape)] = -0.5
    density = rng.choice([1.0, 1000.0], size=shape) * rng.uniform(0.5, 2.0, size=shape)
    fractions = [np.clip(rng.uniform(-0.3, 1.3, size=_faces(shape, d)), 0.0, 1.0) for d in range(len(shape))]
    if h == "graded":
        h = [rng.uniform(0.2, 3.0, size=s) for s in shape]
    return types, dict(h=h, density=density, phi=phi, face_fractions=fractions)


# ----------------------------------------------------------------------------- exact reduction
@pytest.mark.parametrize("ndim", [2, 3])
def test_without_options_the_matrix_is_bit_for_bit_the_classical_one(ndim):
    rng = np.random.default_rng(11)
    for trial in range(25):
        shape = tuple(int(s) for s in rng.integers(1, 7, size=ndim))
        types = _random_case(rng, shape)
        h = float(rng.uniform(0.01, 3.0)) if trial % 3 == 0 else tuple(rng.uniform(0.01, 3.0, size=ndim))
        if trial % 3 == 2:
            h = 1.0
        assert _identical(pressure_matrix(types, h), _legacy_pressure_matrix(types, h)), (shape, h)
        # Options set to their neutral values change nothing either.
        neutral = pressure_matrix(types, h, density=np.ones(shape),
                                  face_fractions=[np.ones(_faces(shape, d)) for d in range(ndim)])
        assert _identical(neutral, _legacy_pressure_matrix(types, h))


def test_graded_widths_all_equal_is_exactly_the_uniform_matrix():
    rng = np.random.default_rng(2)
    types = _random_case(rng, (6, 5, 4))
    widths = [np.full(6, 0.3), np.full(5, 0.7), np.full(4, 1.3)]
    assert _identical(pressure_matrix(types, widths), pressure_matrix(types, (0.3, 0.7, 1.3)))
    assert _identical(pressure_matrix(types, [np.full(6, 0.3), 0.7, np.full(4, 1.3)]),
                      _legacy_pressure_matrix(types, (0.3, 0.7, 1.3)))


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize("shape", [(7, 6), (5, 4, 6)])
def test_structure_symmetric_stencil_and_identity_rows_with_every_option(shape):
    rng = np.random.default_rng(5)
    ndim = len(shape)
    strides = {int(np.prod(shape[d + 1:])) for d in range(ndim)}
    for trial in range(6):
        types, options = _all_options(rng, shape, h="graded" if trial % 2 else 0.7)
        stencil = pressure_coefficients(types, **options)
        A = stencil.matrix()
        assert sp.isspmatrix_csr(A) and A.dtype == np.float64 and A.has_sorted_indices
        assert A.shape == (types.size, types.size)
        assert abs(A - A.T).max() == 0.0
        assert A.getnnz(axis=1).max() <= 2 * ndim + 1
        coo = A.tocoo()
        off = np.abs(coo.col - coo.row)
        assert set(off[off > 0].tolist()) <= strides
        # A coupling only between grid neighbours (not wrapping across a row of the grid).
        ci = np.array(np.unravel_index(coo.row, shape))
        cj = np.array(np.unravel_index(coo.col, shape))
        assert np.all(np.abs(ci - cj).sum(axis=0) <= 1)
        nonfluid = np.flatnonzero(stencil.cell_types.ravel() != FLUID)
        dense = A.toarray()
        np.testing.assert_array_equal(dense[nonfluid], np.eye(types.size)[nonfluid])
        np.testing.assert_array_equal(dense[:, nonfluid], np.eye(types.size)[:, nonfluid])
        # diag = Dirichlet part + couplings of the cell's faces, and an M-matrix sign pattern.
        fluid = stencil.cell_types.ravel() == FLUID
        row_sums = np.asarray(A.sum(axis=1)).ravel()
        np.testing.assert_allclose(row_sums[fluid], stencil.dirichlet.ravel()[fluid], rtol=1e-12, atol=1e-12)
        assert np.all(coo.data[coo.row != coo.col] < 0)


def test_phi_decides_fluid_and_air_among_non_solid_cells():
    cells = np.array([[FLUID, AIR, SOLID], [AIR, FLUID, SOLID], [FLUID, FLUID, AIR]])
    phi = np.array([[1.0, -1.0, -1.0], [-1.0, 0.0, 1.0], [-2.0, 3.0, -0.5]])
    stencil = pressure_coefficients(cells, phi=phi)
    expected = np.array([[AIR, FLUID, SOLID], [FLUID, AIR, SOLID], [FLUID, AIR, FLUID]])
    np.testing.assert_array_equal(stencil.cell_types, expected)
    # With the effective cell types and phi, the matrix is the same as from the original codes.
    assert _identical(pressure_matrix(expected, phi=phi), pressure_matrix(cells, phi=phi))


# ----------------------------------------------------------------------------- hand-computed cases
def _column(phi_column, **kw):
    """A vertical column x = 1 of a 3 x m grid walled by solid columns x = 0 and x = 2."""
    m = len(phi_column)
    cells = np.full((3, m), SOLID)
    cells[1] = FLUID
    phi = np.ones((3, m))
    phi[1] = phi_column
    return pressure_coefficients(cells, phi=phi, **kw)


def test_ghost_fluid_theta_and_its_clamp():
    # Surface between y = 1 (phi = -0.5) and y = 2 (phi = 1.5): theta = 0.5 / 2 = 0.25.
    s = _column([-1.5, -0.5, 1.5])
    assert s.cell_types[1].tolist() == [FLUID, FLUID, AIR]
    # Cell (1, 0): open domain edge below (1) + fluid neighbour (1); cell (1, 1): neighbour (1) + 1 / theta.
    assert s.diag[1].tolist() == [2.0, 1.0 + 4.0, 1.0]
    assert s.couplings[1][1].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert s.dirichlet[1].tolist() == [1.0, 4.0, 0.0]
    assert s.gradient[1][1].tolist() == [1.0, 1.0, 4.0, 0.0]
    # theta = 1e-4 / (1e-4 + 1) is clamped to theta_min.
    tiny = [-1.5, -1e-4, 1.0]
    assert _column(tiny).diag[1, 1] == pytest.approx(1.0 + 1.0 / 0.01, rel=1e-14)
    assert _column(tiny, theta_min=1e-3).diag[1, 1] == pytest.approx(1.0 + 1.0 / 1e-3, rel=1e-14)
    theta = 1e-4 / (1e-4 + 1.0)
    assert _column(tiny, theta_min=1e-6).diag[1, 1] == pytest.approx(1.0 + 1.0 / theta, rel=1e-14)
    # The surface exactly at the air cell's centre is the classical matrix (theta = 1).
    cells = np.full((3, 3), SOLID)
    cells[1, :2] = FLUID
    cells[1, 2] = AIR
    assert _identical(pressure_matrix(cells, phi=np.where(cells == AIR, 0.0, -1.0)), pressure_matrix(cells))


def test_density_ratio_face_coefficient_is_one_over_the_mean_density():
    # Two fluid cells side by side along x in a solid box, open edges along x only.
    cells = np.array([[FLUID], [FLUID]])
    rho = np.array([[1.0], [1000.0]])
    A = pressure_matrix(cells, density=rho).toarray()
    coupling = 2.0 / 1001.0
    np.testing.assert_allclose(A, [[coupling + 1.0 / 1.0 + 2.0, -coupling],
                                   [-coupling, coupling + 1.0 / 1000.0 + 2.0 / 1000.0]], rtol=1e-15)
    # (the extra 2 / rho: the two open edges along the length-1 axis 1, each with the cell's own 1 / rho)
    stencil = pressure_coefficients(cells, density=rho)
    assert stencil.gradient[0][1, 0] == pytest.approx(coupling)
    assert stencil.gradient[0][0, 0] == 1.0 and stencil.gradient[0][2, 0] == pytest.approx(1e-3)


def test_density_contrast_1000_keeps_the_matrix_spd():
    rng = np.random.default_rng(4)
    shape = (6, 7, 5)
    rho = np.where(rng.random(shape) < 0.4, 1.0, 1000.0)
    types = np.zeros(shape, dtype=np.int8)
    types[:, 0] = SOLID
    A = pressure_matrix(types, density=rho)
    eig = np.linalg.eigvalsh(A.toarray())
    assert eig.min() > 0
    assert A.diagonal().max() / A.diagonal().min() > 500


def test_face_fraction_zero_decouples_a_face_and_fractions_scale_it():
    cells = np.zeros((3, 2), dtype=np.int8)
    fx = np.ones((4, 2))
    fy = np.ones((3, 3))
    base = pressure_matrix(cells).toarray()
    fx[1, 0] = 0.0           # the face between cells (0, 0) and (1, 0)
    fx[2, 1] = 0.3           # the face between cells (1, 1) and (2, 1)
    A = pressure_matrix(cells, face_fractions=[fx, fy]).toarray()
    i, j = np.ravel_multi_index((0, 0), (3, 2)), np.ravel_multi_index((1, 0), (3, 2))
    assert A[i, j] == 0.0 and A[j, i] == 0.0
    assert A[i, i] == base[i, i] - 1.0 and A[j, j] == base[j, j] - 1.0
    k, m = np.ravel_multi_index((1, 1), (3, 2)), np.ravel_multi_index((2, 1), (3, 2))
    assert A[k, m] == pytest.approx(-0.3) and A[k, k] == pytest.approx(base[k, k] - 0.7)
    # A closed Dirichlet face (fraction 0 on the domain edge) removes that Dirichlet term.
    fy2 = np.ones((3, 3))
    fy2[0, 0] = 0.0
    A2 = pressure_matrix(cells, face_fractions=[np.ones((4, 2)), fy2]).toarray()
    assert A2[0, 0] == base[0, 0] - 1.0


def test_graded_grid_hand_computed_finite_volumes():
    # Three cells along x with widths 1, 2, 4 (reference width 1); uniform width 1 along y (one cell).
    cells = np.zeros((3, 1), dtype=np.int8)
    s = pressure_coefficients(cells, [np.array([1.0, 2.0, 4.0]), 1.0])
    # Interior faces: 1 / (delta * r) with delta = 1.5 and 3; edges: delta = mirrored width (1 and 4).
    np.testing.assert_allclose(s.couplings[0][:, 0], [0.0, 1 / 1.5, 1 / 3.0, 0.0], rtol=1e-15)
    # Faces normal to y: area w_x over the reference volume, distance 1 (edges, open): w_x / 1.
    expected_diag = [1.0 + 1 / 1.5 + 2 * 1.0, 1 / 1.5 + 1 / 3.0 + 2 * 2.0, 1 / 3.0 + 1 / 4.0 + 2 * 4.0]
    np.testing.assert_allclose(s.diag[:, 0], expected_diag, rtol=1e-15)
    np.testing.assert_allclose(s.volume[:, 0], [1.0, 2.0, 4.0])
    np.testing.assert_allclose(s.gradient[0][:, 0], [1.0, 1 / 1.5, 1 / 3.0, 1 / 4.0])


def test_stretched_spacing_gives_the_anisotropic_matrix():
    A = pressure_matrix(np.zeros((4, 4, 4), dtype=np.int8), h=(1.0, 1.0, 1 / 8))
    centre = np.ravel_multi_index((1, 1, 1), (4, 4, 4))
    row = A[centre].toarray().ravel()
    assert row[centre] == 2 + 2 + 2 * 64.0
    assert row[centre + 1] == -64.0 and row[centre + 4] == -1.0 and row[centre + 16] == -1.0


# ----------------------------------------------------------------------------- definiteness, trapped cells
@pytest.mark.parametrize("shape", [(8, 7), (5, 6, 4)])
def test_positive_definite_when_every_region_has_a_dirichlet_face(shape):
    rng = np.random.default_rng(8)
    types = np.zeros(shape, dtype=np.int8)
    phi = rng.uniform(-1, 1, size=shape)
    phi[..., -1] = 1.0    # the top slab is air: every region reaches it or the open edge
    density = np.where(rng.random(shape) < 0.5, 1.0, 1000.0)
    widths = [graded_widths(s, ratio=1.3) for s in shape]
    fractions = [rng.uniform(0.05, 1.0, size=_faces(shape, d)) for d in range(len(shape))]
    A = pressure_matrix(types, widths, density=density, phi=phi, face_fractions=fractions)
    assert pressure_nullspace(types, widths, density=density, phi=phi, face_fractions=fractions) is None
    assert np.linalg.eigvalsh(A.toarray()).min() > 0


def test_trapped_cells_get_zero_rows_and_null_space_columns():
    cells = np.zeros((7, 7), dtype=np.int8)
    cells[1:4, 1:4] = SOLID
    cells[2, 2] = FLUID                    # boxed in by solids: a zero row
    A = pressure_matrix(cells)
    trapped = np.ravel_multi_index((2, 2), cells.shape)
    assert A.getrow(trapped).nnz == 0
    N = pressure_nullspace(cells)
    assert N.shape == (cells.size, 1) and N[trapped, 0] == 1.0
    # Closing every face of a fluid cell with zero face fractions traps it the same way.
    fx = np.ones((8, 7))
    fy = np.ones((7, 8))
    fx[4, 5] = fx[5, 5] = fy[4, 5] = fy[4, 6] = 0.0      # the four faces of cell (4, 5)
    A2 = pressure_matrix(np.zeros((7, 7), dtype=np.int8), face_fractions=[fx, fy])
    k = np.ravel_multi_index((4, 5), (7, 7))
    assert A2.getrow(k).nnz == 0
    N2 = pressure_nullspace(np.zeros((7, 7), dtype=np.int8), face_fractions=[fx, fy])
    assert N2.shape == (49, 1) and N2[k, 0] == 1.0


def test_face_fractions_can_seal_a_pocket_and_the_null_space_finds_it():
    shape = (6, 6)
    fx, fy = np.ones((7, 6)), np.ones((6, 7))
    # Close the boundary of the block x in 1..2, y in 1..2.
    fx[1, 1:3] = fx[3, 1:3] = 0.0
    fy[1:3, 1] = fy[1:3, 3] = 0.0
    types = np.zeros(shape, dtype=np.int8)
    A = pressure_matrix(types, face_fractions=[fx, fy])
    N = pressure_nullspace(types, face_fractions=[fx, fy])
    assert N.shape == (36, 1)
    pocket = np.zeros(shape, bool)
    pocket[1:3, 1:3] = True
    np.testing.assert_allclose(N[:, 0], pocket.ravel() / 2.0)
    assert np.abs(A @ N).max() < 1e-14
    eig = np.linalg.eigvalsh(A.toarray())
    assert np.sum(np.abs(eig) < 1e-10) == 1 and eig.min() > -1e-10


def test_porous_cells_have_trapped_cells_pockets_and_a_connected_bulk():
    cells = porous_cells((16, 16, 16), 0.25, seed=3)
    assert cells.dtype == np.int8 and set(np.unique(cells).tolist()) == {FLUID, SOLID}
    np.testing.assert_array_equal(cells, porous_cells((16, 16, 16), 0.25, seed=3))
    assert not np.array_equal(cells, porous_cells((16, 16, 16), 0.25, seed=4))
    A = pressure_matrix(cells)
    N = pressure_nullspace(cells)
    sizes = (N > 0).sum(axis=0)
    assert np.any(sizes == 1) and np.any(sizes >= 8)               # trapped cell and sealed pocket
    zero_rows = np.flatnonzero(A.getnnz(axis=1) == 0)
    assert zero_rows.size >= 1 and np.all(np.abs(N[zero_rows]).max(axis=1) == 1.0)
    assert np.abs(A @ N).max() == 0.0
    Ns = pressure_nullspace(cells, sparse=True)
    assert sp.issparse(Ns) and Ns.shape == N.shape
    np.testing.assert_array_equal(Ns.toarray(), N)
    fluid = int((cells == FLUID).sum())
    assert sizes.sum() < 0.05 * fluid                              # most fluid reaches the open top
    solid_inside = (cells[1:-1, 1:-1, 1:-1] == SOLID).mean()
    assert 0.18 < solid_inside < 0.35
    # The consistent system is solvable: b projected onto the range, residual to 1e-10.
    rng = np.random.default_rng(0)
    b = np.where(cells.ravel() == FLUID, rng.standard_normal(cells.size), 0.0)
    b -= N @ (N.T @ b)
    x = spla.lsqr(A, b, atol=1e-13, btol=1e-13, iter_lim=5000)[0]
    assert np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b)
    cells2 = porous_cells((40, 30), 0.25, seed=0)
    assert pressure_nullspace(cells2).shape[1] >= 2


# ----------------------------------------------------------------------------- projection consistency
@pytest.mark.parametrize("shape", [(9, 8), (6, 7, 5)])
def test_rhs_and_projection_leave_the_solver_residual_as_divergence(shape):
    rng = np.random.default_rng(12)
    types, options = _all_options(rng, shape)
    types[..., -1] = AIR
    options["phi"][..., -1] = 1.0
    stencil = pressure_coefficients(types, **options)
    A = stencil.matrix()
    velocity = [rng.standard_normal(_faces(shape, d)) for d in range(len(shape))]
    b = stencil.rhs(velocity, options["face_fractions"])
    fluid = stencil.cell_types == FLUID
    N = pressure_nullspace(types, **options)
    if N is not None:
        b -= N @ (N.T @ b)
        A = A + N @ N.T      # regularise the closed regions for the direct solve
    p = np.linalg.solve(A.toarray() if not sp.issparse(A) else A.toarray(), b)
    projected = stencil.project(velocity, p)
    div = divergence(projected, options["h"], face_fractions=options["face_fractions"])
    scale = np.abs(divergence(velocity, options["h"], face_fractions=options["face_fractions"])[fluid]).max()
    if N is None:
        assert np.abs(div[fluid]).max() <= 1e-10 * scale
    else:     # closed regions keep their mean divergence (b was projected): the rest is exact
        open_cells = fluid.ravel() & (np.abs(N).sum(axis=1) == 0)
        assert np.abs(div.ravel()[open_cells]).max() <= 1e-10 * scale


# ----------------------------------------------------------------------------- sub-boxes
def test_sub_box_rows_are_bit_for_bit_the_global_rows():
    rng = np.random.default_rng(21)
    shape = (9, 8, 7)
    types, options = _all_options(rng, shape)
    glob = pressure_coefficients(types, **options)
    A = glob.matrix()
    cuts = [(0, 4), (4, 9)], [(0, 3), (3, 8)], [(0, 7)]
    checked = 0
    for x0, x1 in cuts[0]:
        for y0, y1 in cuts[1]:
            for z0, z1 in cuts[2]:
                start, stop = (x0, y0, z0), (x1, y1, z1)
                pad = tuple(slice(max(s - 1, 0), min(t + 1, n)) for s, t, n in zip(start, stop, shape))
                fpad = [tuple(slice(p.start, p.stop + 1) if e == d else p for e, p in enumerate(pad))
                        for d in range(3)]
                local = pressure_coefficients(
                    types[pad], options["h"], density=options["density"][pad], phi=options["phi"][pad],
                    face_fractions=[f[fpad[d]] for d, f in enumerate(options["face_fractions"])],
                    box=GridBox(shape, start, stop))
                own = tuple(slice(s, t) for s, t in zip(start, stop))
                np.testing.assert_array_equal(local.diag, glob.diag[own])
                np.testing.assert_array_equal(local.cell_types, glob.cell_types[own])
                for d in range(3):
                    ofaces = tuple(slice(o.start, o.stop + 1) if e == d else o for e, o in enumerate(own))
                    np.testing.assert_array_equal(local.couplings[d], glob.couplings[d][ofaces])
                    np.testing.assert_array_equal(local.gradient[d], glob.gradient[d][ofaces])
                # Rebuild the owned rows with global numbering and compare with the global matrix.
                for cell in [tuple(int(rng.integers(s, t)) for s, t in zip(start, stop)) for _ in range(5)]:
                    i = np.ravel_multi_index(cell, shape)
                    li = tuple(c - s for c, s in zip(cell, start))
                    row = np.zeros(A.shape[1])
                    row[i] = local.diag[li]
                    for d in range(3):
                        for step, face in ((-1, li[d]), (1, li[d] + 1)):
                            fidx = list(li)
                            fidx[d] = face
                            c = local.couplings[d][tuple(fidx)]
                            if c:
                                nb = list(cell)
                                nb[d] += step
                                row[np.ravel_multi_index(nb, shape)] -= c
                    np.testing.assert_array_equal(row, A.getrow(i).toarray().ravel())
                    checked += 1
    assert checked == 20
    with pytest.raises(ValueError, match="ghost"):
        pressure_coefficients(types[:5], box=(shape, (0, 0, 0), (5, 8, 7)))
    with pytest.raises(ValueError, match="sub-box"):
        pressure_coefficients(types[:5], box=(shape, (0, 0, 0), (4, 8, 7))).matrix()


# ----------------------------------------------------------------------------- speed
def test_assembly_with_every_option_is_fast_on_64_cubed():
    rng = np.random.default_rng(0)
    shape = (64, 64, 64)
    types = np.zeros(shape, dtype=np.int8)
    phi = np.indices(shape)[1] - 40.3
    density = np.where(rng.random(shape) < 0.5, 1.0, 1000.0)
    fractions = [rng.random(_faces(shape, d)) for d in range(3)]
    widths = [graded_widths(64)] * 3
    pressure_matrix(types[:8, :8, :8])
    t0 = time.perf_counter()
    A = pressure_matrix(types, widths, density=density, phi=phi, face_fractions=fractions)
    elapsed = time.perf_counter() - t0
    assert A.shape == (64 ** 3,) * 2
    assert elapsed < 3.0, f"pressure_matrix(64^3, every option) took {elapsed:.2f} s"


# ----------------------------------------------------------------------------- bad input
def _ok():
    return np.zeros((4, 5), dtype=np.int8)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(density=np.ones((5, 4))), ValueError, r"density must have the grid's shape \(4, 5\)"),
    (dict(density=np.full((4, 5), np.nan)), ValueError, "density contains NaN"),
    (dict(density=np.zeros((4, 5))), ValueError, "density must be > 0 on every fluid cell"),
    (dict(density=-np.ones((4, 5))), ValueError, "density must be > 0"),
    (dict(density=np.full((4, 5), "a")), TypeError, "density must be a real numeric array"),
    (dict(density=np.ones((4, 5)) * 1j), TypeError, "density"),
    (dict(phi=np.ones(20)), ValueError, "phi must have the grid's shape"),
    (dict(phi=np.full((4, 5), np.inf)), ValueError, "phi contains NaN or Inf"),
    (dict(phi=np.ones((4, 5))), ValueError, "no FLUID cell"),
    (dict(face_fractions=[np.ones((5, 5))]), ValueError, "2 face arrays"),
    (dict(face_fractions=[np.ones((4, 5)), np.ones((4, 6))]), ValueError,
     r"face_fractions\[0\] must have shape \(5, 5\)"),
    (dict(face_fractions=[np.full((5, 5), 1.5), np.ones((4, 6))]), ValueError, r"\[0, 1\]"),
    (dict(face_fractions=[np.full((5, 5), -0.1), np.ones((4, 6))]), ValueError, r"\[0, 1\]"),
    (dict(face_fractions=[np.full((5, 5), np.nan), np.ones((4, 6))]), ValueError, "NaN"),
    (dict(face_fractions=np.ones((5, 5))), TypeError, "list of 2 face arrays"),
    (dict(h=[np.ones(3), 1.0]), ValueError, r"h\[0\] has 3 cell widths but the grid has 4"),
    (dict(h=[np.ones(4), np.zeros(5)]), ValueError, r"h\[1\] must hold finite cell widths > 0"),
    (dict(h=[np.ones(4), np.full(5, np.nan)]), ValueError, r"h\[1\]"),
    (dict(h=(1.0, 1.0, 1.0)), ValueError, "2 entries"),
    (dict(h=-1.0), ValueError, "h must be finite and > 0"),
    (dict(h="1"), TypeError, "h must be"),
    (dict(h=[np.ones((4, 1)), 1.0]), ValueError, "1D array"),
    (dict(theta_min=0.0), ValueError, r"theta_min must lie in \(0, 1\]"),
    (dict(theta_min=1.5), ValueError, "theta_min"),
    (dict(theta_min="0.1"), TypeError, "theta_min"),
])
def test_bad_options_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        pressure_matrix(_ok(), **kwargs)


def test_density_may_be_anything_finite_on_non_fluid_cells():
    cells = _ok()
    cells[0, 0] = SOLID
    rho = np.ones((4, 5))
    rho[0, 0] = 0.0
    assert pressure_matrix(cells, density=rho).shape == (20, 20)


@pytest.mark.parametrize("bad, error, match", [
    ((2, 3), ValueError, "at least 3"),
    ((8, 2), ValueError, "at least 3"),
    ((8,), ValueError, "2 or 3"),
])
def test_porous_cells_bad_arguments(bad, error, match):
    with pytest.raises(error, match=match):
        porous_cells(bad)


def test_porous_cells_bad_fraction_and_seed():
    with pytest.raises(ValueError, match="solid_fraction"):
        porous_cells((8, 8), 1.0)
    with pytest.raises(TypeError, match="seed"):
        porous_cells((8, 8), 0.2, seed=1.5)
    with pytest.raises(ValueError, match="ratio"):
        graded_widths(8, ratio=0.5)
