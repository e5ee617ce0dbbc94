"""MAC-grid pressure matrices as production fluid codes build them.

:func:`pressure_coefficients` computes the 5-point (2D) / 7-point (3D) stencil of
the pressure Poisson equation of one projection step, cell by cell and face by
face, from

* the cell types (``FLUID=0, SOLID=1, AIR=2``),
* the cell widths: uniform, per axis, or graded (a 1D array of widths per axis),
* optionally a density per cell (two-phase flow, face coefficient ``1/rho``),
* optionally a liquid level set ``phi`` (ghost-fluid free surface),
* optionally the open area fraction of every face (cut-cell solids),

and :func:`pressure_matrix` assembles it into the global CSR matrix on the FULL
grid (C order, identity rows and columns for non-fluid cells). With none of the
options the matrix is bit-for-bit the classical one: ``sum_f (p_i - p_j) / h^2``
over the non-solid faces of a fluid cell, ``p_j = 0`` for AIR neighbours and
beyond the array's edge.

Grid conventions (shared with every grid generator of :mod:`linsolve.problems`)
----------------------------------------------------------------------------
* Unknowns are *all* grid cells in C order; ``n = prod(shape)`` always.
* Rows and columns of non-fluid cells are identity rows/columns and ``b`` must
  be 0 there (:func:`check_rhs_matches_cells`).
* Face arrays (velocities, face fractions, couplings) use the MAC layout: the
  faces normal to axis ``d`` form an array of the grid's shape plus one along
  ``d``; face ``k`` separates cells ``k - 1`` and ``k`` (faces 0 and ``n_d``
  lie on the array's edge).
* A fluid region (cells connected through faces with a non-zero coupling) with
  no Dirichlet face is a closed container: its block is singular with the
  constants on the region as null space (:func:`pressure_nullspace`). A fluid
  cell whose faces are all closed (boxed in by solids, or all face fractions 0)
  and that has no Dirichlet face gets an all-zero row: a "trapped cell", a
  closed region of its own, exactly what fluid codes hand over.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from .._grid import AIR, FLUID, SOLID, check_cell_types, check_rhs_matches_cells
from .poisson import assemble_stencil

__all__ = ["pressure_coefficients", "pressure_matrix", "pressure_nullspace", "stencil_nullspace", "PressureStencil",
           "GridBox",
           "graded_widths", "divergence", "check_cell_types", "check_rhs_matches_cells"]

# Internal code for the cells beyond the array's edge (open domain boundary).
_OUTSIDE = -1


# ----------------------------------------------------------------------------- validation
def _real_array(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} cannot be converted to an array: {exc}") from None
    if arr.dtype == object or arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                                        or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _cell_field(value, shape, name: str) -> np.ndarray:
    arr = _real_array(value, name)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have the grid's shape {tuple(shape)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(~np.isfinite(arr.ravel()))[0]), shape))
        raise ValueError(f"{name} contains NaN or Inf (first at cell {bad})")
    return arr


def _face_fields(value, shape, name: str) -> list:
    ndim = len(shape)
    if isinstance(value, np.ndarray) and value.dtype != object:
        raise TypeError(f"{name} must be a list of {ndim} face arrays (one per axis), got one array of shape "
                        f"{value.shape}")
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of {ndim} face arrays (one per axis), "
                        f"got {type(value).__name__}") from None
    if len(items) != ndim:
        raise ValueError(f"{name} must hold {ndim} face arrays (one per axis), got {len(items)}")
    out = []
    for axis, item in enumerate(items):
        arr = _real_array(item, f"{name}[{axis}]")
        expected = tuple(s + (1 if d == axis else 0) for d, s in enumerate(shape))
        if arr.shape != expected:
            raise ValueError(f"{name}[{axis}] must have shape {expected} (the grid's shape plus one along "
                             f"axis {axis}: the MAC faces normal to it), got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}[{axis}] contains NaN or Inf")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(f"{name}[{axis}] must lie in [0, 1] (open area fraction of each face), "
                             f"got values in [{arr.min():.3g}, {arr.max():.3g}]")
        out.append(arr)
    return out


def _scalar_width(value, name: str) -> np.float64:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    w = np.float64(value)
    if not np.isfinite(w) or w <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return w


def _grid_widths(h, shape) -> list:
    """Per axis the cell width: an ``np.float64`` (uniform) or a 1D array of widths (graded).

    An axis whose widths are all equal is uniform and comes back as a scalar,
    so ``h=[np.full(n, 0.5), ...]`` and ``h=0.5`` give the same matrices.
    """
    ndim = len(shape)
    if h is None:
        return [np.float64(1.0)] * ndim
    if isinstance(h, (numbers.Real, np.floating, np.integer)) and not isinstance(h, (bool, np.bool_)):
        return [_scalar_width(h, "h")] * ndim
    if isinstance(h, (str, bytes, bool, np.bool_)):
        raise TypeError(f"h must be a number, or one number or 1D array of cell widths per axis, got {h!r}")
    try:
        items = list(h)
    except TypeError:
        raise TypeError(f"h must be a number, or one number or 1D array of cell widths per axis, "
                        f"got {type(h).__name__}") from None
    if len(items) != ndim:
        raise ValueError(f"h must be a scalar or have {ndim} entries (one per axis), got {len(items)}: {h!r}")
    out = []
    for axis, item in enumerate(items):
        if np.ndim(item) == 0:
            out.append(_scalar_width(item if not isinstance(item, np.ndarray) else item[()], f"h[{axis}]"))
            continue
        w = _real_array(item, f"h[{axis}]")
        if w.ndim != 1:
            raise ValueError(f"h[{axis}] must be a number or a 1D array of cell widths, got shape {w.shape}")
        if w.size != shape[axis]:
            raise ValueError(f"h[{axis}] has {w.size} cell widths but the grid has {shape[axis]} cells along "
                             f"axis {axis}")
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(f"h[{axis}] must hold finite cell widths > 0")
        out.append(np.float64(w[0]) if np.all(w == w[0]) else w.copy())
    return out


def graded_widths(n, *, ratio: float = 1.15, max_stretch: float = 8.0, length: Optional[float] = None) -> np.ndarray:
    """Cell widths of a 1D grid graded toward both ends, as CFD meshes refine toward walls.

    Widths grow geometrically by ``ratio`` per cell away from the nearest end
    (wall), up to ``max_stretch`` times the wall cell, and are scaled to sum to
    ``length`` (default ``n``: the mean width is 1, the grid spans as much as
    a unit grid of ``n`` cells).

    Examples
    --------
    >>> from linsolve.problems import graded_widths
    >>> w = graded_widths(16, ratio=1.2)
    >>> round(float(w.sum()), 12), bool(w[0] == w[-1]), round(float(w[7] / w[0]), 3)
    (16.0, True, 3.583)
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    ratio = float(ratio)
    max_stretch = float(max_stretch)
    if not np.isfinite(ratio) or ratio < 1.0:
        raise ValueError(f"ratio must be finite and >= 1, got {ratio}")
    if not np.isfinite(max_stretch) or max_stretch < 1.0:
        raise ValueError(f"max_stretch must be finite and >= 1, got {max_stretch}")
    total = float(n if length is None else length)
    if not np.isfinite(total) or total <= 0:
        raise ValueError(f"length must be finite and > 0, got {length!r}")
    steps = np.minimum(np.arange(n), np.arange(n)[::-1])
    w = np.minimum(ratio ** steps, max_stretch)
    return w * (total / w.sum())


