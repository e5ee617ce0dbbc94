"""Structure found from the matrix alone: is ``A`` a 5/7-point stencil on a structured grid?

Codes we do not control (PhiFlow, FiPy, a user's own finite-volume code) hand
over a bare sparse matrix. :func:`find_grid` reads its sparsity pattern and
answers with a :class:`GridStructure` (the grid's shape in C order, the sign
of its definite block, which rows are decoupled, and the Lagrange border of a
bordered singular system) or ``None``. It never guesses a grid from ``n``
alone: a 16³ 7-point matrix and a 64×64 5-point matrix both have 4096 rows
and are told apart by their coupling distances (1, 16, 256 against 1, 64).

:func:`matrix_checksum` is the cheap content fingerprint the solvers use to
know that a matrix has not changed since they built a preconditioner for it.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from ._validation import as_sparse_matrix, definite_sign

__all__ = ["find_grid", "GridStructure", "Border", "matrix_checksum", "matrix_key", "grid_nullspace",
           "closed_region_labels", "nullspace_basis", "check_symmetric", "require_symmetric", "PinnedRows",
           "pinned_rows", "CompactGrid", "find_compact_grid", "find_border"]


@dataclass(frozen=True, eq=False)
class Border:
    """The Lagrange border of an ``(N+1)×(N+1)`` system ``[[A, c], [rᵀ, d]]``.

    Simulators make a singular pressure matrix (closed box: constants in its
    null space) regular by bordering it with one multiplier ``λ``: the extra
    column ``c`` adds ``λ c`` to every equation and the extra row asks
    ``rᵀ p + d λ = β`` (PhiFlow: ``c = r = 1``, ``d = 0``, ``β = 0``).

    Attributes
    ----------
    size : int
        ``N``, the number of rows of the inner block ``A``.
    column, row : ndarray, shape (N,)
        ``c`` and ``r`` (equal when the whole matrix is symmetric).
    corner : float
        ``d``.
    """

    size: int
    column: np.ndarray
    row: np.ndarray
    corner: float


@dataclass(frozen=True, eq=False)
class GridStructure:
    """What :func:`find_grid` learned about a matrix.

    Attributes
    ----------
    shape : tuple of 2 or 3 ints
        The grid; unknowns are numbered in C order over it (the last axis
        varies fastest), so its couplings are at distances ``1``, ``shape[-1]``
        and (3D) ``shape[-2] * shape[-1]``.
    sign : int
        ``+1`` when every coupled row has a positive diagonal (a positive
        definite-like block, e.g. ``-Laplacian``), ``-1`` when every one is
        negative (PhiFlow's ``+Laplacian``, FiPy's ``DiffusionTerm() == 0``).
    inactive : bool ndarray, shape (prod(shape),)
        Rows with no coupling to another cell of the grid: identity rows of
        obstacle / air cells, other decoupled diagonal rows and zero rows.
        Their diagonal may have either sign (or be zero).
    border : Border or None
        The Lagrange border when ``A`` is ``(N+1)×(N+1)`` with the grid in its
        leading ``N×N`` block.

    Examples
    --------
    >>> import linsolve
    >>> g = linsolve.structure.find_grid(-linsolve.problems.poisson((6, 5)))
    >>> g.shape, g.sign, g.dims, g.n, int(g.inactive.sum()), g.border
    ((6, 5), -1, 2, 30, 0, None)
    """

    shape: tuple
    sign: int
    inactive: np.ndarray
    border: Optional[Border] = None

    @property
    def dims(self) -> int:
        return len(self.shape)

    @property
    def n(self) -> int:
        """Number of grid cells (rows of the inner block)."""
        return int(np.prod(self.shape))

    @property
    def n_active(self) -> int:
        return self.n - int(np.count_nonzero(self.inactive))

    def __repr__(self) -> str:
        border = "" if self.border is None else f", border=Border(size={self.border.size})"
        return (f"GridStructure(shape={self.shape}, sign={self.sign:+d}, "
                f"inactive={int(np.count_nonzero(self.inactive))}{border})")


# ----------------------------------------------------------------------------- fingerprint

def _words(arr: np.ndarray) -> tuple:
    """``arr``'s bytes as uint64 words plus the leftover bytes packed in one word (no copy when aligned)."""
    raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    full = raw.shape[0] // 8 * 8
    head = raw[:full]
    try:
        words = head.view(np.uint64)
    except ValueError:  # pragma: no cover - misaligned buffer
        words = np.frombuffer(head.tobytes(), dtype=np.uint64)
    tail = np.zeros(8, np.uint8)
    tail[:raw.shape[0] - full] = raw[full:]
    return words, tail.view(np.uint64)


