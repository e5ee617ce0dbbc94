"""Exact banded Cholesky ``A^-1`` for matrices of small bandwidth: 1D problems and narrow strips.

A 1D diffusion matrix (FiPy's ``Grid1D``) or a grid a few cells wide has all
its entries within ``bw`` of the diagonal. LAPACK factors it in
``O(n bw^2)`` operations (``?pbtrf``; ``?pttrf`` when tridiagonal) where CG
needs about as many iterations as the strip is long (a 1D Poisson matrix of
n rows: n iterations). Wrapped as a LinearOperator it is a preconditioner
like any other: PCG converges in one or two iterations, and the Krylov
driver still checks the true residual (the factor's rounding on a matrix of
condition ~1e10 leaves ~1e-7 relative, which the next PCG step removes).
"""
from __future__ import annotations

import numbers
import time

import numpy as np
import scipy.linalg as sl
from scipy.linalg import lapack

from .._validation import as_sparse_matrix, definite_sign
from ._symmetric import SymmetricOperator
from ..structure import check_symmetric

__all__ = ["banded_cholesky", "BandedCholeskyPreconditioner", "matrix_bandwidth", "MAX_FACTOR_ENTRIES"]

#: Largest factor :func:`banded_cholesky` builds unless given ``max_bandwidth``: ``n (bw + 1)`` numbers (400 MB).
#: Its cost grows as ``n bw^2``: 200,000 rows, one core, 9 ms at bandwidth 1, 46 ms at 16, 0.2 s at 64.
MAX_FACTOR_ENTRIES = 50_000_000


class BandedCholeskyPreconditioner(SymmetricOperator):
    """``A^-1`` through a banded Cholesky factor of ``sign * A``; symmetric, definite of A's sign.

    Attributes
    ----------
    bandwidth : int
        ``max |i - j|`` over A's non-zero entries.
    sign : int
        ``+1`` for a positive definite A, ``-1`` for a negative definite one
        (the factor is of ``-A`` and the result is negated).
    setup_time_s : float
        Seconds spent packing and factoring.
    """

    def __init__(self, factor, bandwidth: int, sign: int, n: int, setup_time_s: float):
        self._factor = factor
        self.bandwidth, self.sign = int(bandwidth), int(sign)
        self.setup_time_s = float(setup_time_s)
        super().__init__(dtype=np.dtype(np.float64), shape=(n, n))

    def _apply(self, x):
        x = np.asarray(x)
        r = np.ascontiguousarray(x.ravel(), dtype=np.float64)
        if self.bandwidth == 0:
            z = r / self._factor
        elif self.bandwidth == 1:
            d, e = self._factor
            z, _ = lapack.dpttrs(d, e, r)
        else:
            z = sl.cho_solve_banded((self._factor, True), r, check_finite=False)
        if self.sign < 0:
            z = -z
        # a float32 solve stays float32 (CG allocates from r's dtype)
        return z.astype(x.dtype if x.dtype == np.float32 else np.float64, copy=False).reshape(x.shape)

    def __repr__(self) -> str:
        return (f"<BandedCholeskyPreconditioner n={self.shape[0]} bandwidth={self.bandwidth} "
                f"sign={self.sign:+d}>")


def matrix_bandwidth(A, limit=None) -> int:
    """``max |i - j|`` over the non-zero entries of a sparse matrix; stops at the first distance above ``limit``.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.precond.banded import matrix_bandwidth
    >>> matrix_bandwidth(linsolve.problems.poisson((50, 4)))
    4
    """
    from ..kernels.structure import bandwidth

    mat = as_sparse_matrix(A, "A")
    n = mat.shape[0]
    cap = n if limit is None else int(limit)
    return int(bandwidth(mat.indptr, mat.indices, mat.data, cap))