def _along(values, axis: int, ndim: int):
    """Reshape a 1D per-axis array so that it broadcasts along ``axis``."""
    if np.ndim(values) == 0:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return np.reshape(values, shape)


def _span(axis: int, start: int, stop: int, ndim: int) -> tuple:
    """Index tuple selecting ``start:stop`` along ``axis`` (everything along the others)."""
    index = [slice(None)] * ndim
    index[axis] = slice(start, stop)
    return tuple(index)


def _face_sides(arr: np.ndarray, axis: int, fill):
    """Values of the cells on the low and high side of every face normal to ``axis``."""
    pad = [(1, 1) if d == axis else (0, 0) for d in range(arr.ndim)]
    padded = np.pad(arr, pad, constant_values=fill)
    n = arr.shape[axis]
    return np.take(padded, np.arange(0, n + 1), axis=axis), np.take(padded, np.arange(1, n + 2), axis=axis)


# ----------------------------------------------------------------------------- stencil
@dataclass(frozen=True)
class GridBox:
    """A sub-box of a global grid: cells ``start[d] <= i_d < stop[d]`` of ``global_shape``.

    Used by :func:`pressure_coefficients` to build the rows of one MPI rank's
    cells (see its "Sub-boxes" section).

    Examples
    --------
    The upper half (x >= 4) of an 8 x 6 grid: its arrays cover x = 3..7 (one
    ghost column below, none above: that is the domain's edge).

    >>> import numpy as np
    >>> from linsolve.problems import GridBox, pressure_coefficients
    >>> cells = np.zeros((8, 6), dtype=int)
    >>> local = pressure_coefficients(cells[3:], box=GridBox((8, 6), (4, 0), (8, 6)))
    >>> local.diag.shape, bool(np.array_equal(local.diag, pressure_coefficients(cells).diag[4:]))
    ((4, 6), True)
    """

    global_shape: tuple
    start: tuple
    stop: tuple


