"""The one validation layer every public entry point goes through.

Each check raises ``ValueError`` or ``TypeError`` with a message that names the
offending argument, so a user never meets a crash deep inside numba or torch.
Nothing here knows about any particular method.
"""
from __future__ import annotations

import contextlib
import numbers
import os
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator

__all__ = [
    "as_sparse_matrix",
    "definite_sign",
    "as_operator",
    "as_vector",
    "as_preconditioner",
    "check_tolerances",
    "stopping_threshold",
    "ToleranceError",
    "check_maxiter",
    "check_callback",
    "check_omega",
    "check_symmetric",
    "CG_SYMMETRY_RTOL",
    "check_positive_diagonal",
    "check_grid_shape",
    "solve_dtype",
    "make_system",
    "System",
    "validated",
]

_FLOAT_DTYPES = (np.float32, np.float64)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` made by the caller of this function that names the user's line.

    The first frame outside the linsolve package: the user's call, or the
    simulator's when ``scipy.sparse.linalg.cg`` is patched, however many of
    our wrappers lie between (Python 3.12's ``skip_file_prefixes``, by hand).
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def solve_dtype(*dtypes) -> np.dtype:
    """Floating dtype a solve runs in, by SciPy's coercion rules (``make_system``).

    Single precision (float32 / complex64) only when every input is single
    precision; complex when any input is complex. Integers and booleans count
    as float64, as in SciPy.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve._validation import solve_dtype
    >>> [str(solve_dtype(*d)) for d in [(np.float32, np.float32), (np.float32, np.float64),
    ...                                 (np.float32, np.complex64), (np.float64, np.complex64), (np.int64,)]]
    ['float32', 'float64', 'complex64', 'complex128', 'float64']
    """
    kinds = [np.dtype(d) for d in dtypes if d is not None]
    single = bool(kinds) and all(d in (np.float32, np.complex64) for d in kinds)
    if any(d.kind == "c" for d in kinds):
        return np.dtype(np.complex64 if single else np.complex128)
    return np.dtype(np.float32 if single else np.float64)


def complex_operand(*named) -> Optional[str]:
    """The name of the first complex operand among ``(value, name)`` pairs (arrays, matrices, operators,
    tensors, lists), or None: how a real-only method tells what it cannot take before touching it.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve._validation import complex_operand
    >>> complex_operand((np.eye(2), "A"), (np.ones(2) + 1j, "b")), complex_operand((np.eye(2), "A"))
    ('b', None)
    """
    for value, name in named:
        dtype = getattr(value, "dtype", None)
        if dtype is None and value is not None and not hasattr(value, "shape"):
            try:
                dtype = np.asarray(value).dtype
            except Exception:  # pragma: no cover - not array-like: validation names it later
                continue
        if dtype is not None and getattr(dtype, "is_complex", None) is True:  # torch dtypes
            return name
        try:
            if dtype is not None and np.dtype(dtype).kind == "c":
                return name
        except TypeError:
            continue
    return None


def _reject_complex(dtype, name: str, allow_complex: bool = False) -> None:
    if np.issubdtype(dtype, np.complexfloating) and not allow_complex:
        raise TypeError(f"{name} has complex dtype {dtype}; this method solves real systems only "
                        f"(linsolve.cg takes complex Hermitian ones)")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise TypeError(f"{name} has non-numeric dtype {dtype}")


_CALL = threading.local()  # matrices validated by the call in progress on this thread


@contextlib.contextmanager
def validated(A, matrix: sp.csr_matrix):
    """Within the block, :func:`as_sparse_matrix` returns ``matrix`` for ``A`` (or ``matrix``) without re-checking.

    For entry points that validate once per call (:func:`linsolve.solve`,
    :meth:`linsolve.SequenceSolver.solve`): ``matrix`` is what
    ``as_sparse_matrix(A)`` returned at the start of the call, and the
    drivers, preconditioners and tuners it calls receive that validated value
    instead of paying for the NaN scan and the conversion again. Nothing
    outlives the call, so a matrix edited between calls is checked again.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve._validation import as_sparse_matrix, validated
    >>> A = linsolve.problems.poisson((4, 4)).tocoo()
    >>> mat = as_sparse_matrix(A)
    >>> with validated(A, mat):
    ...     as_sparse_matrix(A) is mat
    True
    >>> as_sparse_matrix(A) is mat
    False
    """
    known = getattr(_CALL, "known", None)
    if known is None:
        known = _CALL.known = {}
    added = [k for k in (id(A), id(matrix)) if k not in known]
    for k in added:
        known[k] = (A, matrix)  # holding A keeps its id from being reused inside the block
    try:
        yield matrix
    finally:
        for k in added:
            known.pop(k, None)


def _already_validated(A, square: bool, allow_complex: bool):
    known = getattr(_CALL, "known", None)
    if not known:
        return None
    entry = known.get(id(A))
    if entry is None or (entry[0] is not A and entry[1] is not A):
        return None
    mat = entry[1]
    if (mat.dtype.kind == "c" and not allow_complex) or (square and mat.shape[0] != mat.shape[1]):
        return None  # let the full path raise its usual error
    return mat


def definite_sign(diagonal) -> int:
    """``+1`` when every entry of ``diagonal`` is positive, ``-1`` when every one is negative, else ``0``
    (mixed, a zero, or empty): the only sign a definite matrix with that diagonal can have.

    Examples
    --------
    >>> from linsolve._validation import definite_sign
    >>> definite_sign([2.0, 1.0]), definite_sign([-1.0, -3.0]), definite_sign([1.0, 0.0])
    (1, -1, 0)
    """
    d = np.asarray(diagonal)
    if d.size and np.all(d > 0):
        return 1
    if d.size and np.all(d < 0):
        return -1
    return 0


def _check_compressed_structure(M, name: str) -> None:
    """Refuse a CSR/CSC matrix whose index arrays point outside it (a corrupt file, a hand-built matrix):
    SciPy converts and multiplies such a matrix by reading past its arrays, which crashes the process or
    returns garbage. A few passes over the indices, far less than a solve; ``M`` is not modified."""
    if M.format not in ("csr", "csc"):
        return  # COO checks its indices on construction; BSR and the others are converted by SciPy's checked paths
    n_major, n_minor = M.shape if M.format == "csr" else M.shape[::-1]
    indptr, indices = np.asarray(M.indptr), np.asarray(M.indices)
    kind = "row" if M.format == "csr" else "column"
    problem = None
    if indptr.ndim != 1 or indptr.shape[0] != n_major + 1:
        problem = f"its index pointer has shape {indptr.shape}, expected ({n_major + 1},)"
    elif indptr[0] != 0:
        problem = f"its index pointer starts at {int(indptr[0])}, not 0"
    elif indptr[-1] > min(indices.shape[0], np.asarray(M.data).shape[0]):
        problem = (f"its index pointer ends at {int(indptr[-1])}, beyond its {indices.shape[0]} indices / "
                   f"{np.asarray(M.data).shape[0]} values")
    elif n_major and np.diff(indptr).min() < 0:
        problem = f"its index pointer decreases (at {kind} {int(np.argmax(np.diff(indptr) < 0))})"
    elif indptr[-1]:
        used = indices[:int(indptr[-1])]
        low, high = int(used.min()), int(used.max())
        if low < 0 or high >= n_minor:
            bad = int(np.flatnonzero((used < 0) | (used >= n_minor))[0])
            at = int(np.searchsorted(indptr, bad, side="right") - 1)
            problem = f"{kind} {at} holds index {int(used[bad])}, outside [0, {n_minor})"
    if problem is not None:
        raise ValueError(f"{name} is not a valid {M.format.upper()} matrix: {problem} (a corrupt file or "
                         f"hand-built index arrays)")


def as_sparse_matrix(A, name: str = "A", *, square: bool = True, allow_empty: bool = False,
                     allow_complex: bool = False) -> sp.csr_matrix:
    """Convert ``A`` (sparse, dense array) to CSR once, checking shape and values.

    Returns a ``csr_matrix`` with float32 or float64 data (complex64 /
    complex128 with ``allow_complex``) and sorted, duplicate-free indices
    (kernels rely on that). Raises on complex (unless allowed), NaN/Inf,
    non-2D, empty or non-square input. Inside :func:`validated` the value
    validated at the start of the call is returned as it is.
    """
    hit = _already_validated(A, square, allow_complex)
    if hit is not None:
        return hit
    if isinstance(A, LinearOperator):
        raise TypeError(f"{name} must be an explicit matrix here (got a LinearOperator)")
    if sp.issparse(A):
        M = A
        _check_compressed_structure(M, name)
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
    _reject_complex(M.dtype, name, allow_complex)
    if M.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {M.shape}")
    nrow, ncol = M.shape
    if square and nrow != ncol:
        raise ValueError(f"{name} must be square, got shape {M.shape}")
    if nrow == 0 or ncol == 0:
        if not allow_empty:
            raise ValueError(f"{name} is empty (shape {M.shape})")
    if M.dtype.kind == "c":
        dtype = np.complex64 if M.dtype == np.complex64 else np.complex128
    else:
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


def as_operator(A, name: str = "A", *, allow_complex: bool = False):
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
            _reject_complex(np.dtype(A.dtype), name, allow_complex)
        return A, None
    mat = as_sparse_matrix(A, name, allow_complex=allow_complex)
    return aslinearoperator(mat), mat


def as_vector(v, n: int, name: str = "b", dtype=None, *, copy: bool = False,
              allow_complex: bool = False) -> np.ndarray:
    """Return ``v`` as a finite 1-D float (or, if allowed, complex) array of length ``n``.

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
    _reject_complex(arr.dtype, name, allow_complex)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, 1), got {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n} to match A")
    if dtype is not None:
        target = np.dtype(dtype)
    elif arr.dtype.kind == "c":
        target = np.dtype(np.complex64 if arr.dtype == np.complex64 else np.complex128)
    else:
        target = np.dtype(np.float32 if arr.dtype == np.float32 else np.float64)
    out = np.array(arr, dtype=target, copy=True) if copy else np.asarray(arr, dtype=target)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or Inf (first at index {int(np.flatnonzero(~np.isfinite(out))[0])})")
    return out


def as_preconditioner(M, n: int, name: str = "M", *, allow_complex: bool = False) -> Optional[LinearOperator]:
    """``None`` or a ``LinearOperator``/matrix of shape ``(n, n)``.

    A bare callable is refused: its shape and linearity cannot be checked, and
    SciPy would silently treat it differently across versions.
    """
    if M is None:
        return None
    if isinstance(M, LinearOperator):
        op = M
    elif sp.issparse(M) or isinstance(M, np.ndarray):
        _reject_complex(M.dtype, name, allow_complex)
        op = aslinearoperator(M)
    elif callable(M):
        raise TypeError(
            f"{name} is a plain callable; wrap it as scipy.sparse.linalg.LinearOperator((n, n), matvec=...)")
    else:
        raise TypeError(f"{name} must be a LinearOperator, sparse matrix or ndarray, got {type(M).__name__}")
    if tuple(op.shape) != (n, n):
        raise ValueError(f"{name} has shape {tuple(op.shape)}, expected {(n, n)} to match A")
    return op


def _complexified(M: LinearOperator) -> LinearOperator:
    """A real preconditioner applied to complex vectors part by part (it is real-linear), so that compiled
    real-only preconditioners (multigrid, incomplete Cholesky) serve a complex Hermitian system too; for a
    real matrix ``M`` the products are those of ``M @ r`` itself."""
    real = M.matvec

    def matvec(r):
        r = np.asarray(r)
        if r.dtype.kind != "c":
            return real(r)
        out = np.asarray(real(np.ascontiguousarray(r.real)), dtype=np.result_type(r.dtype, np.complex64))
        out = out + 1j * np.asarray(real(np.ascontiguousarray(r.imag)))
        return out

    op = LinearOperator(M.shape, matvec=matvec, dtype=np.result_type(M.dtype, np.complex64))
    if hasattr(M, "symmetric"):
        op.symmetric = M.symmetric
    return op


class ToleranceError(ValueError, TypeError):
    """A tolerance that is not a real number.

    Both a ``ValueError`` (what SciPy raises for ``atol=None`` or
    ``atol="legacy"``) and a ``TypeError`` (what SciPy raises for
    ``rtol=None``), so code written against either keeps working.
    """


def _real_scalar(value, name: str) -> float:
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise ToleranceError(f"{name} must be a real number, got an array of shape {value.shape}")
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ToleranceError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def check_tolerances(rtol, atol) -> tuple[float, float]:
    """``(rtol, atol)`` as floats, accepting what ``scipy.sparse.linalg.cg`` accepts.

    Python, NumPy and 0-d array reals; ``0`` (run to ``maxiter``) and ``inf``
    (stop at once); a NaN ``rtol`` (SciPy then stops on ``atol`` alone, see
    :func:`stopping_threshold`). Refused: non-numbers (:class:`ToleranceError`,
    both a ``ValueError`` and a ``TypeError``), negative values and a NaN
    ``atol`` (``ValueError``).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve._validation import check_tolerances
    >>> check_tolerances(np.float32(0.5), np.array(0.0))
    (0.5, 0.0)
    >>> check_tolerances(1e-5, None)
    Traceback (most recent call last):
    ...
    linsolve._validation.ToleranceError: atol must be a real number, got None (NoneType)
    """
    rtol, atol = _real_scalar(rtol, "rtol"), _real_scalar(atol, "atol")
    if atol < 0 or atol != atol:
        raise ValueError(f"atol must be a real number >= 0, got {atol}")
    if rtol < 0:
        raise ValueError(f"rtol must be >= 0 (or NaN, as SciPy allows), got {rtol}")
    return rtol, atol


def _norm(v: np.ndarray) -> float:
    """``||v||``, rescaled where the sum of squares overflows (finite entries above ~1e154 in double); a
    norm that overflows even so is refused (the threshold ``rtol ||b||`` would be ``inf``: any x "converges")."""
    out = float(np.linalg.norm(v))
    if np.isfinite(out):
        return out
    scale = float(np.max(np.abs(v)))
    out = scale * float(np.linalg.norm((v / scale).astype(np.result_type(v.dtype, np.float64))))
    if not np.isfinite(out):
        raise ValueError(f"||b|| overflows (largest |b_i| = {scale:.3e}): scale the system, e.g. solve "
                         f"A x = b / s and multiply x by s")
    return out


#: Right-hand sides whose largest entry lies outside ``[2**-RHS_EXPONENT_LIMIT, 2**RHS_EXPONENT_LIMIT]`` are
#: solved scaled by a power of two (exact): Krylov inner products square the vectors, so an entry of 1e-160
#: underflows ``r^T M r`` to 0 (a false breakdown) and one of 1e160 overflows it. Narrower types use a third
#: of their exponent range instead (float32: 2**±42; its entries of 1e-25 gave ||b|| = 0 and "converged" x = 0).
RHS_EXPONENT_LIMIT = 400


def rhs_scale(b) -> Optional[float]:
    """A power of two that brings ``max |b_i|`` to about 1, or None when ``b`` needs none (or holds no finite
    non-zero entry: validation will say what is wrong).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve._validation import rhs_scale
    >>> rhs_scale(np.ones(3)) is None, rhs_scale(np.full(3, 1e-160)) == 2.0 ** 531
    (True, True)
    >>> rhs_scale(np.full(3, 1e-25, dtype=np.float32)) == 2.0 ** 83, rhs_scale(np.full(3, 1e-310)) == 2.0 ** 1020
    (True, True)
    """
    try:
        arr = np.asarray(b)
        if arr.dtype.kind not in "fc" or arr.size == 0:
            return None
        big = float(np.max(np.abs(arr)))
    except (TypeError, ValueError):
        return None
    if not np.isfinite(big) or big == 0.0:
        return None
    exponent = int(np.frexp(big)[1])
    real = np.finfo(arr.dtype)
    if abs(exponent) <= min(RHS_EXPONENT_LIMIT, real.maxexp // 3):
        return None
    # A subnormal max |b_i| (2**-1074 in double) would call for a factor beyond the type's range: stop short of
    # it; b then lands a few powers of two below 1, far inside the limit.
    shift = int(np.clip(exponent, -(real.maxexp - 4), real.maxexp - 4))
    return float(np.ldexp(1.0, -shift))


def solve_scaled(run, b, x0, atol, callback):
    """``run(b, x0, atol, callback)`` on the system scaled by :func:`rhs_scale` (when ``b`` calls for it),
    its :class:`~linsolve.SolveResult` unscaled: the same x, residual norms and stopping rule."""
    scale = rhs_scale(b)
    if scale is None:
        return run(b, x0, atol, callback)
    if x0 is not None and not isinstance(x0, str):
        x0 = np.asarray(x0) * scale
    inner = (lambda xk: callback(xk / scale)) if callable(callback) else callback
    if isinstance(atol, (numbers.Real, np.ndarray, np.generic)) and not isinstance(atol, bool):
        atol = atol * scale  # anything else is left for the validation to name
    res = run(np.asarray(b) * scale, x0, atol, inner)
    res.x = (res.x / scale).astype(res.x.dtype, copy=False) if hasattr(res.x, "dtype") else res.x / scale
    res.residual_norms = [v / scale for v in res.residual_norms]
    res.true_residual_norm = res.true_residual_norm / scale
    res.b_norm = res.b_norm / scale
    res.extras["rhs_scale"] = scale
    if res.converged and not np.all(np.isfinite(res.x)):
        # the scaled solve converged, but x itself does not fit the floating-point range
        res.converged, res.info = False, -3  # linsolve.krylov._stopping.BREAKDOWN_NONFINITE
        res.message = f"x overflows {np.asarray(res.x).dtype} (the scaled system converged): scale the system"
    return res


def stopping_threshold(rtol: float, atol: float, bnorm: float) -> float:
    """Absolute threshold on the true residual norm: ``max(atol, rtol * ||b||)``, as SciPy computes it.

    Python's ``max`` keeps ``atol`` when ``rtol * ||b||`` is NaN (a NaN
    ``rtol``, or ``inf * 0``), so that is what happens here too.

    Examples
    --------
    >>> from linsolve._validation import stopping_threshold
    >>> stopping_threshold(1e-3, 0.0, 10.0), stopping_threshold(float("nan"), 1e-8, 10.0)
    (0.01, 1e-08)
    """
    relative = rtol * bnorm
    return relative if relative > atol else atol


def check_maxiter(maxiter, n: int, default_factor: int = 10) -> int:
    """``None`` means ``default_factor * n`` (SciPy's CG default)."""
    if maxiter is None:
        return int(default_factor * n)
    if isinstance(maxiter, np.ndarray) and maxiter.ndim == 0 and maxiter.dtype.kind in "iuf":
        maxiter = maxiter.item()  # a 0-d array, as SciPy takes it
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


#: Relative asymmetry ``max |a_ij - a_ji| / max |a_ij|`` up to which the CG methods of :func:`linsolve.solve`
#: (``cg``, ``amg-cg``, ``jacobi-cg``, ``auto`` where no grid is read) take A as symmetric: above float32's
#: rounding of an assembled matrix (PhiFlow's default precision), far below a convection term or a wrong index.
CG_SYMMETRY_RTOL = 1e-6


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
        hint = (" (a matrix numbered over some cells only, e.g. the fluid cells: method='auto' or "
                "linsolve.auto_cg lays it back on its grid)") if int(np.prod(shape)) > n else ""
        raise ValueError(f"{name} {shape} has {int(np.prod(shape))} cells but A has {n} rows{hint}")
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
    """Absolute threshold on the true residual: :func:`stopping_threshold` ``(rtol, atol, ||b||)``."""
    dense: Optional[np.ndarray] = None
    """A given as a dense array (in the solve dtype): SciPy multiplies by it densely, and so does CG."""

    @property
    def n(self) -> int:
        return self.b.shape[0]


def make_system(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
                maxiter_factor: int = 10, allow_complex: bool = False) -> System:
    """Validate and convert everything a Krylov method needs, in one place (SciPy's ``make_system``).

    * The solve dtype follows SciPy's coercion of A's and b's dtypes
      (:func:`solve_dtype`); ``x0`` is cast to it and never changes it.
    * ``x0=None``: zeros; ``x0="Mb"``: ``M @ b`` (``b`` without ``M``); an
      array of shape ``(n,)`` or ``(n, 1)``, copied (never overwritten).
    * ``M=None`` and an ``A`` with a ``psolve`` method (SciPy's legacy
      protocol): ``A.psolve`` is the preconditioner.
    * Complex Hermitian systems only with ``allow_complex`` (CG); every
      other method refuses them with ``TypeError``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve._validation import make_system
    >>> A = linsolve.problems.poisson((4, 4)).astype(np.float32)
    >>> s = make_system(A, np.ones(16, np.float32), x0="Mb", rtol=np.array(1e-3))
    >>> s.dtype, bool(np.all(s.x == 1)), s.tol
    (dtype('float32'), True, 0.004)
    """
    op, mat = as_operator(A, "A", allow_complex=allow_complex)
    n = op.shape[0]
    b_arr = as_vector(b, n, "b", allow_complex=allow_complex)
    a_dtype = mat.dtype if mat is not None else (np.dtype(op.dtype) if op.dtype is not None else None)
    dtype = solve_dtype(a_dtype, b_arr.dtype)
    if mat is not None and mat.dtype != dtype:
        mat = mat.astype(dtype)
        op = aslinearoperator(mat)
    b_arr = np.asarray(b_arr, dtype=dtype)
    dense = None
    if isinstance(A, np.ndarray) and not isinstance(A, np.matrix):
        dense = np.asarray(A, dtype=dtype)
    rtol, atol = check_tolerances(rtol, atol)
    maxiter = check_maxiter(maxiter, n, maxiter_factor)
    M_op = as_preconditioner(M, n, allow_complex=allow_complex)
    if M_op is not None and dtype.kind == "c" and M_op.dtype is not None and np.dtype(M_op.dtype).kind == "f":
        M_op = _complexified(M_op)
    if M_op is None and callable(getattr(A, "psolve", None)):
        M_op = LinearOperator((n, n), matvec=A.psolve, dtype=dtype)
    callback = check_callback(callback)
    if x0 is None:
        x = np.zeros(n, dtype=dtype)
    elif isinstance(x0, str):
        if x0 != "Mb":
            raise ValueError(f"x0 must be an array, None or 'Mb' (start from M @ b), got {x0!r}")
        x = np.array(M_op.matvec(b_arr) if M_op is not None else b_arr, dtype=dtype, copy=True).reshape(n)
        if not np.all(np.isfinite(x)):
            raise ValueError("x0='Mb': M @ b contains NaN or Inf")
    else:
        x0_arr = as_vector(x0, n, "x0", allow_complex=allow_complex)
        if x0_arr.dtype.kind == "c" and dtype.kind != "c":
            raise TypeError("x0 is complex but A and b are real; pass a real x0")
        x = np.array(x0_arr, dtype=dtype, copy=True)
    bnorm = _norm(b_arr)
    tol = stopping_threshold(rtol, atol, bnorm)
    return System(op, mat, b_arr, x, M_op, rtol, atol, maxiter, callback, dtype, bnorm, tol, dense)
