"""Structured-grid Poisson matrices: 2D 5-point and 3D 7-point, constant or variable coefficients.

Unknowns are the grid cells in C order (last axis fastest):
``index = numpy.ravel_multi_index(cell, shape)``. Every grid generator in
:mod:`linsolve.problems` uses this ordering.
"""
from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

__all__ = ["poisson", "face_weights_from_coefficients", "assemble_from_face_weights", "assemble_stencil"]


def _check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral):
        raise TypeError("shape must be a tuple like (nx, ny) or (nx, ny, nz), got an int")
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from None
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must have 2 or 3 entries (2D or 3D grid), got {shape}")
    out = []
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"shape entries must be ints, got {shape}")
        if s < 1:
            raise ValueError(f"shape entries must be >= 1, got {shape}")
        out.append(int(s))
    return tuple(out)


def _check_spacing(h, ndim: int) -> np.ndarray:
    if h is None:
        return np.ones(ndim)
    try:
        raw = np.asarray(h)
    except (TypeError, ValueError):  # ragged sequences
        raw = None
    # float() would happily parse "1" or True; pressure_matrix refuses them, so must poisson
    if raw is None or raw.dtype.kind not in "iuf":
        raise TypeError(f"h (the grid spacing) must be a number or {ndim} numbers, got {h!r}")
    values = raw.astype(float)
    spacing = np.broadcast_to(values, (ndim,)) if values.ndim == 0 else values
    if spacing.shape != (ndim,):
        raise ValueError(f"h must be a scalar or have {ndim} entries, got {h!r}")
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"h must be finite and > 0, got {h!r}")
    return spacing