@dataclass(frozen=True)
class PressureStencil:
    """The pressure operator in stencil form, as returned by :func:`pressure_coefficients`.

    Row ``i`` of the matrix is ``diag[i] p_i - sum_f couplings[d][f] p_j`` over
    the faces ``f`` of cell ``i`` (``j`` the cell across ``f``).

    Attributes
    ----------
    cell_types : int8 array, grid shape
        Effective cell types (with ``phi``: non-solid cells are FLUID where
        ``phi < 0`` and AIR elsewhere).
    diag : float array, grid shape
        Diagonal: the sum of the face coefficients of a fluid cell (0 for a
        trapped cell), 1 on non-fluid cells (identity rows).
    couplings : tuple of face arrays
        Per axis ``d``, an array of the grid's shape plus one along ``d``:
        the coefficient ``c_f >= 0`` of face ``f`` between two FLUID cells
        (matrix entries ``-c_f``), 0 on every other face.
    dirichlet : float array, grid shape
        The part of ``diag`` from Dirichlet faces (open domain boundary and
        fluid-air faces); ``diag = dirichlet + sum of the couplings`` of the
        cell's faces (up to rounding).
    gradient : tuple of face arrays
        Per face, the weight ``G_f`` of the pressure update consistent with
        the matrix: ``u_f <- u_f - G_f (p_hi - p_lo)`` with ``p = 0`` on AIR
        cells and beyond the domain edge (``G_f = beta_f / (theta_f delta_f)``;
        0 on faces that touch no FLUID cell, touch a SOLID cell, or are
        closed).
    volume : float array, grid shape
        Cell volume over the reference volume, ``V_i / V_ref``: the weight of
        the right-hand side, ``b = -volume * div(u*)`` on fluid cells.
    spacing : tuple
        Per axis the cell width (float) or the 1D array of widths of the
        cells covered.
    box : GridBox or None
        The sub-box these rows belong to, ``None`` for the whole grid.

    Examples
    --------
    One projection on a 2D grid with a graded x axis: the divergence left is
    the residual of the solve.

    >>> import numpy as np
    >>> from scipy.sparse.linalg import spsolve
    >>> from linsolve.problems import pressure_coefficients, graded_widths
    >>> from linsolve.problems.pressure import divergence
    >>> h = [graded_widths(6), 1.0]
    >>> s = pressure_coefficients(np.zeros((6, 5), dtype=int), h)
    >>> u = [np.random.default_rng(0).standard_normal((7, 5)), np.zeros((6, 6))]
    >>> p = spsolve(s.matrix(), s.rhs(u))
    >>> bool(np.abs(divergence(s.project(u, p), h)).max() < 1e-12)
    True
    """

    cell_types: np.ndarray
    diag: np.ndarray
    couplings: tuple
    dirichlet: np.ndarray
    gradient: tuple
    volume: np.ndarray
    spacing: tuple
    box: Optional[GridBox] = None

    @property
    def shape(self) -> tuple:
        return self.diag.shape

    def matrix(self) -> sp.csr_matrix:
        """Assemble the global CSR matrix (whole-grid stencils only)."""
        if self.box is not None:
            raise ValueError("a sub-box stencil has couplings to ghost cells: assemble its rows with the "
                             "global numbering (diag and -couplings at the grid neighbours), not with matrix()")
        inner = [np.take(c, np.arange(1, c.shape[d] - 1), axis=d) for d, c in enumerate(self.couplings)]
        return assemble_stencil(self.diag, inner)

    def rhs(self, velocity, face_fractions=None) -> np.ndarray:
        """Right-hand side ``b = -volume * div(u*)`` on fluid cells (0 elsewhere), flattened.

        ``div`` is :func:`divergence` with this grid's widths and the same
        ``face_fractions`` that built the stencil (open-area weighted fluxes,
        Batty et al. 2007).
        """
        div = divergence(velocity, list(self.spacing), face_fractions=face_fractions)
        if div.shape != self.shape:
            raise ValueError(f"velocity describes a grid of shape {div.shape}, the stencil's is {self.shape}")
        fluid = self.cell_types == FLUID
        weighted = div if np.all(self.volume == 1.0) else self.volume * div
        return np.where(fluid, -weighted, 0.0).ravel()

    def project(self, velocity, p) -> list:
        """Face velocities after the pressure update ``u_f - G_f (p_hi - p_lo)`` (new arrays)."""
        if self.box is not None:
            raise ValueError("project() needs the pressure of the neighbours: use a whole-grid stencil")
        grid_p = np.asarray(p, dtype=np.float64).reshape(self.shape)
        grid_p = np.where(self.cell_types == FLUID, grid_p, 0.0)
        out = []
        for axis, (u, weight) in enumerate(zip(velocity, self.gradient)):
            lo, hi = _face_sides(grid_p, axis, 0.0)
            out.append(np.asarray(u, dtype=np.float64) - weight * (hi - lo))
        return out


def _check_box(box, shape):
    if box is None:
        return None
    parts = (box.global_shape, box.start, box.stop) if isinstance(box, GridBox) else box
    try:
        global_shape, start, stop = (tuple(int(v) for v in part) for part in parts)
    except (TypeError, ValueError):
        raise TypeError("box must be a GridBox or a tuple (global_shape, start, stop) of int tuples") from None
    ndim = len(shape)
    if not (len(global_shape) == len(start) == len(stop) == ndim):
        raise ValueError(f"box must give {ndim} entries per tuple, got {global_shape}, {start}, {stop}")
    for d in range(ndim):
        if not 0 <= start[d] < stop[d] <= global_shape[d]:
            raise ValueError(f"box axis {d}: need 0 <= start < stop <= global size, got start {start[d]}, "
                             f"stop {stop[d]}, global size {global_shape[d]}")
        expected = stop[d] - start[d] + (start[d] > 0) + (stop[d] < global_shape[d])
        if shape[d] != expected:
            raise ValueError(f"box axis {d}: the input arrays must cover the owned cells {start[d]}..{stop[d] - 1} "
                             f"plus one ghost cell on each side inside the global grid ({expected} cells), "
                             f"got {shape[d]}")
    return GridBox(global_shape, start, stop)


