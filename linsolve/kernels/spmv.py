"""CSR sparse matrix-vector products and residuals on plain arrays.

Every kernel takes the three CSR arrays ``(indptr, indices, data)`` of a
matrix with sorted, duplicate-free indices (what
:func:`linsolve._validation.as_sparse_matrix` returns) and writes into a
caller-provided output, so a solver loop allocates nothing per iteration.

Rows are independent, so the ``_parallel`` variants split them over numba's
thread pool with ``prange``; below :data:`PARALLEL_MIN_NNZ` nonzeros the
thread start-up costs more than it saves and the serial loop is used. On a
machine whose cores are all busy with other processes a parallel region waits
for descheduled threads and can be many times slower than the serial loop;
``NUMBA_NUM_THREADS=1`` (or ``numba.set_num_threads(1)``) makes the
dispatchers below use the serial kernels.
Indices are cast to ``uint64`` before indexing: numba adds negative-index
wrap-around code to every signed index, which costs about 40% of an SpMV.
``fastmath`` is off: a residual must be the residual of ``x`` as IEEE
arithmetic computes it, not a reassociated approximation.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["csr_matvec", "csr_matvec_serial", "csr_matvec_parallel", "csr_residual",
           "csr_residual_serial", "csr_residual_parallel", "csr_max_asymmetry", "csr_asymmetry_probe",
           "csr_principal_block", "PARALLEL_MIN_NNZ"]

#: Below this many nonzeros the serial kernels win (thread wake-up is ~10 µs).
PARALLEL_MIN_NNZ = 200_000


def _threads() -> int:
    import numba

    return numba.get_num_threads()


@njit(cache=True)
def csr_matvec_serial(indptr, indices, data, x, out):
    """``out = A @ x`` for a CSR matrix, one thread.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import csr_matvec_serial
    >>> A = linsolve.problems.poisson((4, 4))
    >>> x = np.arange(16.0); out = np.empty(16)
    >>> csr_matvec_serial(A.indptr, A.indices, A.data, x, out)
    >>> bool(np.allclose(out, A @ x))
    True
    """
    n = indptr.shape[0] - 1
    for i in range(n):
        s = 0.0
        jj = np.uint64(indptr[i])
        end = np.uint64(indptr[i + 1])
        while jj < end:
            s += data[jj] * x[np.uint64(indices[jj])]
            jj += np.uint64(1)
        out[i] = s


@njit(cache=True, parallel=True)
def csr_matvec_parallel(indptr, indices, data, x, out):
    """``out = A @ x`` for a CSR matrix, rows split over numba's threads.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import csr_matvec_parallel
    >>> A = linsolve.problems.poisson((4, 4))
    >>> x = np.arange(16.0); out = np.empty(16)
    >>> csr_matvec_parallel(A.indptr, A.indices, A.data, x, out)
    >>> bool(np.allclose(out, A @ x))
    True
    """
    n = indptr.shape[0] - 1
    for i in prange(n):
        s = 0.0
        jj = np.uint64(indptr[i])
        end = np.uint64(indptr[i + 1])
        while jj < end:
            s += data[jj] * x[np.uint64(indices[jj])]
            jj += np.uint64(1)
        out[i] = s


@njit(cache=True)
def csr_residual_serial(indptr, indices, data, x, b, r):
    """``r = b - A @ x``; returns ``||r||_2`` (accumulated in float64).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import csr_residual_serial
    >>> A = linsolve.problems.poisson((4, 4))
    >>> x = np.ones(16); b = np.zeros(16); r = np.empty(16)
    >>> nrm = csr_residual_serial(A.indptr, A.indices, A.data, x, b, r)
    >>> bool(np.isclose(nrm, np.linalg.norm(A @ x)))
    True
    """
    n = indptr.shape[0] - 1
    acc = 0.0
    for i in range(n):
        s = 0.0
        jj = np.uint64(indptr[i])
        end = np.uint64(indptr[i + 1])
        while jj < end:
            s += data[jj] * x[np.uint64(indices[jj])]
            jj += np.uint64(1)
        ri = b[i] - s
        r[i] = ri
        acc += float(ri) * float(ri)
    return np.sqrt(acc)


@njit(cache=True, parallel=True)
def csr_residual_parallel(indptr, indices, data, x, b, r):
    """Parallel :func:`csr_residual_serial`; returns ``||b - A x||_2``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import csr_residual_parallel
    >>> A = linsolve.problems.poisson((4, 4))
    >>> x = np.ones(16); b = np.zeros(16); r = np.empty(16)
    >>> nrm = csr_residual_parallel(A.indptr, A.indices, A.data, x, b, r)
    >>> bool(np.isclose(nrm, np.linalg.norm(A @ x)))
    True
    """
    n = indptr.shape[0] - 1
    acc = 0.0
    for i in prange(n):
        s = 0.0
        jj = np.uint64(indptr[i])
        end = np.uint64(indptr[i + 1])
        while jj < end:
            s += data[jj] * x[np.uint64(indices[jj])]
            jj += np.uint64(1)
        ri = b[i] - s
        r[i] = ri
        acc += float(ri) * float(ri)
    return np.sqrt(acc)


def csr_matvec(indptr, indices, data, x, out=None):
    """``A @ x`` with the serial or parallel kernel depending on the size.

    Parameters
    ----------
    indptr, indices, data : ndarray
        CSR arrays of an ``(n, m)`` matrix.
    x : ndarray, shape (m,)
    out : ndarray, shape (n,), optional
        Written in place and returned; allocated when omitted.

    Returns
    -------
    ndarray, shape (n,)

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import csr_matvec
    >>> A = linsolve.problems.poisson((8, 8, 8))
    >>> x = np.random.default_rng(0).standard_normal(512)
    >>> bool(np.allclose(csr_matvec(A.indptr, A.indices, A.data, x), A @ x))
    True
    """
    if out is None:
        out = np.empty(indptr.shape[0] - 1, dtype=np.result_type(data.dtype, x.dtype))
    if data.shape[0] >= PARALLEL_MIN_NNZ and _threads() > 1:
        csr_matvec_parallel(indptr, indices, data, x, out)
    else:
        csr_matvec_serial(indptr, indices, data, x, out)
    return out


def csr_residual(indptr, indices, data, x, b, r=None):
    """``(r, ||r||_2)`` with ``r = b - A x``, serial or parallel depending on the size.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import csr_residual
    >>> A = linsolve.problems.poisson((8, 8))
    >>> b = np.ones(64)
    >>> r, nrm = csr_residual(A.indptr, A.indices, A.data, np.zeros(64), b)
    >>> float(nrm) == 8.0
    True
    """
    if r is None:
        r = np.empty_like(b)
    if data.shape[0] >= PARALLEL_MIN_NNZ and _threads() > 1:
        nrm = csr_residual_parallel(indptr, indices, data, x, b, r)
    else:
        nrm = csr_residual_serial(indptr, indices, data, x, b, r)
    return r, float(nrm)


@njit(cache=True)
def csr_max_asymmetry(indptr, indices, data):
    """``max |a_ij - a_ji|`` over the stored entries of a square CSR matrix with sorted indices.

    One binary search per nonzero, no transpose is formed: a cheap screen
    before the full :func:`linsolve._validation.check_symmetric`.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, linsolve
    >>> from linsolve.kernels.spmv import csr_max_asymmetry
    >>> A = linsolve.problems.poisson((4, 4))
    >>> float(csr_max_asymmetry(A.indptr, A.indices, A.data))
    0.0
    >>> B = sp.csr_matrix(np.array([[2.0, 1.0], [0.5, 2.0]]))
    >>> float(csr_max_asymmetry(B.indptr, B.indices, B.data))
    0.5
    """
    n = indptr.shape[0] - 1
    worst = 0.0
    for i in range(n):
        for jj in range(indptr[i], indptr[i + 1]):
            j = indices[jj]
            if j == i:
                continue
            lo = indptr[j]
            hi = indptr[j + 1]
            while lo < hi:
                mid = (lo + hi) // 2
                if indices[mid] < i:
                    lo = mid + 1
                else:
                    hi = mid
            other = 0.0
            if lo < indptr[j + 1] and indices[lo] == i:
                other = data[lo]
            d = abs(float(data[jj]) - float(other))
            if d > worst:
                worst = d
    return worst


@njit(cache=True)
def _probe_value(i):
    """A fixed pseudo-random number in [-1, 1) for index ``i`` (splitmix64's finaliser): no RNG state, no array."""
    z = np.uint64(i) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) * (2.0 / 9007199254740992.0) - 1.0