def face_weights_from_coefficients(coeff: np.ndarray, bc: str):
    """Per-axis face conductances ``k_face`` from cell coefficients ``k``.

    Interior faces use the harmonic mean ``2 k_i k_j / (k_i + k_j)`` (exact for a
    piecewise-constant conductivity in 1D, and zero across a cell with k = 0).
    Returns ``(interior, boundary_lo, boundary_hi)`` lists per axis: interior
    has length ``n_axis - 1`` along that axis; boundary faces carry the cell's
    own ``k`` for Dirichlet and 0 for Neumann.
    """
    interior, lo, hi = [], [], []
    for axis in range(coeff.ndim):
        a = np.take(coeff, np.arange(coeff.shape[axis] - 1), axis=axis)
        b = np.take(coeff, np.arange(1, coeff.shape[axis]), axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            hm = np.where(a + b > 0, 2.0 * a * b / (a + b), 0.0)
        interior.append(hm)
        edge_lo = np.take(coeff, [0], axis=axis)
        edge_hi = np.take(coeff, [coeff.shape[axis] - 1], axis=axis)
        if bc == "dirichlet":
            lo.append(edge_lo)
            hi.append(edge_hi)
        else:
            lo.append(np.zeros_like(edge_lo))
            hi.append(np.zeros_like(edge_hi))
    return interior, lo, hi


def assemble_stencil(diag: np.ndarray, couplings) -> sp.csr_matrix:
    """CSR matrix of a symmetric 5-point (2D) / 7-point (3D) stencil on a grid, unknowns in C order.

    Row ``i`` holds ``diag[i]`` on the diagonal and ``-couplings[d][k]`` at the
    neighbour across each face, where ``couplings[d]`` has the grid's shape
    minus one along axis ``d`` (entry ``k`` couples cells ``k`` and ``k + 1``
    along ``d``). Zero values are not stored; column indices come sorted, so
    the result is canonical without a sort.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.problems.poisson import assemble_stencil
    >>> A = assemble_stencil(np.full((2, 3), 2.0), [np.ones((1, 3)), np.zeros((2, 2))])
    >>> A.toarray()[0].tolist(), A.nnz
    ([2.0, 0.0, 0.0, -1.0, 0.0, 0.0], 12)
    """
    diag = np.asarray(diag, dtype=np.float64)
    shape = diag.shape
    ndim = diag.ndim
    n = diag.size
    if len(couplings) != ndim:
        raise ValueError(f"need {ndim} coupling arrays (one per axis), got {len(couplings)}")
    strides = [int(np.prod(shape[d + 1:])) for d in range(ndim)]
    width = 2 * ndim + 1
    index_dtype = np.int32 if n * width < np.iinfo(np.int32).max else np.int64
    # Slots in increasing column order: -stride_0 < ... < -stride_last < 0 < +stride_last < ... < +stride_0
    # (ties only along axes of length 1, which have no couplings).
    offsets = np.array([-s for s in strides] + [0] + strides[::-1], dtype=index_dtype)
    values = np.zeros((n, width))
    for d in range(ndim):
        c = np.asarray(couplings[d], dtype=np.float64)
        expected = tuple(s - (1 if e == d else 0) for e, s in enumerate(shape))
        if c.shape != expected:
            raise ValueError(f"couplings[{d}] must have shape {expected}, got {c.shape}")
        for slot, cells in ((d, slice(1, None)), (width - 1 - d, slice(0, -1))):
            index = [slice(None)] * ndim
            index[d] = cells
            column = np.zeros(shape)
            column[tuple(index)] = -c
            values[:, slot] = column.ravel()
    values[:, ndim] = diag.ravel()
    columns = np.arange(n, dtype=index_dtype)[:, None] + offsets[None, :]
    # Neighbours beyond the grid have value 0; clip their columns into range, and drop every zero
    # (they are the only entries out of column order or duplicated).
    np.clip(columns, 0, n - 1, out=columns)
    indptr = np.arange(0, n * width + 1, width, dtype=index_dtype)
    A = sp.csr_matrix((values.ravel(), columns.ravel(), indptr), shape=(n, n))
    A.eliminate_zeros()
    A.has_sorted_indices = True
    return A


def assemble_from_face_weights(shape, interior, lo, hi, spacing) -> sp.csr_matrix:
    """Symmetric M-matrix ``sum_faces w_f (e_i - e_j)(e_i - e_j)^T / h^2`` plus boundary terms."""
    diag = np.zeros(shape)
    couplings = []
    for axis in range(len(shape)):
        w = interior[axis] / spacing[axis] ** 2
        couplings.append(w)
        pad_lo = [(0, 0)] * len(shape)
        pad_lo[axis] = (0, 1)
        pad_hi = [(0, 0)] * len(shape)
        pad_hi[axis] = (1, 0)
        diag += np.pad(w, pad_lo) + np.pad(w, pad_hi)
        diag_lo = np.zeros(shape)
        diag_hi = np.zeros(shape)
        sl_lo = [slice(None)] * len(shape)
        sl_lo[axis] = slice(0, 1)
        sl_hi = [slice(None)] * len(shape)
        sl_hi[axis] = slice(shape[axis] - 1, shape[axis])
        diag_lo[tuple(sl_lo)] = lo[axis] / spacing[axis] ** 2
        diag_hi[tuple(sl_hi)] = hi[axis] / spacing[axis] ** 2
        diag += diag_lo + diag_hi
    return assemble_stencil(diag, couplings)


def poisson(shape, *, bc="dirichlet", coeff=None, h=None, pin=False) -> sp.csr_matrix:
    """Finite-difference matrix of ``-div(k grad u)`` on a 2D or 3D regular grid.

    Parameters
    ----------
    shape : tuple of 2 or 3 ints
        Number of unknowns per axis; unknowns are numbered in C order.
    bc : {"dirichlet", "neumann"}
        ``"dirichlet"``: u = 0 one grid spacing outside the grid (the classical
        matrix with diagonal 4 in 2D / 6 in 3D). ``"neumann"``: zero flux through
        the boundary. The Neumann matrix is singular with the constants as null
        space: either pass ``pin=True`` (cell 0's row and column become the
        identity row, which makes the matrix SPD and fixes ``u[0] = b[0]``), or
        keep the singular matrix and give ``nullspace=numpy.ones(n)`` to
        :func:`linsolve.solve`, which checks that ``b`` is consistent, projects
        ``b`` and the final iterate onto the range, and raises on an inconsistent
        ``b``.
    coeff : array of shape ``shape``, optional
        Cell conductivities ``k > 0`` (``k = 0`` cells decouple). Faces use the
        harmonic mean of the two cells. ``None`` means ``k = 1``.
    h : float or sequence, optional
        Grid spacing (per axis). ``None`` means unscaled (h = 1), the matrices
        of the DCDM and Learning-to-Relax papers.
    pin : bool
        For ``bc="neumann"`` only, see above.

    Returns
    -------
    scipy.sparse.csr_matrix, float64, symmetric.

    Examples
    --------
    >>> import linsolve
    >>> A = linsolve.problems.poisson((10, 10))
    >>> A.shape, float(A.diagonal().max())
    ((100, 100), 4.0)
    >>> A3 = linsolve.problems.poisson((8, 8, 8), coeff=None, h=1/9)
    >>> A3.shape
    (512, 512)
    """
    shape = _check_shape(shape)
    if bc not in ("dirichlet", "neumann"):
        raise ValueError(f"bc must be 'dirichlet' or 'neumann', got {bc!r}")
    spacing = _check_spacing(h, len(shape))
    if coeff is None:
        k = np.ones(shape)
    else:
        k = np.asarray(coeff, dtype=float) if not np.iscomplexobj(coeff) else None
        if k is None:
            raise TypeError("coeff must be real")
        if k.shape != shape:
            raise ValueError(f"coeff must have the grid's shape {shape}, got {k.shape}")
        if not np.all(np.isfinite(k)):
            raise ValueError("coeff contains NaN or Inf")
        if np.any(k < 0):
            raise ValueError("coeff must be >= 0 everywhere (a conductivity)")
    if pin and bc != "neumann":
        raise ValueError("pin=True only applies to bc='neumann'")
    interior, lo, hi = face_weights_from_coefficients(k, bc)
    A = assemble_from_face_weights(shape, interior, lo, hi, spacing)
    if pin:
        A = A.tolil()
        A[0, :] = 0
        A[:, 0] = 0
        A[0, 0] = 1.0
        A = A.tocsr()
        A.eliminate_zeros()
    return A