def pressure_coefficients(cell_types, h=1.0, *, density=None, phi=None, face_fractions=None,
                          theta_min: float = 0.01, box=None) -> PressureStencil:
    r"""The MAC-grid pressure stencil: diagonal, face couplings, gradient weights, volumes.

    For a FLUID cell ``i`` the row is the finite-volume balance

    .. math::

        \frac{1}{V_\text{ref}} \sum_f \alpha_f A_f \frac{\beta_f}{\theta_f\,\delta_f}
        (p_i - p_j) = b_i = -\frac{V_i}{V_\text{ref}} (\nabla\cdot u^*)_i

    over the faces ``f`` of the cell that do not touch a SOLID cell, with
    ``p_j = 0`` for an AIR neighbour and beyond the array's edge (Dirichlet),
    and no term across SOLID faces (Neumann). The factors:

    * **Geometry** (tensor-product grids, finite volumes): ``A_f`` is the face
      area, ``delta_f`` the distance between the two cell centres
      (``(w_i + w_j) / 2``; at the array's edge the ghost cell mirrors the
      edge cell, ``delta_f = w_edge``), ``V_i`` the cell volume and
      ``V_ref = prod_d r_d`` with ``r_d = min`` of the widths along axis ``d``
      (a constant, so the matrix stays symmetric). On a uniform grid
      ``A_f / (delta_f V_ref) = 1 / h_d^2``: exactly the classical matrix.
    * **Density** (variable-density projection ``u <- u* - (dt / rho) grad p``):
      ``beta_f = 1 / rho_f`` with the *arithmetic* mean
      ``rho_f = (rho_i + rho_j) / 2`` between fluid cells, i.e. the harmonic
      mean of ``1/rho``. This is the flux-continuous ("boundary condition
      capturing", Liu, Fedkiw & Kang 2000) coefficient for an interface at
      the face's midpoint, the average used in graphics codes (Bridson,
      *Fluid Simulation for Computer Graphics*), and keeps ``beta_f`` bounded
      by the heavier fluid across a water-air face, so density ratios of 1000
      and more stay well defined. At a Dirichlet face ``rho_f`` is the fluid
      cell's own density (the ghost pressure lives in that phase).
    * **Free surface** (ghost fluid, Gibou, Fedkiw, Cheng & Kang 2002; Enright,
      Nguyen, Gibou & Fedkiw 2003): with a liquid level set ``phi``
      (``phi < 0`` in the liquid), ``p = 0`` sits on the interface between a
      FLUID cell ``f`` and an AIR cell ``a``, at the fraction
      ``theta = phi_f / (phi_f - phi_a)`` in ``(0, 1]`` of the way, so that
      face's coefficient is divided by ``theta``, clamped from below by
      ``theta_min`` (Batty-style codes use 0.01; mantaflow's ``gfClamp`` is
      1e-4). Without ``phi``, ``theta = 1`` (``p = 0`` at the air cell's centre).
    * **Cut cells** (Batty, Bertails & Bridson 2007, "variational" pressure):
      ``alpha_f`` in ``[0, 1]`` is the open (non-solid) fraction of the face's
      area; 0 closes the face like a solid.

    Parameters
    ----------
    cell_types : int array, 2D or 3D
        ``FLUID=0, SOLID=1, AIR=2`` per cell.
    h : float, or one float or 1D array of cell widths per axis
        Cell widths: uniform (``0.5``), per axis (``(1, 1, 1/8)``: a strongly
        anisotropic matrix), or graded (``[wx, wy, wz]`` with ``len(wx) ==
        shape[0]`` ..., see :func:`graded_widths`). An axis whose widths are
        all equal is treated as uniform.
    density : float array of the grid's shape, optional
        Mass density per cell; finite everywhere and > 0 on fluid cells
        (other cells are ignored). ``None``: 1 everywhere.
    phi : float array of the grid's shape, optional
        Liquid level set (signed distance, ``phi < 0`` inside the liquid).
        When given, ``cell_types`` only decides SOLID versus non-solid: every
        non-solid cell is FLUID where ``phi < 0`` and AIR where ``phi >= 0``.
        The array's edge stays an open Dirichlet boundary with ``theta = 1``
        (wall it off with SOLID cells for a closed tank).
    face_fractions : list of ``ndim`` face arrays, optional
        ``face_fractions[d]`` has the grid's shape plus one along axis ``d``
        (the MAC faces normal to ``d``, as :func:`divergence`'s velocity)
        with the open area fraction of each face in ``[0, 1]``. Faces of
        SOLID cells carry no term whatever their fraction.
    theta_min : float in (0, 1]
        Lower clamp of the ghost-fluid fraction ``theta``.
    box : GridBox or (global_shape, start, stop), optional
        Build only the rows of the cells ``start <= i < stop`` of a global
        grid (one MPI rank's sub-box); see "Sub-boxes" below.

    Returns
    -------
    PressureStencil
        ``diag``, ``couplings`` (per-axis face arrays), ``dirichlet``,
        ``gradient`` (per-face weights of the velocity update), ``volume``
        (right-hand-side weights), the effective ``cell_types`` and
        ``spacing``; ``.matrix()`` assembles it (what :func:`pressure_matrix`
        returns), ``.rhs(u)`` and ``.project(u, p)`` give the consistent
        right-hand side and velocity update.

    Notes
    -----
    *Properties.* The matrix is symmetric, an M-matrix on the fluid cells,
    positive definite when every fluid region (cells connected through
    non-zero couplings) has a Dirichlet face, and otherwise positive
    semi-definite with one constant per closed region in the null space
    (:func:`pressure_nullspace`). A fluid cell with no open face gets a zero
    row. With all options ``None`` the values are bit-for-bit those of the
    classical matrix (the same floating-point operations in the same order).

    *Projection.* After solving ``A p = b`` with
    ``b = stencil.rhs(u*)``, the update ``u = stencil.project(u*, p)`` leaves
    ``V_i div(u)_i = -V_ref (b - A p)_i``: the divergence left is the solver's
    residual (scaled by ``V_ref / V_i <= 1``).

    *Sub-boxes (one MPI rank, no global matrix).* Every row depends only on
    the cell and its face neighbours. A rank that owns the cells
    ``start <= i < stop`` passes ``box=(global_shape, start, stop)`` and the
    input fields (``cell_types``, ``density``, ``phi``) on the owned cells
    plus a one-cell ghost layer on every side where the global grid goes on
    (so the arrays have ``stop - start + (start > 0) + (stop < global)``
    cells per axis), ``face_fractions`` on the faces of that padded box (its
    shape plus one along each array's axis), and ``h`` for the *global* grid
    (scalars, or 1D width arrays of the global length: the reference volume
    is global). It gets the stencil of its owned cells, with ``couplings``
    and ``gradient`` on their faces (owned shape plus one along each axis),
    including the faces shared with ghost cells. These rows are bit-for-bit
    the global ones; global index of owned cell ``i`` is
    ``numpy.ravel_multi_index(start + i, global_shape)``.

    Examples
    --------
    A 1 x 3 column of liquid under air, with the surface a quarter of the way
    to the air cell: that face's coefficient becomes ``1 / 0.25 = 4``.

    >>> import numpy as np
    >>> from linsolve.problems import pressure_coefficients, SOLID
    >>> cells = np.full((3, 3), SOLID); cells[1] = 0          # a column x = 1, y = 0..2
    >>> phi = np.array([[1, 1, 1], [-1.5, -0.5, 1.5], [1, 1, 1]])  # theta = 0.5 / (0.5 + 1.5)
    >>> s = pressure_coefficients(cells, phi=phi)
    >>> s.cell_types[1].tolist(), [round(float(v), 12) for v in s.diag[1]]
    ([0, 0, 2], [2.0, 5.0, 1.0])
    >>> s.couplings[1][1].tolist()           # faces along y in column 1
    [0.0, 1.0, 0.0, 0.0]
    """
    types = check_cell_types(cell_types, require_fluid=(box is None and phi is None))
    shape = types.shape
    ndim = types.ndim
    gbox = _check_box(box, shape)
    global_shape = gbox.global_shape if gbox is not None else shape
    widths = _grid_widths(h, global_shape)
    tm = theta_min
    if isinstance(tm, (bool, np.bool_)) or not isinstance(tm, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"theta_min must be a real number, got {type(tm).__name__}")
    theta_min = float(tm)
    if not (0.0 < theta_min <= 1.0):
        raise ValueError(f"theta_min must lie in (0, 1], got {tm!r}")
    if phi is not None:
        phi = _cell_field(phi, shape, "phi")
        types = np.where(types == SOLID, SOLID, np.where(phi < 0, FLUID, AIR)).astype(np.int8)
        if box is None and not np.any(types == FLUID):
            raise ValueError("cell_types and phi leave no FLUID cell (no non-solid cell with phi < 0): "
                             "there is no pressure unknown to solve for")
    fluid = types == FLUID
    if density is not None:
        density = _cell_field(density, shape, "density")
        bad = fluid & ~(density > 0)
        if np.any(bad):
            cell = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad.ravel())[0]), shape))
            raise ValueError(f"density must be > 0 on every fluid cell, got {density[cell]:.3g} at fluid cell {cell}")
    fractions = _face_fields(face_fractions, shape, "face_fractions") if face_fractions is not None else None

    # Per axis: widths of the covered cells, 1 / (delta_f * r_d) on their faces, w / r_d per cell.
    lo_cell = [0] * ndim if gbox is None else [max(s - 1, 0) for s in gbox.start]
    face_factor, inv_delta, ratio, local_widths = [], [], [], []
    for d in range(ndim):
        w = widths[d]
        if np.ndim(w) == 0:
            face_factor.append(1.0 / w ** 2)   # the classical 1 / h^2, computed as it always was
            inv_delta.append(1.0 / w)
            ratio.append(None)
            local_widths.append(w)
            continue
        ref = w.min()
        ghosted = np.concatenate([w[:1], w, w[-1:]])
        delta = 0.5 * (ghosted[:-1] + ghosted[1:])        # global faces 0..N
        faces = slice(lo_cell[d], lo_cell[d] + shape[d] + 1)
        face_factor.append(1.0 / (delta[faces] * ref))
        inv_delta.append(1.0 / delta[faces])
        cells = w[lo_cell[d]:lo_cell[d] + shape[d]]
        ratio.append(cells / ref)
        local_widths.append(cells)

    any_air = bool(np.any(types == AIR))
    diag_neumann = np.zeros(shape)     # fluid-fluid faces and the domain edge, axis by axis
    diag_air = np.zeros(shape)         # fluid-air (ghost-fluid) faces
    dirichlet = np.zeros(shape)
    couplings, gradient = [], []
    for d in range(ndim):
        n_d = shape[d]
        face_shape = tuple(s + (1 if e == d else 0) for e, s in enumerate(shape))
        # Face factor k_f = alpha_f A_f / (delta_f V_ref) and gradient factor 1 / delta_f, per face
        # (scalars on uniform grids without fractions).
        k = _along(face_factor[d], d, ndim)
        for e in range(ndim):
            if e != d and ratio[e] is not None:
                k = k * _along(ratio[e], e, ndim)
        if fractions is not None:
            k = k * fractions[d]
        g = _along(inv_delta[d], d, ndim)

        def faces(value, start, stop, axis=d):   # faces start..stop-1 of a per-face factor
            return value if np.ndim(value) == 0 or value.shape[axis] == 1 else value[_span(axis, start, stop, ndim)]

        inner, first, last = _span(d, 0, n_d - 1, ndim), _span(d, 0, 1, ndim), _span(d, n_d - 1, n_d, ndim)
        upper = _span(d, 1, n_d, ndim)
        lo_f, hi_f = fluid[inner], fluid[upper]
        both = lo_f & hi_f
        k_in, g_in = faces(k, 1, n_d), faces(g, 1, n_d)
        coupling = np.zeros(face_shape)
        face_g = np.zeros(face_shape)
        if density is None:
            c_in = np.where(both, k_in, 0.0)
            grad_in = np.where(both, g_in, 0.0)
        else:
            rho_lo, rho_hi = density[inner], density[upper]
            beta = np.divide(2.0, rho_lo + rho_hi, out=np.zeros(both.shape), where=both)
            c_in = k_in * beta
            grad_in = g_in * beta
        interior = _span(d, 1, n_d, ndim)
        coupling[interior] = c_in
        # Fluid-fluid faces: both cells' diagonals (summed per axis as the classical assembly did).
        per_axis = np.zeros(shape)
        per_axis[inner] = c_in
        per_axis[upper] += c_in
        diag_neumann += per_axis
        # Open domain edge (Dirichlet at the mirrored ghost centre, theta = 1), first and last slab only.
        edge_terms = []
        for cells, face in ((first, 0), (last, n_d)):
            f_edge = fluid[cells]
            beta_edge = 1.0 if density is None else np.divide(1.0, density[cells], out=np.zeros(f_edge.shape),
                                                             where=f_edge)
            term = np.where(f_edge, faces(k, face, face + 1) * beta_edge, 0.0)
            face_g[_span(d, face, face + 1, ndim)] = np.where(f_edge, faces(g, face, face + 1) * beta_edge, 0.0)
            edge_terms.append(term)
        if n_d == 1:
            diag_neumann[first] += edge_terms[0] + edge_terms[1]
            dirichlet[first] += edge_terms[0] + edge_terms[1]
        else:
            diag_neumann[first] += edge_terms[0]
            diag_neumann[last] += edge_terms[1]
            dirichlet[first] += edge_terms[0]
            dirichlet[last] += edge_terms[1]
        if any_air:
            t_lo, t_hi = types[inner], types[upper]
            air_lo = lo_f & (t_hi == AIR)     # fluid below, air above this face
            air_hi = hi_f & (t_lo == AIR)
            if density is None:
                k_lo = k_hi = k_in
                g_lo = g_hi = g_in
            else:
                beta_lo = np.divide(1.0, rho_lo, out=np.zeros(both.shape), where=air_lo)
                beta_hi = np.divide(1.0, rho_hi, out=np.zeros(both.shape), where=air_hi)
                k_lo, k_hi, g_lo, g_hi = k_in * beta_lo, k_in * beta_hi, g_in * beta_lo, g_in * beta_hi
            if phi is not None:
                phi_lo, phi_hi = phi[inner], phi[upper]
                # theta = phi_fluid / (phi_fluid - phi_air): the fraction of the centre distance to p = 0.
                theta_lo = np.maximum(np.divide(phi_lo, phi_lo - phi_hi, out=np.ones(both.shape), where=air_lo),
                                      theta_min)
                theta_hi = np.maximum(np.divide(phi_hi, phi_hi - phi_lo, out=np.ones(both.shape), where=air_hi),
                                      theta_min)
                k_lo, k_hi, g_lo, g_hi = k_lo / theta_lo, k_hi / theta_hi, g_lo / theta_lo, g_hi / theta_hi
            to_lo = np.where(air_lo, k_lo, 0.0)
            to_hi = np.where(air_hi, k_hi, 0.0)
            face_g[interior] += np.where(air_lo, g_lo, 0.0) + np.where(air_hi, g_hi, 0.0)
            per_axis = np.zeros(shape)
            per_axis[inner] = to_lo
            per_axis[upper] += to_hi
            diag_air += per_axis
            dirichlet += per_axis
        face_g[interior] += grad_in
        if fractions is not None:
            face_g[fractions[d] == 0] = 0.0
        couplings.append(coupling)
        gradient.append(face_g)
    diag = diag_neumann + diag_air
    diag[~fluid] = 1.0
    dirichlet[~fluid] = 0.0
    volume = np.ones(shape)
    for d in range(ndim):
        if ratio[d] is not None:
            volume = volume * _along(ratio[d], d, ndim)

    spacing = tuple(local_widths)
    if gbox is not None:    # keep the owned cells and their faces
        own = [slice(s - lo, s - lo + (t - s)) for s, t, lo in zip(gbox.start, gbox.stop, lo_cell)]
        own_faces = [[slice(o.start, o.stop + 1) if e == d else o for e, o in enumerate(own)] for d in range(ndim)]
        own = tuple(own)
        types, diag, dirichlet, volume = types[own], diag[own], dirichlet[own], volume[own]
        couplings = [c[tuple(own_faces[d])] for d, c in enumerate(couplings)]
        gradient = [g[tuple(own_faces[d])] for d, g in enumerate(gradient)]
        spacing = tuple(s if np.ndim(s) == 0 else s[o] for s, o in zip(spacing, own))
    return PressureStencil(cell_types=types, diag=diag, couplings=tuple(couplings), dirichlet=dirichlet,
                           gradient=tuple(gradient), volume=np.broadcast_to(volume, diag.shape).copy(),
                           spacing=spacing, box=gbox)