@njit(cache=True)
def csr_asymmetry_probe(indptr, indices, data):
    """``max_i |((A - A^T) v)_i|`` for a fixed pseudo-random ``v`` in [-1, 1), in one pass over A.

    ``A v`` and ``A^T v`` are formed together (no transpose; about one and a
    half SpMVs, against five for a transpose and a subtraction): zero up to
    rounding for a symmetric A, while an asymmetric pair ``a_ij != a_ji``
    shows as ``|a_ij - a_ji| |v_j|`` in row ``i`` and ``|v_i|`` in row ``j``,
    missed only where both are tiny (both below 0.01: one pair in 10^4). A
    screen for :func:`linsolve._validation.require_symmetric`, whose exact
    check decides.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, linsolve
    >>> from linsolve.kernels.spmv import csr_asymmetry_probe
    >>> A = linsolve.problems.poisson((8, 8))
    >>> float(csr_asymmetry_probe(A.indptr, A.indices, A.data)) < 1e-14
    True
    >>> B = sp.csr_matrix(np.array([[2.0, 1.0], [0.5, 2.0]]))
    >>> float(csr_asymmetry_probe(B.indptr, B.indices, B.data)) > 0.01
    True
    """
    n = indptr.shape[0] - 1
    v = np.empty(n)
    for i in range(n):
        v[i] = _probe_value(i)
    product = np.zeros(n)
    transposed = np.zeros(n)
    for i in range(n):
        vi = v[i]
        acc = 0.0
        for jj in range(indptr[i], indptr[i + 1]):
            j = indices[jj]
            a = float(data[jj])
            acc += a * v[j]
            transposed[j] += a * vi
        product[i] = acc
    worst = 0.0
    for i in range(n):
        d = abs(product[i] - transposed[i])
        if d > worst:
            worst = d
    return worst


