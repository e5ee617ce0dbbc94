"""Cell codes and grid checks: the one low module every layer may use.

Grids number their unknowns in C order over the grid
(``np.ravel_multi_index(cell, shape)``); each cell of a pressure grid has a
code: ``FLUID`` (an unknown), ``SOLID`` (an obstacle) or ``AIR`` (a free
surface's outside). Pressure matrices keep every grid cell, with identity
rows for the non-fluid ones, so ``b`` must be 0 there
(:func:`check_rhs_matches_cells`).

Examples
--------
>>> import numpy as np
>>> from linsolve._grid import FLUID, SOLID, fluid_mask
>>> fluid_mask(np.array([[FLUID, SOLID]])).tolist()
[True, False]
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._validation import as_vector, check_grid_shape

__all__ = ["FLUID", "SOLID", "AIR", "check_cell_types", "check_rhs_matches_cells", "fluid_mask",
           "check_grid_shape"]

#: Cell-type codes shared by every grid generator, preconditioner and learned model.
FLUID, SOLID, AIR = 0, 1, 2


def fluid_mask(cell_types) -> np.ndarray:
    """Flat boolean mask of the FLUID cells (C order)."""
    return np.asarray(cell_types).ravel() == FLUID


def check_cell_types(cell_types, name: str = "cell_types", *, require_fluid: bool = True) -> np.ndarray:
    """Validate a 2D/3D array of cell codes and return it as an ``int8`` array.

    Raises ``TypeError`` for non-numeric input and ``ValueError`` for a wrong
    dimensionality, an empty grid, codes other than ``FLUID=0, SOLID=1, AIR=2``,
    or (with ``require_fluid``) a grid without any FLUID cell.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve._grid import check_cell_types
    >>> check_cell_types(np.zeros((4, 4), dtype=int)).dtype
    dtype('int8')
    """
    try:
        arr = np.asarray(cell_types)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} cannot be converted to an array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must be an integer array of cell codes (FLUID=0, SOLID=1, AIR=2), "
                        f"got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D array of cell codes, got {arr.ndim} dimension(s) "
                         f"(shape {arr.shape})")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    valid = (arr == FLUID) | (arr == SOLID) | (arr == AIR)
    if not np.all(valid):
        bad = np.unravel_index(int(np.flatnonzero(~valid.ravel())[0]), arr.shape)
        codes = np.unique(arr[~valid])[:5]
        raise ValueError(f"{name} contains unknown cell codes {codes.tolist()} (first at cell "
                         f"{tuple(int(i) for i in bad)}); allowed: FLUID=0, SOLID=1, AIR=2")
    out = arr.astype(np.int8)
    if require_fluid and not np.any(out == FLUID):
        raise ValueError(f"{name} has no FLUID cell: there is no pressure unknown to solve for")
    return out


def check_rhs_matches_cells(b, cell_types, name: str = "b", *, atol: float = 0.0) -> np.ndarray:
    """Check that ``b`` fits a pressure system on ``cell_types`` and return it as a float array.

    ``b`` must have ``prod(cell_types.shape)`` finite entries (shape ``(n,)``,
    ``(n, 1)`` or the grid's shape) and satisfy ``|b| <= atol`` on every
    non-fluid cell (their rows are identity rows, so a non-zero entry there
    would put a non-zero "pressure" inside a solid).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve._grid import check_rhs_matches_cells
    >>> cells = np.zeros((3, 3), dtype=int); cells[1, 1] = 1
    >>> b = np.ones(9); b[4] = 0.0
    >>> check_rhs_matches_cells(b, cells).shape
    (9,)
    """
    types = check_cell_types(cell_types)
    n = types.size
    arr = np.asarray(b) if not sp.issparse(b) else b.toarray()
    if arr.shape == types.shape:
        arr = arr.ravel()
    vec = as_vector(arr, n, name)
    mask = ~fluid_mask(types)
    if np.any(mask):
        worst = np.abs(vec[mask])
        if worst.size and worst.max() > atol:
            k = int(np.flatnonzero(mask)[int(np.argmax(worst))])
            cell = tuple(int(i) for i in np.unravel_index(k, types.shape))
            kind = "SOLID" if types.ravel()[k] == SOLID else "AIR"
            raise ValueError(
                f"{name} does not match the fluid cells: {name}[{k}] = {vec[k]:.3g} at {kind} cell {cell}; "
                f"{name} must be 0 on every non-fluid cell (identity rows of the pressure matrix)")
    return vec
