"""The demo problem of ``linsolve demo``: a 3D pressure system around a solid sphere."""
from __future__ import annotations

import numpy as np

from .._grid import FLUID, SOLID
from .pressure import pressure_matrix

__all__ = ["demo_problem"]


def demo_problem(size: int = 48):
    """The demo system: 3D pressure Poisson on ``size^3`` with a solid sphere in the middle.

    Returns ``(A, b, cell_types)``; b is a seeded random source, zero on solid cells.
    ``linsolve demo`` solves it; ``bench/dcdm.py`` and the model recipes measure on it.

    Examples
    --------
    >>> from linsolve.problems import demo_problem
    >>> A, b, cells = demo_problem(8)
    >>> A.shape, cells.shape
    ((512, 512), (8, 8, 8))
    """
    grid = np.indices((size,) * 3).astype(float) + 0.5
    centre = size / 2.0
    radius = size / 5.0
    inside = ((grid - centre) ** 2).sum(axis=0) <= radius ** 2
    cell_types = np.where(inside, SOLID, FLUID).astype(np.int8)
    A = pressure_matrix(cell_types)
    rng = np.random.default_rng(0)
    b = rng.standard_normal(A.shape[0])
    b[cell_types.ravel() != FLUID] = 0.0
    return A, b, cell_types