def matrix_checksum(A) -> int:
    """64-bit checksum of a CSR matrix's ``indptr``, ``indices`` and ``data`` (one pass, numba).

    Detects any change of pattern or value (an edit of one entry, a sign
    flip, a permutation of rows) at about the cost of one SpMV, 15 times less
    than BLAKE2b; it is meant to notice edits, not adversaries.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.structure import matrix_checksum
    >>> A = linsolve.problems.poisson((8, 8))
    >>> B = A.copy(); B.data[5] *= -1
    >>> matrix_checksum(A) == matrix_checksum(A.copy()), matrix_checksum(A) == matrix_checksum(B)
    (True, False)
    """
    from .kernels.structure import checksum_words

    h = np.uint64(len(A.data))
    for arr in (A.indptr, A.indices, A.data):
        words, tail = _words(arr)
        h = np.uint64(checksum_words(words, h))
        h = np.uint64(checksum_words(tail, h))
    return int(h)


def matrix_key(A) -> tuple:
    """``(shape, nnz, dtype, checksum)``: equal keys mean the same CSR matrix, pattern and values.

    The key every solver that keeps a preconditioner between calls compares
    (:func:`linsolve.auto_cg`, :class:`linsolve.SequenceSolver`).

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.structure import matrix_key
    >>> A = linsolve.problems.poisson((4, 4))
    >>> matrix_key(A) == matrix_key(A.copy()), matrix_key(A) == matrix_key(2 * A)
    (True, False)
    """
    return (tuple(A.shape), int(A.nnz), str(A.data.dtype), matrix_checksum(A))


_SYMMETRIC: dict = {}  # matrix_key -> rtol at which the matrix was found symmetric, newest last
_SYMMETRIC_MAX = 16


def check_symmetric(A, name: str = "A", rtol: float = 1e-10, *, key=None) -> tuple:
    """:func:`linsolve._validation.check_symmetric`, paid once per matrix; returns ``A``'s :func:`matrix_key`.

    The full check (a sparse transpose and subtraction, about five SpMVs)
    runs the first time a matrix's content is seen; afterwards the
    :func:`matrix_key` (one pass, or none when the caller passes the ``key``
    it already has) finds it among the last 16 symmetric matrices. A
    simulation that solves with the same ``A`` every frame checks it once.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.structure import check_symmetric
    >>> A = linsolve.problems.poisson((8, 8)).tocsr()
    >>> check_symmetric(A) == check_symmetric(A)
    True
    >>> B = A.tolil(); B[0, 1] = 5.0
    >>> check_symmetric(B.tocsr())
    Traceback (most recent call last):
    ...
    ValueError: A is not symmetric: |A[0,1] - A[1,0]| = 6 (relative 1.2); CG and DCDM need a symmetric matrix
    """
    from ._validation import check_symmetric as full_check

    A = as_sparse_matrix(A, name, allow_complex=True) if not sp.isspmatrix_csr(A) else A
    if key is None:
        key = matrix_key(A)
    with _CACHE_LOCK:
        seen = _SYMMETRIC.get(key)
    if seen is not None and seen <= rtol:
        return key
    full_check(A, name, rtol)
    with _CACHE_LOCK:
        _SYMMETRIC.pop(key, None)
        _SYMMETRIC[key] = rtol
        while len(_SYMMETRIC) > _SYMMETRIC_MAX:
            _SYMMETRIC.pop(next(iter(_SYMMETRIC)))
    return key


def require_symmetric(A: sp.csr_matrix, name: str = "A", rtol: float = 1e-10) -> None:
    """The exact symmetry check behind a compiled screen that costs about one and a half SpMVs.

    The screen (:func:`linsolve.kernels.spmv.csr_asymmetry_probe`) applies ``A - A^T`` to a fixed
    pseudo-random vector; the exact check (:func:`linsolve._validation.check_symmetric`), which decides
    and words the error, runs only where that shows an asymmetry near ``rtol``. Complex matrices go to
    the exact check directly. Unlike :func:`check_symmetric` it remembers nothing between calls.
    """
    from ._validation import check_symmetric as full_check
    from .kernels.spmv import csr_asymmetry_probe

    if A.shape[0] == 0 or A.nnz == 0:
        return
    if np.iscomplexobj(A.data):
        full_check(A, name, rtol)
        return
    scale = float(np.abs(A.data).max())
    if csr_asymmetry_probe(A.indptr, A.indices, A.data) > 0.01 * rtol * scale:
        full_check(A, name, rtol)