def pressure_matrix(cell_types, h=1.0, *, density=None, phi=None, face_fractions=None,
                    theta_min: float = 0.01) -> sp.csr_matrix:
    """MAC-grid pressure Poisson matrix for a 2D or 3D array of cell types.

    For a FLUID cell ``i`` the row is ``sum_f c_f (p_i - p_j)`` over its
    faces ``f`` that do not touch a SOLID cell: ``p_j`` is the neighbour's
    unknown for a FLUID neighbour and 0 for an AIR neighbour or beyond the
    array's edge (open boundary, Dirichlet); faces to SOLID cells carry no
    term (Neumann). On a uniform grid without options ``c_f = 1 / h_d^2``:
    the classical matrix (diagonal 4 in 2D, 6 in 3D for a fully fluid grid
    with unit spacing). ``density``, ``phi`` (ghost-fluid free surface),
    ``face_fractions`` (cut cells), graded ``h`` and ``theta_min`` modify
    ``c_f`` as documented (with sources) in :func:`pressure_coefficients`,
    which this function assembles. Non-fluid cells get identity rows and
    columns; a fluid cell with no open face gets a zero row.

    Parameters
    ----------
    cell_types : int array, 2D or 3D
        ``FLUID=0, SOLID=1, AIR=2`` per cell.
    h : float, or one float or 1D array of cell widths per axis
        Grid spacing: uniform, per axis, or graded (see
        :func:`pressure_coefficients`).
    density, phi, face_fractions, theta_min
        See :func:`pressure_coefficients`.

    Returns
    -------
    scipy.sparse.csr_matrix, float64, shape ``(n, n)`` with ``n = cell_types.size``
        Symmetric, at most 5 (2D) / 7 (3D) entries per row, sorted column
        indices. Positive definite when every fluid region touches a
        Dirichlet face; otherwise positive semi-definite with the indicator of
        each closed region in the null space (see :func:`pressure_nullspace`).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.problems import pressure_matrix, FLUID, SOLID
    >>> cells = np.full((8, 8), FLUID); cells[3:5, 3:5] = SOLID
    >>> A = pressure_matrix(cells)
    >>> A.shape, float(A[0, 0]), float(A[27, 27])
    ((64, 64), 4.0, 1.0)

    Water (density 1000) around one air cell (density 1): the face
    coefficient is ``1 / rho_face`` with ``rho_face = (1000 + 1) / 2``.

    >>> rho = np.full((5, 5), 1000.0); rho[2, 2] = 1.0
    >>> A = pressure_matrix(np.zeros((5, 5), int), density=rho)
    >>> round(-float(A[12, 13]) * 1001 / 2, 12), round(float(A[12, 12]) * 1001 / 8, 12)
    (1.0, 1.0)
    """
    return pressure_coefficients(cell_types, h, density=density, phi=phi, face_fractions=face_fractions,
                                 theta_min=theta_min).matrix()


