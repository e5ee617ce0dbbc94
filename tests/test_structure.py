"""find_grid: the grid of a matrix from its sparsity pattern alone, never from n."""
import numpy as np
import pytest
import scipy.sparse as sp

import linsolve
from linsolve.problems import AIR, FLUID, SOLID, pressure_matrix
from linsolve.structure import find_grid, grid_nullspace, matrix_checksum, matrix_key


@pytest.mark.parametrize("shape", [(16, 16, 16), (64, 64), (12, 10, 7), (6, 5), (5, 9), (2, 3, 4), (3, 2)])
def test_shape_from_offsets_any_shape(shape):
    g = find_grid(linsolve.problems.poisson(shape))
    assert g is not None and g.shape == shape and g.sign == 1 and g.border is None
    assert not g.inactive.any() and g.n == int(np.prod(shape))


def test_same_n_different_grids_are_told_apart():
    a, b = linsolve.problems.poisson((16, 16, 16)), linsolve.problems.poisson((64, 64))
    assert a.shape == b.shape
    assert find_grid(a).shape == (16, 16, 16) and find_grid(b).shape == (64, 64)


def _bordered(A, c=None, corner=0.0):
    n = A.shape[0]
    c = np.ones(n) if c is None else c
    return sp.bmat([[A, sp.csr_matrix(c[:, None])], [sp.csr_matrix(c[None, :]), sp.csr_matrix([[corner]])]],
                   format="csr")


@pytest.mark.parametrize("make", [
    lambda: sp.identity(4096, format="csr"),                          # diagonal: no couplings
    lambda: sp.diags([-1, 2, -1], [-1, 0, 1], shape=(64, 64), format="csr", dtype=float),   # 1D chain
    lambda: sp.csr_matrix((16, 16)),                                   # zero matrix
    lambda: sp.random(200, 200, density=0.05, random_state=0, format="csr") + sp.identity(200),
    lambda: sp.diags([1, 1, 1, 1, -8, 1, 1, 1, 1], [-9, -8, -7, -1, 0, 1, 7, 8, 9], shape=(64, 64),
                     dtype=float),  # 9-point
])
def test_non_grid_matrices_give_none(make):
    assert find_grid(make()) is None


def test_wrap_around_and_periodic_couplings_are_refused():
    A = linsolve.problems.poisson((6, 5)).tolil()
    A[4, 5] = A[5, 4] = -1.0       # end of the first grid line to the start of the second
    assert find_grid(A.tocsr()) is None
    P = linsolve.problems.poisson((6, 5)).tolil()
    for i in range(6):             # periodic along the last axis
        P[i * 5, i * 5 + 4] = P[i * 5 + 4, i * 5] = -1.0
    assert find_grid(P.tocsr()) is None


def test_permuted_grid_is_not_a_grid():
    A = linsolve.problems.poisson((8, 8))
    perm = np.random.default_rng(0).permutation(64)
    assert find_grid(A[perm][:, perm]) is None


def test_negative_definite_inactive_rows_and_zero_rows():
    types = np.full((10, 8), FLUID)
    types[3:6, 2:5] = SOLID
    types[0, :] = AIR
    A = pressure_matrix(types)
    g = find_grid(-A)                 # PhiFlow's sign: -Laplacian negated; identity rows become -1
    assert g.sign == -1 and g.shape == (10, 8)
    np.testing.assert_array_equal(g.inactive, types.ravel() != FLUID)
    B = (-A).tolil()
    for i in np.flatnonzero(types.ravel() != FLUID):
        B[i, i] = 1.0 if i % 2 else 0.0    # +identity and zero rows mixed: still inactive
    g2 = find_grid(B.tocsr())
    assert g2.sign == -1 and np.array_equal(g2.inactive, types.ravel() != FLUID)


def test_mixed_sign_diagonal_is_no_definite_grid():
    A = linsolve.problems.poisson((6, 6)).tolil()
    A[7, 7] = -4.0
    assert find_grid(A.tocsr()) is None


def test_explicit_zeros_couple_nothing():
    A = linsolve.problems.poisson((6, 6)).tocoo()
    extra = sp.coo_matrix(([0.0, 0.0], ([0, 5], [17, 30])), shape=A.shape)   # far-away stored zeros
    M = sp.csr_matrix((np.r_[A.data, extra.data], (np.r_[A.row, extra.row], np.r_[A.col, extra.col])),
                      shape=A.shape)
    assert M.nnz == A.nnz + 2
    assert find_grid(M).shape == (6, 6)


def test_lagrange_border_is_stripped():
    N = linsolve.problems.poisson((7, 6), bc="neumann")
    g = find_grid(_bordered(-N).tocoo())    # PhiFlow hands over COO
    assert g.shape == (7, 6) and g.sign == -1 and g.border is not None
    assert g.border.size == 42 and g.border.corner == 0.0
    np.testing.assert_array_equal(g.border.column, np.ones(42))
    assert grid_nullspace(_bordered(-N), g).shape == (42, 1)
    c = np.ones(42)
    c[3] = 2.0
    lopsided = sp.bmat([[N, sp.csr_matrix(c[:, None])], [sp.csr_matrix(np.ones((1, 42))), None]], format="csr")
    assert find_grid(lopsided) is None      # last row and column differ: not symmetric