# ----------------------------------------------------------------------------- detection

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def find_grid(A, *, key=None) -> Optional[GridStructure]:
    """Recognise a 5-point (2D) or 7-point (3D) grid stencil from ``A``'s sparsity pattern alone.

    ``A`` is a grid matrix when every stored nonzero couples a cell with
    itself or with a face neighbour on one grid, numbered in C order: the
    coupling distances are ``1`` and ``nz`` (2D) or ``1``, ``nz`` and
    ``ny*nz`` (3D), no coupling wraps around from the end of a grid line to
    the start of the next, and no other distance occurs. The shape follows
    from those distances (any shape, not only squares and cubes), so a grid
    is never guessed from ``n``: a diagonal or tridiagonal matrix, a 9-point
    stencil and a periodic grid all give ``None``.

    Also recognised:

    * decoupled rows (no off-diagonal entry: identity rows of obstacles, zero
      rows), reported in ``inactive``; they do not count against the grid;
    * a definite block of either sign (``sign``): the diagonal of every
      coupled row must be positive, or every one negative;
    * a Lagrange-bordered system: ``(N+1)×(N+1)`` with the grid in the
      leading ``N×N`` block and a symmetric last row and column
      (``border``).

    Explicitly stored zeros couple nothing and are ignored. The values are
    not checked beyond the diagonal's sign (symmetry and the M-matrix property
    are the preconditioner's business).

    Parameters
    ----------
    A : sparse matrix or ndarray, shape (n, n)
        A LinearOperator has no readable pattern and gives ``None``.
    key : tuple, optional
        ``A``'s :func:`matrix_key` when the caller has it already (saves the
        checksum pass).

    Returns
    -------
    GridStructure or None

    Notes
    -----
    One numba pass over the stored entries (it stops at the first fourth
    distinct distance, so non-grid matrices are rejected almost at once),
    then O(n) NumPy checks on one byte per row. The result is cached per
    matrix object, keyed by :func:`matrix_key`, so a repeated call on an
    unchanged matrix costs one checksum pass.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, linsolve
    >>> from linsolve.structure import find_grid
    >>> find_grid(linsolve.problems.poisson((16, 16, 16))).shape   # n = 4096
    (16, 16, 16)
    >>> find_grid(linsolve.problems.poisson((64, 64))).shape       # n = 4096 too
    (64, 64)
    >>> find_grid(linsolve.problems.poisson((12, 10, 7))).shape
    (12, 10, 7)
    >>> find_grid(sp.identity(4096, format="csr")) is None         # no couplings, no grid
    True
    """
    mat = _as_csr(A)
    if mat is None:
        return None
    if key is None or mat is not A:
        key = matrix_key(mat)
    with _CACHE_LOCK:
        entry = _CACHE.get(id(A))
    if entry is not None and entry[0]() is A and entry[1] == key:
        return entry[2]
    result = _find_grid_csr(mat)
    if sp.issparse(A):
        try:
            ref = weakref.ref(A, lambda _, k=id(A): _CACHE.pop(k, None))
        except TypeError:  # pragma: no cover - objects without weak references
            return result
        with _CACHE_LOCK:
            _CACHE[id(A)] = (ref, key, result)
    return result


def _as_csr(A) -> Optional[sp.csr_matrix]:
    """Canonical CSR view of ``A`` without a pass over its values; ``None`` when it has no pattern."""
    if isinstance(A, LinearOperator):
        return None
    if sp.issparse(A):
        mat = A.tocsr() if A.format != "csr" else A
    else:
        arr = np.asarray(A)
        if arr.ndim != 2 or arr.dtype == object:
            raise ValueError(f"A must be a 2-D matrix, got shape {arr.shape}")
        mat = sp.csr_matrix(arr)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"A must be square, got shape {mat.shape}")
    if mat.dtype.kind not in "fiub" or mat.shape[0] == 0:
        return None  # complex or empty: no grid path
    if mat.dtype.kind != "f":
        mat = mat.astype(np.float64)
    if not mat.has_canonical_format:
        mat = mat.copy()
        mat.sum_duplicates()
    return mat


def _scan(mat: sp.csr_matrix, m: int):
    from .kernels.structure import MAX_OFFSETS, grid_scan

    offsets = np.zeros(MAX_OFFSETS, np.int64)
    bits = np.empty(m, np.uint8)
    diag = np.empty(m)
    border = np.empty(m)
    count = grid_scan(mat.indptr, mat.indices, mat.data, m, offsets, bits, diag, border)
    if count < 0:
        return None
    return offsets[:count], bits, diag, border


