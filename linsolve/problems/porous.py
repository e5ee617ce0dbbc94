"""Voxelised porous media: random solid voxels, trapped fluid cells and sealed pockets."""
from __future__ import annotations

import numbers

import numpy as np

from .instance import FLUID, SOLID
from .poisson import _check_shape

__all__ = ["porous_cells"]

_UP = 1  # axis 1 is "up" in every fluid generator


def porous_cells(shape, solid_fraction: float = 0.25, *, seed: int = 0) -> np.ndarray:
    """Cell types of a porous medium in a box open at the top, with trapped cells and sealed pockets.

    Interior cells are SOLID independently with probability
    ``solid_fraction``; the sides and the bottom are solid walls one cell
    thick; the top (the high end of axis 1) is the array's edge, an open
    Dirichlet boundary. At moderate solid fractions (below site percolation of
    the solid, about 0.31 in 3D and 0.59 in 2D for the fluid to stay
    connected) most fluid is connected to the top, while voxelisation
    leaves what real geometry hands over:

    * one **trapped cell** (a fluid cell whose face neighbours are all solid:
      a zero row of :func:`~linsolve.problems.pressure_matrix`) and
    * one **sealed pocket** (a block of 2 cells per axis wrapped in solid),

    planted in the lower half when the grid is at least 6 cells per axis,
    besides those the random voxels create on their own. Every closed region
    is in :func:`~linsolve.problems.pressure_nullspace`.

    Parameters
    ----------
    shape : tuple of 2 or 3 ints, each >= 3
    solid_fraction : float in [0, 1)
    seed : int
        Seeds the voxels and the planted positions (same seed, same cells).

    Returns
    -------
    int8 array of ``shape`` with ``FLUID=0`` and ``SOLID=1``.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.problems import porous_cells, pressure_matrix, pressure_nullspace
    >>> cells = porous_cells((12, 12, 12), 0.25, seed=1)
    >>> A = pressure_matrix(cells)
    >>> N = pressure_nullspace(cells)
    >>> bool(np.any(A.getnnz(axis=1) == 0)), N.shape[1] >= 2, float(abs(A @ N).max())
    (True, True, 0.0)
    """
    shape = _check_shape(shape)
    if any(s < 3 for s in shape):
        raise ValueError(f"porous_cells needs at least 3 cells per axis, got {shape}")
    if isinstance(solid_fraction, (bool, np.bool_)) or not isinstance(solid_fraction, (numbers.Real, np.floating)):
        raise TypeError(f"solid_fraction must be a real number, got {type(solid_fraction).__name__}")
    if not 0.0 <= float(solid_fraction) < 1.0:
        raise ValueError(f"solid_fraction must lie in [0, 1), got {solid_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    rng = np.random.default_rng(int(seed))
    ndim = len(shape)
    cells = np.where(rng.random(shape) < float(solid_fraction), SOLID, FLUID).astype(np.int8)
    for axis in range(ndim):
        lo = [slice(None)] * ndim
        lo[axis] = 0
        cells[tuple(lo)] = SOLID
        if axis != _UP:
            hi = [slice(None)] * ndim
            hi[axis] = shape[axis] - 1
            cells[tuple(hi)] = SOLID
    if min(shape) >= 6:
        # Pocket in the left half, trapped cell in the right half (along axis 0), both in the lower half.
        half = shape[0] // 2
        corner = [int(rng.integers(1, max(half - 3, 1) + 1))]
        cell = [int(rng.integers(half + 1, shape[0] - 1))]
        for axis in range(1, ndim):
            top = shape[axis] // 2 if axis == _UP else shape[axis] - 3
            corner.append(int(rng.integers(1, max(top - 2, 1) + 1)))
            cell.append(int(rng.integers(1, max(top, 2))))
        shell = tuple(slice(c - 1, c + 3) for c in corner)
        inside = tuple(slice(c, c + 2) for c in corner)
        cells[shell] = SOLID
        cells[inside] = FLUID
        cells[tuple(cell)] = FLUID
        for axis in range(ndim):
            for step in (-1, 1):
                nb = list(cell)
                nb[axis] += step
                cells[tuple(nb)] = SOLID
    if not np.any(cells == FLUID):
        cells[tuple(s // 2 for s in shape)] = FLUID
    return cells
