"""Zero fill-in incomplete Cholesky, IC(0), and its triangular solves on CSR arrays.

The factor ``L`` keeps exactly the sparsity pattern of the lower triangle of
``A`` (diagonal included) and satisfies ``(L L^T)[i, j] == A[i, j]`` on that
pattern. It is stored as CSR arrays ``(indptr, indices, data)`` with sorted
column indices, so the diagonal is the *last* entry of every row; both
triangular solves walk those rows, no transpose is ever formed.

Kernels know nothing of the Krylov method that uses them (PyAMG's
``amg_core`` habit): arrays in, arrays out, status codes instead of
exceptions (numba cannot raise informative errors cheaply); the Python driver
in :mod:`linsolve.precond.ic` turns a status into a ``ValueError``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["ic0_lower_pattern", "ic0_factor", "ic0_forward", "ic0_backward", "ic0_apply"]


@njit(cache=True)
def ic0_lower_pattern(indptr, indices, data):
    """Lower triangle (diagonal included) of a CSR matrix with sorted indices.

    Returns ``(lindptr, lindices, ldata)``, a copy; a row without a stored
    diagonal gets none (the factorisation then reports that row).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels.ic import ic0_lower_pattern
    >>> A = linsolve.problems.poisson((3, 3))
    >>> p, i, d = ic0_lower_pattern(A.indptr, A.indices, A.data)
    >>> int(p[-1]) == (A.nnz + 9) // 2
    True
    """
    n = indptr.shape[0] - 1
    lindptr = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        count = 0
        for jj in range(indptr[i], indptr[i + 1]):
            if indices[jj] <= i:
                count += 1
        lindptr[i + 1] = lindptr[i] + count
    nnz = lindptr[n]
    lindices = np.empty(nnz, dtype=np.int64)
    ldata = np.empty(nnz, dtype=np.float64)
    for i in range(n):
        pos = lindptr[i]
        for jj in range(indptr[i], indptr[i + 1]):
            if indices[jj] <= i:
                lindices[pos] = indices[jj]
                ldata[pos] = data[jj]
                pos += 1
    return lindptr, lindices, ldata


@njit(cache=True)
def ic0_factor(lindptr, lindices, ldata, diag_shift):
    """Factor in place: ``ldata`` holds the lower triangle of A on entry, L on exit.

    Row-oriented ("up-looking") Cholesky restricted to the pattern:
    ``L[i,k] = (A[i,k] - sum_j L[i,j] L[k,j]) / L[k,k]`` for ``k < i`` and
    ``L[i,i] = sqrt(A[i,i] (1 + diag_shift) - sum_j L[i,j]^2)``, the sums running
    over the columns ``j < k`` that rows ``i`` and ``k`` share (a merge of two
    sorted index lists).

    Parameters
    ----------
    lindptr, lindices, ldata : ndarray
        CSR arrays of the lower triangle with sorted indices (see
        :func:`ic0_lower_pattern`); ``ldata`` is overwritten.
    diag_shift : float
        Relative diagonal shift ``alpha``: factor ``A + alpha diag(A)``
        (Manteuffel's remedy when a pivot breaks down).

    Returns
    -------
    status : int
        ``-1`` on success; otherwise the row whose pivot was zero, negative
        or not finite, or that has no diagonal entry.
    pivot : float
        The offending pivot value (``nan`` on success or missing diagonal).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels.ic import ic0_lower_pattern, ic0_factor
    >>> A = linsolve.problems.poisson((4, 4))
    >>> p, i, d = ic0_lower_pattern(A.indptr, A.indices, A.data)
    >>> ic0_factor(p, i, d, 0.0)[0]
    -1
    """
    n = lindptr.shape[0] - 1
    for i in range(n):
        start = lindptr[i]
        end = lindptr[i + 1]
        if end == start or lindices[end - 1] != i:
            return i, np.nan
        for kk in range(start, end - 1):
            k = lindices[kk]
            # merge row i (columns < k) with row k (columns < k)
            s = ldata[kk]
            a = start
            c = lindptr[k]
            kend = lindptr[k + 1] - 1  # row k's diagonal position
            while a < kk and c < kend:
                ca = lindices[a]
                cc = lindices[c]
                if ca == cc:
                    s -= ldata[a] * ldata[c]
                    a += 1
                    c += 1
                elif ca < cc:
                    a += 1
                else:
                    c += 1
            ldata[kk] = s / ldata[kend]
        d = ldata[end - 1] * (1.0 + diag_shift)
        for kk in range(start, end - 1):
            d -= ldata[kk] * ldata[kk]
        if not (d > 0.0) or not np.isfinite(d):
            return i, d
        ldata[end - 1] = np.sqrt(d)
    return -1, np.nan


@njit(cache=True)
def ic0_forward(lindptr, lindices, ldata, inv_diag, rhs, out):
    """Solve ``L y = rhs`` into ``out`` (rows in order, diagonal last in each row).

    ``inv_diag`` holds ``1 / L[i, i]``: a multiplication instead of a division
    on the loop-carried dependency chain (each row needs the previous ones).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from linsolve.kernels.ic import ic0_forward
    >>> L = sp.csr_matrix(np.array([[2.0, 0.0], [1.0, 4.0]]))
    >>> out = np.empty(2)
    >>> ic0_forward(L.indptr, L.indices, L.data, 1.0 / L.diagonal(), np.array([2.0, 9.0]), out)
    >>> out.tolist()
    [1.0, 2.0]
    """
    n = lindptr.shape[0] - 1
    for i in range(n):
        s = rhs[i]
        end = lindptr[i + 1] - 1
        for jj in range(lindptr[i], end):
            s -= ldata[jj] * out[lindices[jj]]
        out[i] = s * inv_diag[i]


@njit(cache=True)
def ic0_backward(lindptr, lindices, ldata, inv_diag, y):
    """Solve ``L^T x = y`` in place on ``y``, column-wise over the rows of L.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from linsolve.kernels.ic import ic0_backward
    >>> L = sp.csr_matrix(np.array([[2.0, 0.0], [1.0, 4.0]]))
    >>> y = np.array([4.0, 8.0])
    >>> ic0_backward(L.indptr, L.indices, L.data, 1.0 / L.diagonal(), y)
    >>> y.tolist()
    [1.0, 2.0]
    """
    n = lindptr.shape[0] - 1
    for i in range(n - 1, -1, -1):
        end = lindptr[i + 1] - 1
        xi = y[i] * inv_diag[i]
        y[i] = xi
        # x_i is final: remove its contribution from the earlier unknowns
        for jj in range(lindptr[i], end):
            y[lindices[jj]] -= ldata[jj] * xi


@njit(cache=True)
def ic0_apply(lindptr, lindices, ldata, inv_diag, r, out):
    """``out = (L L^T)^{-1} r``: one forward and one backward substitution.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels.ic import ic0_lower_pattern, ic0_factor, ic0_apply
    >>> A = linsolve.problems.poisson((1, 5))  # tridiagonal: IC(0) is exact
    >>> p, i, d = ic0_lower_pattern(A.indptr, A.indices, A.data)
    >>> _ = ic0_factor(p, i, d, 0.0)
    >>> out = np.empty(5); r = np.arange(5.0)
    >>> ic0_apply(p, i, d, 1.0 / d[p[1:] - 1], A @ r, out)
    >>> bool(np.allclose(out, r))
    True
    """
    ic0_forward(lindptr, lindices, ldata, inv_diag, r, out)
    ic0_backward(lindptr, lindices, ldata, inv_diag, out)