def _find_grid_csr(mat: sp.csr_matrix) -> Optional[GridStructure]:
    """:func:`find_grid` on a validated canonical CSR matrix (no cache)."""
    n = mat.shape[0]
    found = _grid_of_block(mat, n)
    if found is not None:
        return found
    # A Lagrange border couples the last unknown to every cell: try the leading block alone.
    if n > 4:
        return _grid_of_block(mat, n - 1)
    return None


def _grid_of_block(mat: sp.csr_matrix, m: int) -> Optional[GridStructure]:
    scanned = _scan(mat, m)
    if scanned is None:
        return None
    offsets, bits, diag, border_col = scanned
    shape = _shape_from_offsets(sorted(int(d) for d in offsets), m)
    if shape is None or _wraps(shape, offsets, bits):
        return None
    active = bits != 0
    if not active.any():
        return None
    sign = definite_sign(diag[active])
    if not sign:
        return None
    border = None
    if m < mat.shape[0]:
        border = _border(mat, m, border_col)
        if border is None:
            return None
    elif np.any(border_col):  # pragma: no cover - m == n has no border columns
        return None
    return GridStructure(shape=shape, sign=sign, inactive=~active, border=border)


def _shape_from_offsets(offsets: list, m: int) -> Optional[tuple]:
    if len(offsets) < 2 or offsets[0] != 1:
        return None
    if len(offsets) == 2:
        nz = offsets[1]
        if m % nz:
            return None
        shape = (m // nz, nz)
    else:
        nz, plane = offsets[1], offsets[2]
        if plane % nz or m % plane:
            return None
        shape = (m // plane, plane // nz, nz)
    if min(shape) < 2:
        return None
    return shape


def _wraps(shape: tuple, offsets: np.ndarray, bits: np.ndarray) -> bool:
    """True when a coupling leaves the grid line it starts on (periodic or mis-shaped)."""
    grid = bits.reshape(shape)
    for k, distance in enumerate(offsets):
        axis = len(shape) - 1 - sorted(int(d) for d in offsets).index(int(distance))
        last = [slice(None)] * len(shape)
        first = [slice(None)] * len(shape)
        last[axis], first[axis] = -1, 0
        plus, minus = np.uint8(1 << (2 * k)), np.uint8(1 << (2 * k + 1))
        if np.any(grid[tuple(last)] & plus) or np.any(grid[tuple(first)] & minus):
            return True
    return False


def _border(mat: sp.csr_matrix, m: int, column: np.ndarray) -> Optional[Border]:
    start, end = mat.indptr[m], mat.indptr[m + 1]
    cols, vals = mat.indices[start:end], mat.data[start:end].astype(np.float64)
    row = np.zeros(m)
    inner = cols < m
    row[cols[inner]] = vals[inner]
    corner = float(vals[~inner].sum())
    scale = max(float(np.abs(column).max()), float(np.abs(row).max()))
    if scale == 0.0:
        return None
    if np.max(np.abs(row - column)) > 1e-6 * scale:
        return None  # not symmetric: no CG-friendly border
    return Border(size=m, column=column, row=row, corner=corner)


def find_border(A) -> Optional[Border]:
    """The Lagrange border of ``A`` when its last row and column couple to most unknowns, else ``None``.

    :func:`find_grid` finds a border around a grid block; this looks at the
    border alone, for a block that is no grid (a periodic domain: PhiFlow
    borders its periodic pressure matrix as it does a closed box). The last
    row must reach more than half the other unknowns, equal the last column
    (so the whole matrix can be symmetric) and hold a finite corner.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, linsolve
    >>> from linsolve.structure import find_border
    >>> L = linsolve.problems.poisson((8, 8))
    >>> ones = sp.csr_matrix(np.ones((64, 1)))
    >>> bordered = sp.bmat([[L, ones], [ones.T, None]]).tocsr()
    >>> find_border(bordered).size, find_border(L) is None
    (64, True)
    """
    mat = _as_csr(A)
    if mat is None or mat.shape[0] < 5:
        return None
    m = mat.shape[0] - 1
    start, end = mat.indptr[m], mat.indptr[m + 1]
    if 2 * np.count_nonzero(mat.data[start:end]) <= m:
        return None
    column = np.asarray(mat[:m, m].todense(), dtype=np.float64).ravel()
    if not np.all(np.isfinite(column)):
        return None
    return _border(mat, m, column)


# ----------------------------------------------------------------------------- null space

#: A row sum counts as zero below this times the row's diagonal, in float64 whatever A's dtype. Float32 data
#: of a singular matrix whose coefficients round (1/rho faces, 1/h^2 of an odd h) sums to ~1e-7 per row: the
#: matrix as stored is then no longer singular (smallest eigenvalue -2.3e-5 on a 97x61 two-phase box), and
#: projecting the constants out of a Krylov space it does not keep (A c != 0) broke PCG down ("r^T M r
#: changed sign", then plain CG to maxiter); taken as the regular matrix it is, the same data converge in
#: 6-11 iterations (the multigrid's coarse solve still treats the near-null mode as null). Representable
#: coefficients (PhiFlow's closed box, periodic domains) sum to exactly zero in float32 too.
ROW_SUM_RTOL = 1000 * float(np.finfo(np.float64).eps)


def grid_nullspace(A, structure: GridStructure, *, rtol: float | None = None, sparse: bool = False):
    """Basis of the null space of the grid block of ``A``: one indicator per closed region.

    A connected region of coupled cells whose rows all sum to zero (no
    Dirichlet face: a closed box, a pocket sealed by obstacles) carries the
    constant vector in the null space of a pressure matrix. Returns an array of
    shape ``(N, k)`` (``k = 0`` when the block is regular), columns normalised
    to unit length; with ``sparse=True`` a CSR matrix (a porous medium seals
    hundreds of pockets: 377 on 1024², 3 GB dense, and every projection
    would read all of it).

    Parameters
    ----------
    A : sparse matrix
        The matrix :func:`find_grid` described (bordered or not).
    structure : GridStructure
    rtol : float, optional
        A row sum counts as zero below ``rtol * |diagonal|`` (default
        :data:`ROW_SUM_RTOL`).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.structure import find_grid, grid_nullspace
    >>> A = linsolve.problems.poisson((6, 6), bc="neumann")
    >>> grid_nullspace(A, find_grid(A)).shape
    (36, 1)
    >>> grid_nullspace(linsolve.problems.poisson((6, 6)), find_grid(linsolve.problems.poisson((6, 6)))).shape
    (36, 0)
    """
    mat = as_sparse_matrix(A, "A")
    m = structure.n
    block = mat[:m, :m] if mat.shape[0] != m else mat
    labels = closed_region_labels(block, ~structure.inactive, rtol=rtol)
    if labels is None:  # every coupled cell reaches a Dirichlet face: no closed region (the usual case)
        return sp.csr_matrix((m, 0)) if sparse else np.zeros((m, 0))
    basis = nullspace_basis(labels)
    return basis if sparse else basis.toarray()


def closed_region_labels(A, active=None, *, rtol: float | None = None):
    """Labels ``0..k-1`` of the closed regions of a symmetric matrix (``-1`` elsewhere), or None when there are none.

    A closed region is a connected set of coupled rows that all sum to zero:
    the constant vector on it is in A's null space (a pressure matrix's
    closed box, a pocket sealed by obstacles, a periodic domain without a
    Dirichlet face). ``active``: the rows that count (default: rows with an
    off-diagonal entry; decoupled rows are solved on their own). A row sum
    counts as zero below ``rtol * |diagonal|`` (default :data:`ROW_SUM_RTOL`,
    whatever A's dtype: the sums are taken in float64). About two SpMVs when
    there is no closed region (the usual case).

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.structure import closed_region_labels
    >>> closed_region_labels(linsolve.problems.poisson((6, 6))) is None
    True
    >>> labels = closed_region_labels(linsolve.problems.poisson((6, 6), bc="neumann"))
    >>> int(labels.max()) + 1, bool((labels == 0).all())
    (1, True)
    """
    from scipy.sparse.csgraph import connected_components

    from .kernels.structure import unreached_rows

    mat = as_sparse_matrix(A, "A")
    m = mat.shape[0]
    if rtol is None:
        rtol = ROW_SUM_RTOL
    if active is None:
        active = (np.diff(mat.indptr) - (mat.diagonal() != 0)) > 0
    active = np.asarray(active, dtype=bool)
    seen = np.zeros(m, dtype=np.int8)
    if unreached_rows(mat.indptr, mat.indices, mat.data, m, active, rtol, seen) == 0:
        return None
    idx = np.flatnonzero(active)
    sub = mat[idx][:, idx]
    n_comp, comp = connected_components(sub, directed=False)
    row_sums = np.abs(np.asarray(sub.sum(axis=1)).ravel())
    diag = np.abs(sub.diagonal())
    leaky = np.zeros(n_comp, bool)
    np.logical_or.at(leaky, comp, row_sums > rtol * diag)
    closed = np.flatnonzero(~leaky)
    if closed.size == 0:
        return None
    column = np.full(n_comp, -1, dtype=np.int64)
    column[closed] = np.arange(closed.size)
    labels = np.full(m, -1, dtype=np.int64)
    labels[idx] = column[comp]
    return labels


def nullspace_basis(labels) -> sp.csr_matrix:
    """``(n, k)`` CSR basis of unit-length indicators, one per closed region of ``labels`` (see
    :func:`closed_region_labels`)."""
    labels = np.asarray(labels)
    member = np.flatnonzero(labels >= 0)
    k = int(labels.max()) + 1 if member.size else 0
    cols = labels[member]
    sizes = np.bincount(cols, minlength=k)
    return sp.csr_matrix((1.0 / np.sqrt(sizes[cols]), (member, cols)), shape=(labels.size, k))


@dataclass(frozen=True, eq=False)
class PinnedRows:
    """A matrix whose only asymmetry is the columns of its identity-like rows, split into a symmetric part.

    Codes pin a cell (the pressure of a closed box, a Dirichlet value) by
    overwriting its row with ``a_jj x_j = b_j`` and leave its column in the
    other rows. ``x_j = b_j / a_jj`` is known, so ``A x = b`` is exactly
    ``symmetric x = rhs(b)`` with those column entries moved to the
    right-hand side and the pinned rows written ``x_j = b_j / a_jj``
    (symmetric Dirichlet elimination): the same x, now a system CG and the
    multigrid accept whatever the sign or scale of ``a_jj``.
    """

    symmetric: sp.csr_matrix
    """``A`` without the entries in the columns of its pinned rows, and 1 on their diagonal (symmetric)."""
    rows: np.ndarray
    """The pinned rows (a nonzero diagonal and no other entry)."""
    diagonal: np.ndarray
    """``a_jj`` of the pinned rows."""
    moved: sp.csr_matrix
    """The entries taken out of the pinned rows' columns (A equals ``symmetric + moved`` off the pinned rows)."""

    def rhs(self, b):
        """``b - moved @ x_pinned`` with ``x_pinned = b_j / a_jj``: the symmetric system's right-hand side."""
        b = np.asarray(b).reshape(-1)
        known = np.zeros(b.shape[0], dtype=np.result_type(b.dtype, self.moved.dtype))
        known[self.rows] = b[self.rows] / self.diagonal
        out = b - self.moved @ known
        out[self.rows] = known[self.rows]
        return out.astype(b.dtype, copy=False)


def pinned_rows(A) -> Optional[PinnedRows]:
    """``A`` split as in :class:`PinnedRows` when that makes it symmetric, else ``None``.

    ``None`` as well when ``A`` has no pinned row with a column entry to move
    (a symmetric matrix, or one whose asymmetry lies elsewhere). One pass to
    find the entries, a symmetry check of the result.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.structure import pinned_rows
    >>> A = linsolve.problems.poisson((4, 4), bc="neumann").tolil()
    >>> A[0, :] = 0; A[0, 0] = 1.0                     # pin cell 0 by its row only
    >>> split = pinned_rows(A.tocsr())
    >>> split.rows.tolist(), float(abs(split.symmetric - split.symmetric.T).max())
    ([0], 0.0)
    >>> pinned_rows(linsolve.problems.poisson((4, 4))) is None
    True
    """
    from ._validation import check_symmetric as full_check

    mat = A.tocsr() if sp.issparse(A) else None
    if mat is None or mat.shape[0] != mat.shape[1] or mat.nnz == 0:
        return None
    mat = mat.copy() if not mat.has_canonical_format else mat
    mat.sum_duplicates()
    n = mat.shape[0]
    row_of = np.repeat(np.arange(n), np.diff(mat.indptr))
    nonzero = mat.data != 0
    off_diagonal = np.bincount(row_of[nonzero & (mat.indices != row_of)], minlength=n)
    diag = mat.diagonal()
    pinned = (off_diagonal == 0) & (diag != 0)
    if not pinned.any():
        return None
    take = nonzero & pinned[mat.indices] & (mat.indices != row_of)
    if not take.any():
        return None
    # each part gets its own index arrays: eliminate_zeros compacts them in place
    moved = sp.csr_matrix((np.where(take, mat.data, 0), mat.indices.copy(), mat.indptr.copy()), shape=mat.shape)
    moved.eliminate_zeros()
    data = np.where(take, 0, mat.data)
    data[(mat.indices == row_of) & pinned[row_of]] = 1  # x_j = b_j / a_jj, from rhs()
    symmetric = sp.csr_matrix((data, mat.indices.copy(), mat.indptr.copy()), shape=mat.shape)
    symmetric.eliminate_zeros()
    try:
        full_check(symmetric)
    except ValueError:
        return None
    rows = np.flatnonzero(pinned)
    return PinnedRows(symmetric=symmetric, rows=rows, diagonal=diag[rows], moved=moved)


#: A compact numbering is embedded only when the grid it spans has at most this many cells per row of A: the
#: multigrid's work grows with the grid, and a porous mask spanning 3.7 cells per row was solved 10-20x slower
#: than by plain CG (free surfaces and obstacles span 1.0-2.2).
COMPACT_MAX_FILL = 3.0
#: Share of couplings between consecutive rows below which a matrix is taken to be in no grid order at all.
COMPACT_MIN_NEXT = 0.15


@dataclass(frozen=True, eq=False)
class CompactGrid:
    """Where the rows of a matrix numbered over some cells of a grid sit on a full grid.

    Made by :func:`find_compact_grid`; :meth:`embed` and :meth:`expand` move a system there.
    """

    shape: tuple
    """The full grid (C order) the rows are placed on."""
    cells: np.ndarray
    """Full-grid index of every row of ``A``."""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def embed(self, A) -> sp.csr_matrix:
        """``A`` on the full grid: its entries between the placed cells, identity rows on the others."""
        mat = A.tocsr()
        coo = mat.tocoo()
        unused = np.ones(self.size, dtype=bool)
        unused[self.cells] = False
        free = np.flatnonzero(unused)
        rows = np.concatenate([self.cells[coo.row], free])
        cols = np.concatenate([self.cells[coo.col], free])
        data = np.concatenate([coo.data, np.ones(free.size, dtype=coo.data.dtype)])
        out = sp.csr_matrix((data, (rows, cols)), shape=(self.size, self.size))
        out.sort_indices()
        return out

    def expand(self, v):
        """A vector over A's rows as one over the full grid (zeros on the added cells)."""
        v = np.asarray(v)
        out = np.zeros(self.size, dtype=v.dtype)
        out[self.cells] = v
        return out


def find_compact_grid(A, *, max_fill: float = COMPACT_MAX_FILL) -> Optional[CompactGrid]:
    """A 5/7-point stencil matrix numbered over some cells of a grid only (its fluid cells), placed on a grid.

    Fluid codes often number only the cells they solve for, in the order of
    the grid: :func:`find_grid` sees no grid then. The coupling graph is laid
    out on a 2D or 3D grid (:func:`linsolve.kernels.structure.compact_grid_coordinates`)
    and accepted only if every coupling joins unit neighbours and no two rows
    share a cell; separate regions are stacked along the slowest axis. The
    layout need not be the code's own grid: solving the embedded matrix
    (:meth:`CompactGrid.embed`, identity rows on the added cells) is the same
    system. ``None`` when A is no such matrix (or is a full-grid one), or the
    layout would need more than ``max_fill`` cells per row.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.structure import find_compact_grid, find_grid
    >>> A = linsolve.problems.poisson((30, 30))
    >>> y, x = np.mgrid[:30, :30]
    >>> fluid = np.flatnonzero((x - 15) ** 2 + (y - 15) ** 2 < 100)   # the cells a code solves for
    >>> compact = A[fluid][:, fluid].tocsr()
    >>> grid = find_compact_grid(compact)
    >>> find_grid(compact) is None, grid.shape, find_grid(grid.embed(compact)).shape
    (True, (19, 19), (19, 19))
    """
    from .kernels.structure import compact_grid_coordinates, coupling_scan, told_axes

    mat = _as_csr(A)
    if mat is None or mat.shape[0] < 4:
        return None
    n = mat.shape[0]
    most, total, consecutive = coupling_scan(mat.indptr, mat.indices, mat.data)
    if total == 0 or most > 6 or consecutive < COMPACT_MIN_NEXT * total:
        # grid order makes a third (3D) to a half (2D) of the couplings join consecutive rows
        return None
    labels = np.empty(mat.indices.shape[0], dtype=np.int64)
    for dims in ((2, 3) if most <= 4 else (3,)):
        mid_max, slow_min, untold = told_axes(mat.indptr, mat.indices, mat.data, dims, labels)
        threshold = int(np.sqrt(float(mid_max) * float(slow_min))) if 0 < mid_max < slow_min else 0
        # An untold coupling in 3D goes along the middle axis first (threshold 0) or, the second time, along
        # the slowest first (1): regions of different sizes mix the two kinds of row gaps (6 spheres in 40^3).
        for attempt in ((threshold,) if dims == 2 else (threshold, 1 if threshold != 1 else 0)):
            pos = np.zeros((n, 3), dtype=np.int64)
            component = np.full(n, -1, dtype=np.int64)
            ncomp = compact_grid_coordinates(mat.indptr, mat.indices, mat.data, labels, untold, dims, attempt,
                                             pos, component)
            if ncomp <= 0:
                continue
            if dims == 2:
                pos = pos[:, [1, 0, 2]]  # the slower axis of a 2D layout first: regions stack along it
            placed = _layout(mat, pos, component, ncomp, dims, n, max_fill)
            if placed is not None:
                return placed
    return None


def _layout(mat, pos, component, ncomp, dims, n, max_fill) -> Optional[CompactGrid]:
    """Check the coordinates and pack the regions (and the uncoupled rows) into one grid."""
    from .kernels.structure import all_distinct, component_boxes, unit_couplings

    if not unit_couplings(mat.indptr, mat.indices, mat.data, pos, component):
        return None
    coupled = component >= 0
    lo = np.full((ncomp, 3), np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full((ncomp, 3), np.iinfo(np.int64).min, dtype=np.int64)
    component_boxes(pos, component, lo, hi)
    extent = hi - lo + 1
    if dims == 2 and np.any(extent[:, 1] != 1):
        return None
    loose = np.flatnonzero(~coupled)
    best = None
    # Regions (a pool, drops, sheets) are packed in shelves on the plane of axes 0 and 2, one empty cell apart,
    # axis 1 as wide as the widest (3D); both orientations of the plane, and shelf widths from the widest region
    # to one long row, are tried for the smallest grid (a collapsing column, a sheet and 14 drops on 128^2: stacked
    # in one line they spanned more than 3 cells per row and were refused, RS-AMG at 1.4x PyAMG's time; packed, 2.1).
    for swap in ((False, True) if ncomp > 1 else (False,)):
        ext = extent[:, [2, 1, 0]] if swap else extent
        w1 = int(ext[:, 1].max())
        widest, total = int(ext[:, 2].max()), int((ext[:, 2] + 1).sum())
        for width in sorted({widest, total, *np.linspace(widest, total, 6).astype(int).tolist()}):
            origin, depth = _shelves(ext, width)
            extra = -(-loose.size // (w1 * width)) if loose.size else 0
            depth_all = depth + (1 + extra if extra else 0)
            size = depth_all * w1 * width
            if best is None or size < best[0]:
                best = (size, swap, origin, (depth_all, w1, width), depth_all - extra)
    size, swap, origin, shape3, first_loose = best
    if size > max_fill * n:
        return None
    local = pos[coupled] - lo[component[coupled]]
    if swap:
        local = local[:, [2, 1, 0]]
    at = origin[component[coupled]] + local
    w1, w2 = shape3[1], shape3[2]
    cells = np.empty(n, dtype=np.int64)
    cells[coupled] = (at[:, 0] * w1 + at[:, 1]) * w2 + at[:, 2]
    if loose.size:
        cells[loose] = first_loose * w1 * w2 + np.arange(loose.size)
    if not all_distinct(cells, size):
        return None
    depth = shape3[0]
    shape = shape3 if dims == 3 else (depth, w2)
    return CompactGrid(shape=tuple(int(s) for s in shape), cells=cells)


def _shelves(extent, width: int):
    """Shelf packing of boxes ``extent`` (``(k, 3)``; axis 1 ignored) in rows of ``width`` cells along axis 2,
    tallest first, one empty cell between neighbours: ``(origin of each box, total depth along axis 0)``."""
    origin = np.zeros((extent.shape[0], 3), dtype=np.int64)
    y = x = shelf = 0
    for k in np.argsort(-extent[:, 0], kind="stable"):
        h, w = int(extent[k, 0]), int(extent[k, 2])
        if x and x + w > width:
            y, x, shelf = y + shelf + 1, 0, 0
        origin[k, 0], origin[k, 2] = y, x
        x += w + 1
        shelf = max(shelf, h)
    return origin, y + shelf