def pressure_nullspace(cell_types, h=1.0, *, density=None, phi=None, face_fractions=None,
                       theta_min: float = 0.01, sparse: bool = False):
    """Null-space basis of :func:`pressure_matrix` for the same arguments, or ``None`` if it is SPD.

    Each closed fluid region (FLUID cells connected through faces with a
    non-zero coupling, none of which has a Dirichlet face: no AIR neighbour
    through an open face, no open face on the array's edge) contributes its
    normalised indicator vector as one column. A trapped cell (a fluid cell
    with no open face: a zero row) is a closed region of its own, so its unit
    vector is a column: a consistent ``b`` is 0 there, and projecting ``b``
    onto the range (``b - N N^T b``) makes it so.

    Parameters
    ----------
    cell_types, h, density, phi, face_fractions, theta_min
        As for :func:`pressure_matrix` (only the connectivity and the
        Dirichlet faces matter).
    sparse : bool
        Return a ``scipy.sparse.csc_matrix`` instead of a dense array: a
        porous medium at 128^3 has hundreds of trapped cells, and a dense
        ``(n, k)`` basis would take gigabytes.

    Returns
    -------
    ndarray (or CSC matrix) of shape ``(n, k)`` with orthonormal columns, or ``None`` when ``k = 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.problems.pressure import pressure_nullspace
    >>> box = np.ones((6, 6), dtype=int); box[1:-1, 1:-1] = 0   # fluid sealed by solid walls
    >>> pressure_nullspace(box).shape
    (36, 1)
    >>> pressure_nullspace(np.zeros((6, 6), dtype=int)) is None
    True
    """
    return stencil_nullspace(pressure_coefficients(cell_types, h, density=density, phi=phi,
                                                   face_fractions=face_fractions, theta_min=theta_min),
                             sparse=sparse)