def test_nullspace_counts_closed_pockets():
    types = np.full((12, 12), FLUID)
    types[0, :] = AIR
    types[4:9, 4] = types[4:9, 8] = types[4, 4:9] = types[8, 4:9] = SOLID   # a sealed pocket
    A = pressure_matrix(types)
    basis = grid_nullspace(A, find_grid(A))
    assert basis.shape == (144, 1)
    pocket = np.zeros((12, 12), bool)
    pocket[5:8, 5:8] = True
    np.testing.assert_array_equal(basis[:, 0] != 0, pocket.ravel())
    assert np.linalg.norm(A @ basis[:, 0]) < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nullspace_matches_a_component_search_on_porous_grids(seed):
    # The breadth-first search from leaking rows must find exactly the closed regions that a
    # connected-component search finds (here: many pockets sealed by random solid cells).
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(seed)
    types = np.where(rng.random((20, 20)) < 0.45, SOLID, FLUID)
    types[0, :] = AIR
    A = pressure_matrix(types)
    g = find_grid(A)
    basis = grid_nullspace(A, g)
    fluid = np.flatnonzero(~g.inactive)  # trapped single cells are zero rows: decoupled, no null space of theirs
    assert fluid.size < np.count_nonzero(types == FLUID)
    sub = A[fluid][:, fluid]
    n_comp, labels = connected_components(sub, directed=False)
    leaks = np.zeros(n_comp, bool)
    np.logical_or.at(leaks, labels, np.abs(np.asarray(sub.sum(axis=1)).ravel()) > 1e-9)
    assert basis.shape[1] == np.count_nonzero(~leaks) > 0
    for comp in np.flatnonzero(~leaks):
        cells = fluid[labels == comp]
        assert np.any(np.all(basis[cells] != 0, axis=0) & (np.count_nonzero(basis, axis=0) == cells.size))


def test_cache_follows_in_place_edits():
    A = linsolve.problems.poisson((8, 8, 8))
    g = find_grid(A)
    assert find_grid(A) is g                # unchanged: cached
    A.data *= -1.0                          # same object, new values
    g2 = find_grid(A)
    assert g2 is not g and g2.sign == -1


def test_checksum_sees_every_kind_of_edit():
    A = linsolve.problems.poisson((10, 10))
    base = matrix_key(A)
    assert matrix_key(A.copy()) == base
    B = A.copy(); B.data[17] = np.nextafter(B.data[17], 0)
    C = A.copy(); C.indices[3], C.indices[4] = C.indices[4], C.indices[3]
    D = A.astype(np.float32)
    assert len({base, matrix_key(B), matrix_key(C), matrix_key(D)}) == 4
    assert matrix_checksum(A) != matrix_checksum(sp.csr_matrix(A.shape))


def test_linear_operator_and_complex_have_no_grid():
    A = linsolve.problems.poisson((6, 6))
    assert find_grid(sp.linalg.aslinearoperator(A)) is None
    assert find_grid(A.astype(complex)) is None
    with pytest.raises(ValueError, match="square"):
        find_grid(sp.csr_matrix((4, 5)))


def test_checksum_sees_global_sign_flip_and_scaling():
    A = linsolve.problems.poisson((9, 7, 5))
    keys = {matrix_key(A), matrix_key(-A), matrix_key(2 * A), matrix_key(-2 * A), matrix_key(0.5 * A)}
    assert len(keys) == 5


def _fluid_only(A):
    """A pressure matrix numbered over its fluid (coupled) cells only, as many fluid codes number it."""
    fluid = np.flatnonzero(np.diff(A.indptr) > 1)
    return A[fluid][:, fluid].tocsr()


