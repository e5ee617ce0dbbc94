"""The one validation layer every public entry point goes through.

Each check raises ``ValueError`` or ``TypeError`` with a message that names the
offending argument, so a user never meets a crash deep inside numba or torch.
Nothing here knows about any particular method.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator

__all__ = [
    "as_sparse_matrix",
    "as_operator",
    "as_vector",
    "as_preconditioner",
    "check_tolerances",
    "check_maxiter",
    "check_callback",
    "check_omega",
    "check_symmetric",
    "check_positive_diagonal",
    "check_grid_shape",
    "solve_dtype",
    "make_system",
    "System",
]

_FLOAT_DTYPES = (np.float32, np.float64)


def solve_dtype(*dtypes) -> np.dtype:
    """Floating dtype a solve runs in: float32 only when every input is float32.

    Integers and booleans are converted (as SciPy does), complex is rejected
    by the callers before this is reached.
    """
    kinds = [np.dtype(d) for d in dtypes if d is not None]
    if kinds and all(d == np.float32 for d in kinds):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _reject_complex(dtype, name: str) -> None:
    if np.issubdtype(dtype, np.complexfloating):
        raise TypeError(f"{name} has complex dtype {dtype}; linsolve solves real systems only")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise TypeError(f"{name} has non-numeric dtype {dtype}")


def as_sparse_matrix(A, name: str = "A", *, square: bool = True, allow_empty: bool = False) -> sp.csr_matrix:
    """Convert ``A`` (sparse, dense array) to CSR once, checking shape and values.

    Returns a ``csr_matrix`` with float32 or float64 data and sorted, duplicate-free
    indices (kernels rely on that). Raises on complex, NaN/Inf, non-2D, empty or
    non-square input.
    """
    if isinstance(A, LinearOperator):
        raise TypeError(f"{name} must be an explicit matrix here (got a LinearOperator)")
    if sp.issparse(A):
        M = A
    else:
        try:
            arr = np.asarray(A)
        except Exception as exc:  # pragma: no cover - exotic objects
            raise TypeError(f"{name} cannot be converted to a matrix: {exc}") from None
        if arr.dtype == object:
            raise TypeError(f"{name} must be a numeric matrix, got an object array")
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
        M = arr
    _reject_complex(M.dtype, name)
    if M.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {M.shape}")
    nrow, ncol = M.shape
    if square and nrow != ncol:
        raise ValueError(f"{name} must be square, got shape {M.shape}")
    if nrow == 0 or ncol == 0:
        if not allow_empty:
            raise ValueError(f"{name} is empty (shape {M.shape})")
    dtype = np.float32 if M.dtype == np.float32 else np.float64
    M = sp.csr_matrix(M, dtype=dtype, copy=False)
    if not np.all(np.isfinite(M.data)):
        bad = int(np.flatnonzero(~np.isfinite(M.data))[0])
        row = int(np.searchsorted(M.indptr, bad, side="right") - 1)
        raise ValueError(f"{name} contains NaN or Inf (first in row {row})")
    if not M.has_canonical_format:
        M = M.copy()
        M.sum_duplicates()
        M.sort_indices()
    return M


def as_operator(A, name: str = "A"):
    """Validate ``A`` as a square operator; sparse and dense inputs become CSR.

    LinearOperators are kept as they are (their values cannot be checked cheaply).
    Returns ``(operator, matrix_or_None)``.
    """
    if isinstance(A, LinearOperator):
        if len(A.shape) != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"{name} must be square, got shape {A.shape}")
        if A.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {A.shape})")
        if A.dtype is not None:
            _reject_complex(np.dtype(A.dtype), name)
        return A, None
    mat = as_sparse_matrix(A, name)
    return aslinearoperator(mat), mat


def as_vector(v, n: int, name: str = "b", dtype=None, *, copy: bool = False) -> np.ndarray:
    """Return ``v`` as a finite 1-D float array of length ``n``.

    Shape ``(n, 1)`` is accepted as SciPy does; integer input is converted.
    """
    if sp.issparse(v):
        v = v.toarray()
    try:
        arr = np.asarray(v)
    except Exception as exc:  # pragma: no cover
        raise TypeError(f"{name} cannot be converted to an array: {exc}") from None
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got an object array")
    _reject_complex(arr.dtype, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, 1), got {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n} to match A")
    target = np.dtype(dtype) if dtype is not None else (
        np.dtype(np.float32) if arr.dtype == np.float32 else np.dtype(np.float64))
    out = np.array(arr, dtype=target, copy=True) if copy else np.asarray(arr, dtype=target)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or Inf (first at index {int(np.flatnonzero(~np.isfinite(out))[0])})")
    return out


def as_preconditioner(M, n: int, name: str = "M") -> Optional[LinearOperator]:
    """``None`` or a ``LinearOperator``/matrix of shape ``(n, n)``.

    A bare callable is refused: its shape and linearity cannot be checked, and
    SciPy would silently treat it differently across versions.
    """
    if M is None:
        return None
    if isinstance(M, LinearOperator):
        op = M
    elif sp.issparse(M) or isinstance(M, np.ndarray):
        _reject_complex(M.dtype, name)
        op = aslinearoperator(M)
    elif callable(M):
        raise TypeError(
            f"{name} is a plain callable; wrap it as scipy.sparse.linalg.LinearOperator((n, n), matvec=...)")
    else:
        raise TypeError(f"{name} must be a LinearOperator, sparse matrix or ndarray, got {type(M).__name__}")
    if tuple(op.shape) != (n, n):
        raise ValueError(f"{name} has shape {tuple(op.shape)}, expected {(n, n)} to match A")
    return op


def check_tolerances(rtol, atol) -> tuple[float, float]:
    for value, name in ((rtol, "rtol"), (atol, "atol")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return float(rtol), float(atol)


def check_maxiter(maxiter, n: int, default_factor: int = 10) -> int:
    """``None`` means ``default_factor * n`` (SciPy's CG default)."""
    if maxiter is None:
        return int(default_factor * n)
    if isinstance(maxiter, bool) or not isinstance(maxiter, numbers.Integral):
        if isinstance(maxiter, numbers.Real) and float(maxiter).is_integer():
            maxiter = int(maxiter)
        else:
            raise TypeError(f"maxiter must be an integer or None, got {maxiter!r}")
    if maxiter <= 0:
        raise ValueError(f"maxiter must be positive, got {maxiter}")
    return int(maxiter)


def check_callback(callback) -> Optional[Callable]:
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    return callback


def check_omega(omega, name: str = "omega") -> float:
    if isinstance(omega, bool) or not isinstance(omega, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(omega).__name__}")
    if not (0.0 < float(omega) < 2.0):
        raise ValueError(f"{name} must lie in (0, 2) for SOR/SSOR to converge, got {omega}")
    return float(omega)


def check_symmetric(A: sp.spmatrix, name: str = "A", rtol: float = 1e-10) -> None:
    """Raise if ``A`` is not symmetric to ``rtol`` relative to its largest entry.

    Costs one sparse transpose and subtraction, O(nnz).
    """
    if A.shape[0] == 0:
        return
    scale = abs(A).max() if A.nnz else 0.0
    asym = abs(A - A.T)
    worst = asym.max() if asym.nnz else 0.0
    if worst > rtol * max(scale, np.finfo(float).tiny):
        coo = asym.tocoo()
        k = int(np.argmax(coo.data))
        raise ValueError(
            f"{name} is not symmetric: |A[{coo.row[k]},{coo.col[k]}] - A[{coo.col[k]},{coo.row[k]}]| = "
            f"{worst:.3g} (relative {worst / scale:.3g}); CG and DCDM need a symmetric matrix")


def check_positive_diagonal(A: sp.spmatrix, name: str = "A") -> np.ndarray:
    """Return the diagonal; raise naming the first row whose diagonal is <= 0."""
    diag = A.diagonal()
    bad = np.flatnonzero(~(diag > 0))
    if bad.size:
        raise ValueError(
            f"{name} has a zero or negative diagonal entry in row {int(bad[0])} "
            f"(value {float(diag[bad[0]])!r}); SOR/SSOR need a positive diagonal")
    return diag


def check_grid_shape(grid_shape, n: int, name: str = "grid_shape", dims=(2, 3)) -> tuple[int, ...]:
    """A tuple of positive ints with ``prod == n`` and a supported dimension."""
    try:
        shape = tuple(int(s) for s in grid_shape)
    except Exception:
        raise TypeError(f"{name} must be a tuple of ints, got {grid_shape!r}") from None
    if len(shape) not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got {shape}")
    if any(s <= 0 for s in shape):
        raise ValueError(f"{name} must be positive, got {shape}")
    if int(np.prod(shape)) != n:
        raise ValueError(f"{name} {shape} has {int(np.prod(shape))} cells but A has {n} rows")
    return shape


@dataclass
class System:
    """A validated linear system, ready for any iterative method."""

    A: LinearOperator
    matrix: Optional[sp.csr_matrix]
    b: np.ndarray
    x: np.ndarray
    M: Optional[LinearOperator]
    rtol: float
    atol: float
    maxiter: int
    callback: Optional[Callable]
    dtype: np.dtype
    bnorm: float
    tol: float
    """Absolute threshold on the true residual: ``max(rtol * ||b||, atol)``."""

    @property
    def n(self) -> int:
        return self.b.shape[0]


def make_system(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
                maxiter_factor: int = 10) -> System:
    """Validate and convert everything a Krylov method needs, in one place.

    The solve runs in float32 only when A, b (and x0 if given) are all float32.
    """
    op, mat = as_operator(A, "A")
    n = op.shape[0]
    b_arr = as_vector(b, n, "b")
    x0_dtype = None
    if x0 is not None:
        x0_arr = as_vector(x0, n, "x0")
        x0_dtype = x0_arr.dtype
    a_dtype = mat.dtype if mat is not None else (np.dtype(op.dtype) if op.dtype is not None else None)
    dtype = solve_dtype(a_dtype, b_arr.dtype, x0_dtype)
    if mat is not None and mat.dtype != dtype:
        mat = mat.astype(dtype)
        op = aslinearoperator(mat)
    b_arr = np.asarray(b_arr, dtype=dtype)
    x = np.zeros(n, dtype=dtype) if x0 is None else np.array(x0_arr, dtype=dtype, copy=True)
    rtol, atol = check_tolerances(rtol, atol)
    maxiter = check_maxiter(maxiter, n, maxiter_factor)
    M_op = as_preconditioner(M, n)
    callback = check_callback(callback)
    bnorm = float(np.linalg.norm(b_arr))
    tol = max(rtol * bnorm, atol)
    return System(op, mat, b_arr, x, M_op, rtol, atol, maxiter, callback, dtype, bnorm, tol)