@njit(cache=True)
def csr_principal_block(indptr, indices, data, rows, n):
    """``(indptr, indices, data, closed)`` of the block ``A[rows][:, rows]`` of a CSR matrix.

    ``rows`` is sorted and unique, so the block keeps sorted column indices.
    ``closed`` is False (and the arrays are unusable) when a row of the block
    couples to a column outside it: the block is then not an independent
    system, and a caller must solve the whole matrix.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, linsolve
    >>> from linsolve.kernels.spmv import csr_principal_block
    >>> A = sp.block_diag([linsolve.problems.poisson((2, 2)), sp.identity(2)], format="csr")
    >>> ip, ix, dx, closed = csr_principal_block(A.indptr, A.indices, A.data, np.arange(4), 6)
    >>> bool(closed), bool(np.array_equal(sp.csr_matrix((dx, ix, ip)).toarray(), A[:4, :4].toarray()))
    (True, True)
    >>> bool(csr_principal_block(A.indptr, A.indices, A.data, np.arange(2), 6)[3])
    False
    """
    local = np.full(n, -1, np.int64)
    for k in range(rows.shape[0]):
        local[rows[k]] = k
    nnz = 0
    for k in range(rows.shape[0]):
        nnz += indptr[rows[k] + 1] - indptr[rows[k]]
    block_ptr = np.empty(rows.shape[0] + 1, indptr.dtype)
    block_idx = np.empty(nnz, indices.dtype)
    block_data = np.empty(nnz, data.dtype)
    block_ptr[0] = 0
    p = 0
    for k in range(rows.shape[0]):
        i = rows[k]
        for jj in range(indptr[i], indptr[i + 1]):
            c = local[indices[jj]]
            if c < 0:
                return block_ptr, block_idx, block_data, False
            block_idx[p] = c
            block_data[p] = data[jj]
            p += 1
        block_ptr[k + 1] = p
    return block_ptr, block_idx, block_data, True