@pytest.mark.parametrize("shape", [(128, 128), (32, 32, 32)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_a_matrix_numbered_over_the_fluid_cells_only_is_placed_back_on_a_grid(shape, order):
    """find_grid sees no grid in a fluid-only numbering; find_compact_grid lays the couplings out on one,
    and the embedded matrix is A itself on the placed cells (identity elsewhere), a grid matrix again."""
    from linsolve.structure import find_compact_grid

    A = list(linsolve.problems.fluid_sequence(shape, 2, scene="dam_break", seed=0))[-1].A
    if order == "F":  # the same cells numbered with the first axis fastest
        perm = np.arange(A.shape[0]).reshape(shape).ravel(order="F")
        A = A[perm][:, perm].tocsr()
    compact = _fluid_only(A)
    assert linsolve.find_grid(compact) is None
    grid = find_compact_grid(compact)
    assert grid is not None and np.unique(grid.cells).size == compact.shape[0]
    embedded = grid.embed(compact)
    assert linsolve.find_grid(embedded).shape == grid.shape
    assert abs(embedded[grid.cells][:, grid.cells] - compact).max() == 0
    others = np.setdiff1d(np.arange(grid.size), grid.cells)
    assert np.array_equal(embedded[others].toarray().nonzero()[1], others)   # identity rows, nothing else


def test_separate_regions_and_loose_rows_are_stacked_and_non_grids_refused():
    from linsolve.structure import find_compact_grid

    A = linsolve.problems.poisson((40, 40))
    y, x = np.mgrid[:40, :40]
    mask = ((x - 10) ** 2 + (y - 10) ** 2 < 50) | ((x - 28) ** 2 + (y - 27) ** 2 < 60)
    mask[0, 39] = mask[39, 0] = True             # two cells that touch no other fluid cell
    fluid = np.flatnonzero(mask.ravel())
    compact = A[fluid][:, fluid].tocsr()
    grid = find_compact_grid(compact)
    assert grid is not None and linsolve.find_grid(grid.embed(compact)) is not None
    b = np.random.default_rng(0).standard_normal(compact.shape[0])
    res = linsolve.solve(grid.embed(compact), grid.expand(b), rtol=1e-8)
    assert np.linalg.norm(b - compact @ res.x[grid.cells]) <= 1e-8 * np.linalg.norm(b)
    rng = np.random.default_rng(1)
    p = rng.permutation(compact.shape[0])      # order lost: either no layout, or a valid one
    shuffled = compact[p][:, p].tocsr()
    other = find_compact_grid(shuffled)
    assert other is None or abs(other.embed(shuffled)[other.cells][:, other.cells] - shuffled).max() == 0
    fem_like = (sp.random(500, 500, density=0.02, random_state=0) + sp.identity(500)).tocsr()
    assert find_compact_grid(fem_like + fem_like.T) is None


def test_separate_spheres_of_different_sizes_are_laid_out_in_3d():
    """Regions of different sizes mix the row gaps of the middle and the slowest axis (a sphere's middle-axis
    gap exceeds a smaller one's slowest-axis gap): 6 spheres in a 40^3 box were refused."""
    from linsolve.structure import find_compact_grid

    z, y, x = np.mgrid[:40, :40, :40]
    mask = np.zeros((40, 40, 40), dtype=bool)
    rng = np.random.default_rng(1)
    for _ in range(6):
        c, r = rng.uniform(0, 40, 3), rng.uniform(2, 40 / 6)
        mask |= (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < r * r
    A = linsolve.problems.poisson((40, 40, 40))
    fluid = np.flatnonzero(mask.ravel())
    compact = A[fluid][:, fluid].tocsr()
    grid = find_compact_grid(compact, max_fill=10.0)  # stacked, six spheres span 3.6 cells per row
    assert grid is not None and len(grid.shape) == 3
    assert abs(grid.embed(compact)[grid.cells][:, grid.cells] - compact).max() == 0


def test_grid_nullspace_of_many_pockets_comes_sparse_and_equal_to_the_dense_one():
    cells = np.zeros((40, 40), dtype=np.int8)
    cells[::4, :] = linsolve.problems.SOLID                   # walls every 4 cells both ways: 100 sealed pockets
    cells[:, ::4] = linsolve.problems.SOLID
    A = linsolve.problems.pressure_matrix(cells)
    dense = grid_nullspace(A, find_grid(A))
    sparse = grid_nullspace(A, find_grid(A), sparse=True)
    assert sp.issparse(sparse) and sparse.shape == dense.shape and dense.shape[1] >= 81
    assert sparse.nnz == np.count_nonzero(dense) and np.allclose(sparse.toarray(), dense)
    assert np.allclose(dense.T @ dense, np.eye(dense.shape[1]))    # orthonormal indicators
    assert np.abs(A @ dense).max() < 1e-12


def test_compact_numbering_of_a_pool_with_many_drops_is_laid_on_a_grid():
    """A free surface numbered over its fluid cells: a collapsing column, a tall sheet and 12-14 drops. Stacked
    one after the other the regions spanned more than 3 cells per row (refused: auto took RS-AMG, 1.4x PyAMG's
    own time); packed in shelves, 2.1, and the solve runs on the grid path."""
    n = 128
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:n, :n]
    fluid = (x < 63) & (y > 1) & (x < 0.5 * y)                                      # the collapsing column
    fluid |= (x > 70) & (x < 92) & (y > 20) & (y < 98) & ((x - 81) ** 2 < (y - 20) / 2)   # a tall thin sheet
    for _ in range(14):                                                               # drops
        cy, cx, r = rng.uniform(5, n - 5), rng.uniform(95, n - 5), rng.uniform(1, 3)
        fluid |= (y - cy) ** 2 + (x - cx) ** 2 < r * r
    full = linsolve.problems.poisson((n, n))                                          # air all around: Dirichlet
    keep = np.flatnonzero(fluid.ravel())
    compact = full[keep][:, keep].tocsr()
    grid = linsolve.structure.find_compact_grid(compact)
    assert grid is not None and grid.size <= 2.5 * keep.size
    assert len(np.unique(grid.cells)) == keep.size
    b = rng.standard_normal(keep.size)
    res = linsolve.solve(compact, b, rtol=1e-8)
    assert res.converged and res.method in ("learned-pcg", "gmg-pcg") and res.iterations <= 15, res.method
    assert np.linalg.norm(b - compact @ res.x) <= 1e-8 * np.linalg.norm(b)
