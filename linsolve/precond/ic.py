"""Zero fill-in incomplete Cholesky, IC(0): the classical baseline of the DCDM paper.

``ic0(A)`` returns ``M = (L L^T)^{-1}`` as a symmetric positive definite
LinearOperator, where ``L`` has the sparsity of the lower triangle of ``A``.
The factorisation and the two triangular solves are numba kernels
(:mod:`linsolve.kernels.ic`); this module validates, times and wraps them.
"""
from __future__ import annotations

import numbers
import time

import numpy as np
import scipy.sparse as sp

from .._validation import as_sparse_matrix
from ._symmetric import SymmetricOperator
from ..structure import check_symmetric

__all__ = ["ic0", "IC0Preconditioner"]


class IC0Preconditioner(SymmetricOperator):
    """``(L L^T)^{-1}`` for an IC(0) factor ``L``; symmetric positive definite.

    Attributes
    ----------
    L : scipy.sparse.csr_matrix
        The lower-triangular factor (diagonal last in every row).
    shift : float
        Relative diagonal shift used (``A + shift * diag(A)`` was factored).
    setup_time_s : float
        Seconds spent in the factorisation (validation included).
    """

    def __init__(self, indptr, indices, data, shift: float, setup_time_s: float):
        n = indptr.shape[0] - 1
        self._indptr, self._indices, self._data = indptr, indices, data
        self._inv_diag = 1.0 / data[indptr[1:] - 1]
        self.shift = float(shift)
        self.setup_time_s = float(setup_time_s)
        super().__init__(dtype=np.dtype(np.float64), shape=(n, n))

    @property
    def L(self) -> sp.csr_matrix:
        n = self.shape[0]
        return sp.csr_matrix((self._data, self._indices, self._indptr), shape=(n, n))

    def _apply(self, x):
        from ..kernels.ic import ic0_apply

        x = np.asarray(x)
        r = np.ascontiguousarray(x.ravel(), dtype=np.float64)
        out = np.empty_like(r)
        ic0_apply(self._indptr, self._indices, self._data, self._inv_diag, r, out)
        # a float32 solve stays float32 (CG allocates from r's dtype)
        if x.dtype == np.float32:
            out = out.astype(np.float32)
        return out.reshape(x.shape)

    def __repr__(self) -> str:
        return f"<IC0Preconditioner n={self.shape[0]} nnz(L)={self._data.shape[0]} shift={self.shift:g}>"


def _check_shift(shift) -> float:
    if isinstance(shift, bool) or not isinstance(shift, numbers.Real):
        raise TypeError(f"shift must be a real number, got {type(shift).__name__}")
    if not np.isfinite(shift) or shift < 0:
        raise ValueError(f"shift must be finite and >= 0, got {shift}")
    return float(shift)


def ic0(A, *, shift=0.0, check_symmetry=True) -> IC0Preconditioner:
    """Incomplete Cholesky with zero fill-in of ``A``, as a preconditioner.

    Parameters
    ----------
    A : sparse matrix or ndarray, shape (n, n)
        Symmetric positive definite. Only the lower triangle is read (after the
        symmetry check).
    shift : float, default 0
        Relative diagonal shift ``alpha >= 0``: factor ``A + alpha * diag(A)``
        instead of ``A``. IC(0) exists for M-matrices (Poisson, pressure
        matrices) without a shift; for other SPD matrices a pivot can become
        zero or negative, and a small shift (``1e-3`` .. ``1e-1``) is the usual
        remedy (Manteuffel 1980).
    check_symmetry : bool, default True
        Verify ``A == A^T`` first (one sparse transpose, O(nnz)).

    Returns
    -------
    IC0Preconditioner
        LinearOperator applying ``(L L^T)^{-1}`` (one forward and one backward
        substitution); its ``L`` attribute is the factor.

    Raises
    ------
    ValueError
        If ``A`` is not symmetric, lacks a diagonal entry, or a pivot is zero,
        negative or not finite; the message names the row and suggests ``shift``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((32, 32))
    >>> M = linsolve.precond.ic0(A)
    >>> b = np.ones(A.shape[0])
    >>> x, info = linsolve.cg(A, b, rtol=1e-8, M=M)
    >>> info
    0
    """
    from ..kernels.ic import ic0_factor, ic0_lower_pattern

    t0 = time.perf_counter()
    shift = _check_shift(shift)
    mat = as_sparse_matrix(A, "A")
    if check_symmetry:
        check_symmetric(mat, "A")
    indptr = mat.indptr.astype(np.int64, copy=False)
    indices = mat.indices.astype(np.int64, copy=False)
    data = mat.data.astype(np.float64, copy=False)
    lindptr, lindices, ldata = ic0_lower_pattern(indptr, indices, data)
    status, pivot = ic0_factor(lindptr, lindices, ldata, shift)
    if status >= 0:
        row = int(status)
        has_diag = bool(np.any(lindices[lindptr[row]:lindptr[row + 1]] == row))
        if not has_diag:
            reason = f"A has no stored diagonal entry in row {row}"
        elif not np.isfinite(pivot):
            reason = f"the pivot in row {row} is not finite ({pivot})"
        else:
            reason = f"the pivot in row {row} is {pivot:.3g} <= 0"
        raise ValueError(
            f"IC(0) breaks down: {reason}; A may not be positive definite, or IC(0) does not exist "
            f"for it without fill-in. Try ic0(A, shift=1e-2) (factor A + shift*diag(A)) or another "
            f"preconditioner")
    return IC0Preconditioner(lindptr, lindices, ldata, shift, time.perf_counter() - t0)