def stencil_nullspace(stencil: PressureStencil, *, sparse: bool = False):
    """:func:`pressure_nullspace` of an already computed :class:`PressureStencil` (whole grid).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.problems.pressure import pressure_coefficients, stencil_nullspace
    >>> box = np.ones((5, 5), dtype=int); box[1:-1, 1:-1] = 0
    >>> stencil_nullspace(pressure_coefficients(box)).shape
    (25, 1)
    """
    if stencil.box is not None:
        raise ValueError("the null space needs the whole grid's stencil, not a sub-box")
    types = stencil.cell_types
    ndim = types.ndim
    fluid = types == FLUID
    # Fluid cells connect through faces with a non-zero coupling. Without closed faces between fluid
    # cells that is plain face-adjacency (fast labelling); otherwise the coupling graph decides.
    closed_face = False
    for d, c in enumerate(stencil.couplings):
        n_d = types.shape[d]
        both = fluid[_span(d, 0, n_d - 1, ndim)] & fluid[_span(d, 1, n_d, ndim)]
        if np.any(c[_span(d, 1, n_d, ndim)][both] == 0):
            closed_face = True
            break
    if not closed_face:
        labels, count = ndimage.label(fluid, structure=ndimage.generate_binary_structure(ndim, 1))
        labels = labels.ravel()
    else:
        from scipy.sparse.csgraph import connected_components

        A = stencil.matrix()
        graph = A - sp.diags(A.diagonal())
        graph.eliminate_zeros()
        _, comp = connected_components(graph, directed=False)
        flat_fluid = fluid.ravel()
        _, labels_fluid = np.unique(comp[flat_fluid], return_inverse=True)
        labels = np.zeros(types.size, dtype=np.int64)
        labels[flat_fluid] = labels_fluid + 1
        count = int(labels.max())
    open_faces = np.bincount(labels, weights=(stencil.dirichlet > 0).ravel().astype(float), minlength=count + 1)
    closed = np.flatnonzero(open_faces[1:] == 0) + 1
    if closed.size == 0:
        return None
    column_of = np.full(count + 1, -1, dtype=np.int64)
    column_of[closed] = np.arange(closed.size)
    columns = column_of[labels]
    rows = np.flatnonzero(columns >= 0)
    columns = columns[rows]
    sizes = np.bincount(columns, minlength=closed.size)
    values = 1.0 / np.sqrt(sizes[columns])
    if sparse:
        return sp.csc_matrix((values, (rows, columns)), shape=(labels.size, closed.size))
    basis = np.zeros((labels.size, closed.size))
    basis[rows, columns] = values
    return basis