def banded_cholesky(A, *, max_bandwidth=None) -> BandedCholeskyPreconditioner:
    """Exact ``A^-1`` of a symmetric definite matrix of small bandwidth, as a LinearOperator.

    Parameters
    ----------
    A : sparse matrix or ndarray, shape (n, n)
        Real, symmetric, positive or negative definite.
    max_bandwidth : int, optional
        Refuse a band wider than this; by default any band whose factor holds
        at most :data:`MAX_FACTOR_ENTRIES` numbers.

    Raises
    ------
    ValueError
        A not square, not symmetric, with NaN/Inf, a band too wide, a
        diagonal of mixed sign or zero, or not definite (numerically
        singular: a pure-Neumann 1D problem, for instance).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.precond import banded_cholesky
    >>> A = linsolve.problems.poisson((2000, 3))            # a strip 3 cells wide
    >>> M = banded_cholesky(A)
    >>> b = np.ones(A.shape[0])
    >>> M.bandwidth, bool(np.linalg.norm(b - A @ (M @ b)) < 1e-10 * np.linalg.norm(b))
    (3, True)
    >>> x, info = linsolve.cg(A, b, rtol=1e-10, M=M)           # one or two PCG iterations
    >>> info
    0
    """
    t0 = time.perf_counter()
    if max_bandwidth is not None and (isinstance(max_bandwidth, bool) or not isinstance(
            max_bandwidth, numbers.Integral) or max_bandwidth < 0):
        raise ValueError(f"max_bandwidth must be a non-negative integer or None, got {max_bandwidth!r}")
    mat = as_sparse_matrix(A, "A")  # square, real, finite
    n = mat.shape[0]
    limit = max(MAX_FACTOR_ENTRIES // max(n, 1) - 1, 0) if max_bandwidth is None else int(max_bandwidth)
    bw = matrix_bandwidth(mat, limit=limit)
    if bw > limit:
        raise ValueError(f"A has bandwidth > {limit} (an entry {bw} off the diagonal): too wide for a banded "
                         f"Cholesky factor" + (f" of at most {MAX_FACTOR_ENTRIES:,} numbers" if max_bandwidth is None
                                               else "") + "; use another preconditioner")
    check_symmetric(mat, "A")
    diag = mat.diagonal().astype(np.float64)
    sign = definite_sign(diag)
    if not sign:
        raise ValueError("A's diagonal is zero or of mixed sign: A is not definite, so it has no Cholesky factor")
    try:
        if bw == 0:
            # LAPACK's ?pttrf rejects n = 1 (an empty off-diagonal), and a diagonal needs no factor anyway
            factor = sign * diag
            pivots = np.sqrt(factor)
        elif bw == 1:
            d = sign * diag
            e = sign * np.asarray(mat.diagonal(-1), dtype=np.float64) if n > 1 else np.zeros(0)
            d, e, info = lapack.dpttrf(d, e)
            if info != 0:
                raise np.linalg.LinAlgError(f"leading minor {info} is not positive")
            factor, pivots = (d, e), np.sqrt(np.abs(d))
        else:
            band = np.zeros((bw + 1, n))
            for k in range(bw + 1):
                band[k, :n - k] = mat.diagonal(-k)
            if sign < 0:
                band = -band
            factor = sl.cholesky_banded(band, lower=True, check_finite=False)
            pivots = np.abs(factor[0])
    except (np.linalg.LinAlgError, ValueError) as exc:
        # LAPACK wrapper messages end in newlines; an error message stays on one line
        reason = " ".join(str(exc).split())
        raise ValueError(f"A is not {'positive' if sign > 0 else 'negative'} definite: its banded Cholesky "
                         f"factorisation failed ({reason})") from None
    # a pure-Neumann problem factors with a last pivot of rounding size: no usable inverse
    if pivots.min() ** 2 <= 100 * n * np.finfo(np.float64).eps * pivots.max() ** 2:
        raise ValueError("A is singular or nearly so (a Cholesky pivot of rounding size): no banded factor "
                         "of it is usable")
    return BandedCholeskyPreconditioner(factor, bw, sign, n, time.perf_counter() - t0)