def divergence(velocity, h=1.0, *, face_fractions=None) -> np.ndarray:
    """Cell-centred divergence of a MAC velocity field.

    ``velocity[d]`` holds the d-component on the faces normal to axis d, with
    shape ``grid_shape`` plus one along axis d. ``h`` is the cell width:
    uniform, per axis, or graded (a 1D array of widths per axis). With
    ``face_fractions`` (cut cells) each face's flux is weighted by its open
    area fraction, the discrete divergence of Batty, Bertails & Bridson (2007)
    for a solid at rest.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.problems.pressure import divergence
    >>> u = [np.zeros((5, 4)), np.zeros((4, 5))]; u[0][2, 1] = 1.0
    >>> float(divergence(u)[1, 1]), float(divergence(u)[2, 1])
    (1.0, -1.0)
    >>> float(divergence(u, [np.array([1, 1, 0.5, 1]), 1.0])[2, 1])
    -2.0
    """
    ndim = len(velocity)
    if ndim not in (2, 3):
        raise ValueError(f"velocity must hold 2 or 3 face arrays (one per axis), got {ndim}")
    arrays = [np.asarray(u, dtype=np.float64) for u in velocity]
    shape = tuple(arrays[0].shape[d] - (1 if d == 0 else 0) for d in range(ndim))
    for d, u in enumerate(arrays):
        expected = tuple(s + (1 if e == d else 0) for e, s in enumerate(shape))
        if u.shape != expected:
            raise ValueError(f"velocity[{d}] must have shape {expected} (MAC faces normal to axis {d}), "
                             f"got {u.shape}")
    widths = _grid_widths(h, shape)
    if face_fractions is not None:
        fractions = _face_fields(face_fractions, shape, "face_fractions")
        arrays = [u * f for u, f in zip(arrays, fractions)]
    div = np.zeros(shape)
    for d in range(ndim):
        u = arrays[d]
        div += (np.take(u, np.arange(1, shape[d] + 1), axis=d)
                - np.take(u, np.arange(0, shape[d]), axis=d)) / _along(widths[d], d, ndim)
    return div
