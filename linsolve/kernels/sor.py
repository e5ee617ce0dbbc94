"""SOR / SSOR sweeps and the SSOR preconditioner on CSR arrays.

Conventions (the same as PyAMG's ``pyamg.relaxation.relaxation.sor``):

* a *forward* sweep visits rows ``0 .. n-1`` and sets, in place,
  ``x[i] = (1 - omega) x[i] + omega (b[i] - sum_{j != i} a_ij x[j]) / a_ii``,
  i.e. ``x += W^{-1} (b - A x)`` with ``W = D/omega + L``;
* a *backward* sweep does the same for rows ``n-1 .. 0`` (``W = D/omega + U``);
* a *symmetric* sweep is a forward sweep followed by a backward sweep, both
  with the same ``omega``. (PyAMG's own ``sweep='symmetric'`` silently drops
  ``omega`` and runs symmetric Gauss-Seidel, so for ``omega != 1`` compare
  against its forward then backward sweeps.)

The kernels need the position of the diagonal entry in every row
(:func:`diagonal_positions`, computed once per matrix) and sorted indices.
Knowing where the diagonal sits lets a sweep add the term of the row it just
updated (``x[i-1]`` going forward, ``x[i+1]`` going backward) *last*, so the
row-to-row dependency chain is one multiply-add instead of the whole row sum
(on 5/7-point matrices this and numba's code generation give about 0.6-0.7x
PyAMG's C++ sweep time, see ``bench/kernels.py``). The sums are therefore
ordered differently from PyAMG's, which
changes results only at rounding level (about 1e-16 relative per sweep).
Indices are cast to ``uint64`` before indexing because numba adds
negative-index wrap-around code to signed ones. ``fastmath`` is limited to
``contract`` (fused multiply-add), which only removes roundings.

All kernels validate nothing: :mod:`linsolve.krylov.sor` and
:mod:`linsolve.precond.ssor` check the matrix (positive diagonal, omega in
(0, 2)) once before calling them.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["diagonal_positions", "sor_forward", "sor_backward", "sor_symmetric", "sor_sweep",
           "sor_forward_residual", "sor_solve", "ssor_apply", "sor_sweep_rows", "red_black_rows"]

_FM = {"contract"}


@njit(cache=True)
def diagonal_positions(indptr, indices):
    """Index into ``indices``/``data`` of each row's diagonal entry, ``-1`` where absent.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.kernels import diagonal_positions
    >>> A = linsolve.problems.poisson((3, 3))
    >>> pos = diagonal_positions(A.indptr, A.indices)
    >>> bool((A.data[pos] == 4.0).all())
    True
    """
    n = indptr.shape[0] - 1
    pos = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        for jj in range(indptr[i], indptr[i + 1]):
            if indices[jj] == i:
                pos[i] = jj
                break
    return pos


@njit(cache=True, fastmath=_FM)
def sor_forward(indptr, indices, data, dpos, x, b, omega):
    """One forward SOR sweep in place: ``x += (D/omega + L)^{-1} (b - A x)``.

    Parameters
    ----------
    indptr, indices, data : ndarray
        CSR arrays, sorted indices, every diagonal entry present and nonzero.
    dpos : ndarray of int
        :func:`diagonal_positions` of the matrix.
    x : ndarray
        Iterate, updated in place.
    b : ndarray
        Right-hand side.
    omega : float
        Relaxation factor (1 is Gauss-Seidel).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import diagonal_positions, sor_forward
    >>> A = linsolve.problems.poisson((8, 8)); b = np.ones(64); x = np.zeros(64)
    >>> dpos = diagonal_positions(A.indptr, A.indices)
    >>> for _ in range(50):
    ...     sor_forward(A.indptr, A.indices, A.data, dpos, x, b, 1.5)
    >>> bool(np.linalg.norm(b - A @ x) < 1e-6)
    True
    """
    n = indptr.shape[0] - 1
    for i in range(n):
        start = indptr[i]
        d = dpos[i]
        end = indptr[i + 1]
        s = 0.0
        # The most recently updated neighbour (x[i-1] on a grid) is added last,
        # so only one multiply-add sits on the row-to-row dependency chain.
        for jj in range(start, d - 1):
            u = np.uint64(jj)
            s += data[u] * x[np.uint64(indices[u])]
        for jj in range(d + 1, end):
            u = np.uint64(jj)
            s += data[u] * x[np.uint64(indices[u])]
        if d > start:
            u = np.uint64(d - 1)
            s += data[u] * x[np.uint64(indices[u])]
        ui = np.uint64(i)
        x[ui] = (1.0 - omega) * x[ui] + (omega / data[np.uint64(d)]) * (b[ui] - s)


@njit(cache=True, fastmath=_FM)
def sor_backward(indptr, indices, data, dpos, x, b, omega):
    """One backward SOR sweep in place (rows ``n-1 .. 0``): ``x += (D/omega + U)^{-1} (b - A x)``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import diagonal_positions, sor_backward
    >>> A = linsolve.problems.poisson((8, 8)); b = np.ones(64); x = np.zeros(64)
    >>> dpos = diagonal_positions(A.indptr, A.indices)
    >>> for _ in range(50):
    ...     sor_backward(A.indptr, A.indices, A.data, dpos, x, b, 1.5)
    >>> bool(np.linalg.norm(b - A @ x) < 1e-6)
    True
    """
    n = indptr.shape[0] - 1
    for i in range(n - 1, -1, -1):
        start = indptr[i]
        d = dpos[i]
        end = indptr[i + 1]
        s = 0.0
        for jj in range(start, d):
            u = np.uint64(jj)
            s += data[u] * x[np.uint64(indices[u])]
        for jj in range(d + 2, end):
            u = np.uint64(jj)
            s += data[u] * x[np.uint64(indices[u])]
        if d + 1 < end:
            u = np.uint64(d + 1)
            s += data[u] * x[np.uint64(indices[u])]
        ui = np.uint64(i)
        x[ui] = (1.0 - omega) * x[ui] + (omega / data[np.uint64(d)]) * (b[ui] - s)


@njit(cache=True, fastmath=_FM)
def sor_symmetric(indptr, indices, data, dpos, x, b, omega):
    """One symmetric (SSOR) sweep in place: a forward then a backward sweep.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import diagonal_positions, sor_symmetric
    >>> A = linsolve.problems.poisson((8, 8)); b = np.ones(64); x = np.zeros(64)
    >>> dpos = diagonal_positions(A.indptr, A.indices)
    >>> for _ in range(50):
    ...     sor_symmetric(A.indptr, A.indices, A.data, dpos, x, b, 1.5)
    >>> bool(np.linalg.norm(b - A @ x) < 1e-6)
    True
    """
    sor_forward(indptr, indices, data, dpos, x, b, omega)
    sor_backward(indptr, indices, data, dpos, x, b, omega)


def sor_sweep(indptr, indices, data, dpos, x, b, omega, sweep="forward", iterations=1):
    """``iterations`` SOR sweeps in place, ``sweep`` in ``{'forward', 'backward', 'symmetric'}``.

    The same arguments and meaning as ``pyamg.relaxation.relaxation.sor``
    (except that ``'symmetric'`` honours ``omega``), on plain CSR arrays.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import diagonal_positions, sor_sweep
    >>> A = linsolve.problems.poisson((8, 8)); b = np.ones(64); x = np.zeros(64)
    >>> dpos = diagonal_positions(A.indptr, A.indices)
    >>> sor_sweep(A.indptr, A.indices, A.data, dpos, x, b, 1.5, "symmetric", iterations=60)
    >>> bool(np.linalg.norm(b - A @ x) < 1e-6)
    True
    """
    kernel = {"forward": sor_forward, "backward": sor_backward, "symmetric": sor_symmetric}.get(sweep)
    if kernel is None:
        raise ValueError(f"sweep must be 'forward', 'backward' or 'symmetric', got {sweep!r}")
    for _ in range(int(iterations)):
        kernel(indptr, indices, data, dpos, x, b, omega)


@njit(cache=True, fastmath=_FM)
def sor_forward_residual(indptr, indices, data, dpos, x, xprev, b, omega):
    """Forward SOR sweep that also returns ``||b - A x_in||_2`` of its *input* iterate.

    On return ``xprev`` holds the input iterate ``x_in`` and ``x`` the swept one.
    Row ``i`` of the residual needs ``x_in[j]`` for ``j < i`` (already
    overwritten in ``x``, so read from ``xprev``) and for ``j >= i`` (still in
    ``x``), so the true residual of ``x_in`` costs one extra read of
    ``xprev`` instead of a separate SpMV. The value is ``b - A x_in``
    computed from the entries of ``x_in`` themselves, not a recurrence.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import diagonal_positions, sor_forward_residual
    >>> A = linsolve.problems.poisson((8, 8)); b = np.ones(64)
    >>> x = np.linspace(0, 1, 64); x_in = x.copy(); xprev = np.empty(64)
    >>> dpos = diagonal_positions(A.indptr, A.indices)
    >>> nrm = sor_forward_residual(A.indptr, A.indices, A.data, dpos, x, xprev, b, 1.3)
    >>> bool(np.isclose(nrm, np.linalg.norm(b - A @ x_in))), bool((xprev == x_in).all())
    (True, True)
    """
    n = indptr.shape[0] - 1
    acc = 0.0
    for i in range(n):
        start = indptr[i]
        d = dpos[i]
        end = indptr[i + 1]
        ui = np.uint64(i)
        xi = x[ui]
        xprev[ui] = xi
        s_up = 0.0
        for jj in range(d + 1, end):
            u = np.uint64(jj)
            s_up += data[u] * x[np.uint64(indices[u])]
        s_old = 0.0
        for jj in range(start, d):
            u = np.uint64(jj)
            s_old += data[u] * xprev[np.uint64(indices[u])]
        s_new = s_up
        for jj in range(start, d - 1):
            u = np.uint64(jj)
            s_new += data[u] * x[np.uint64(indices[u])]
        if d > start:
            u = np.uint64(d - 1)
            s_new += data[u] * x[np.uint64(indices[u])]
        aii = data[np.uint64(d)]
        bi = b[ui]
        ri = bi - (s_old + aii * xi + s_up)
        acc += float(ri) * float(ri)
        x[ui] = (1.0 - omega) * xi + (omega / aii) * (bi - s_new)
    return np.sqrt(acc)


@njit(cache=True, fastmath=_FM)
def sor_solve(indptr, indices, data, dpos, x, b, omega, symmetric, tol, maxiter, norms):
    """SOR (or SSOR) iteration to ``||b - A x|| <= tol`` on the true residual, in place.

    Iterate ``k`` is ``x0`` after ``k`` sweeps (forward, or forward + backward
    when ``symmetric``). The true residual of iterate ``k`` is computed inside
    the forward sweep that produces iterate ``k + 1``
    (:func:`sor_forward_residual`); when it meets ``tol`` (or ``k == maxiter``)
    that extra sweep is undone by restoring iterate ``k`` exactly, so the
    returned ``x`` is the one whose residual was measured and the iteration
    count is exact. Cost per iteration: one sweep (two when symmetric), no
    separate SpMV.

    Parameters
    ----------
    indptr, indices, data, dpos : ndarray
        CSR arrays and :func:`diagonal_positions`.
    x : ndarray
        Initial guess; overwritten with the final iterate.
    b : ndarray
    omega : float
    symmetric : bool
        SSOR (forward + backward per iteration) instead of forward SOR.
    tol : float
        Absolute threshold on ``||b - A x||_2``.
    maxiter : int
    norms : float64 ndarray, length >= maxiter + 1
        Receives the true residual norm of iterates ``0 .. k``.

    Returns
    -------
    iterations : int
    status : int
        0 converged, 1 ``maxiter`` reached, -3 NaN/Inf in the residual.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import diagonal_positions, sor_solve
    >>> A = linsolve.problems.poisson((10, 10)); b = np.ones(100); x = np.zeros(100)
    >>> dpos = diagonal_positions(A.indptr, A.indices); norms = np.empty(1001)
    >>> k, status = sor_solve(A.indptr, A.indices, A.data, dpos, x, b, 1.5, False, 1e-8, 1000, norms)
    >>> status, bool(np.linalg.norm(b - A @ x) <= 1e-8), bool(norms[k] <= 1e-8 < norms[k - 1])
    (0, True, True)
    """
    n = indptr.shape[0] - 1
    xprev = np.empty_like(x)
    k = 0
    while True:
        rn = sor_forward_residual(indptr, indices, data, dpos, x, xprev, b, omega)
        norms[k] = rn
        if rn <= tol or k >= maxiter or not np.isfinite(rn):
            for i in range(n):
                x[i] = xprev[i]
            if rn <= tol:
                return k, 0
            if not np.isfinite(rn):
                return k, -3
            return k, 1
        if symmetric:
            sor_backward(indptr, indices, data, dpos, x, b, omega)
        k += 1


@njit(cache=True, fastmath=_FM)
def ssor_apply(indptr, indices, data, dpos, omega, r, z):
    """``z = M^{-1} r`` for the SSOR preconditioner of a symmetric matrix.

    ``M^{-1} = (2 - omega)/omega * W^{-T} D W^{-1}`` with ``W = D/omega + L``,
    i.e. ``M = omega/(2 - omega) * W D^{-1} W^T``, the classical SSOR matrix
    ``(D + omega L) D^{-1} (D + omega U) / (omega (2 - omega))``. ``z`` equals
    one symmetric SOR sweep started from ``x = 0`` with right-hand side ``r``,
    but costs one pass over the matrix instead of two: the forward solve reads
    only the strictly lower part of each row and the backward solve only the
    strictly upper part (``A`` must be symmetric so that ``U = L^T``).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import diagonal_positions, ssor_apply, sor_symmetric
    >>> A = linsolve.problems.poisson((6, 6)); r = np.arange(36.0)
    >>> dpos = diagonal_positions(A.indptr, A.indices)
    >>> z = np.empty(36); ssor_apply(A.indptr, A.indices, A.data, dpos, 1.4, r, z)
    >>> x = np.zeros(36); sor_symmetric(A.indptr, A.indices, A.data, dpos, x, r, 1.4)
    >>> bool(np.allclose(z, x))
    True
    """
    n = indptr.shape[0] - 1
    scale = (2.0 - omega) / omega
    for i in range(n):
        start = indptr[i]
        d = dpos[i]
        s = 0.0
        for jj in range(start, d - 1):
            u = np.uint64(jj)
            s += data[u] * z[np.uint64(indices[u])]
        if d > start:
            u = np.uint64(d - 1)
            s += data[u] * z[np.uint64(indices[u])]
        ui = np.uint64(i)
        z[ui] = (omega / data[np.uint64(d)]) * (scale * r[ui] - s)
    for i in range(n - 1, -1, -1):
        d = dpos[i]
        end = indptr[i + 1]
        s = 0.0
        for jj in range(d + 2, end):
            u = np.uint64(jj)
            s += data[u] * z[np.uint64(indices[u])]
        if d + 1 < end:
            u = np.uint64(d + 1)
            s += data[u] * z[np.uint64(indices[u])]
        aii = data[np.uint64(d)]
        ui = np.uint64(i)
        z[ui] = (omega / aii) * (aii * z[ui] - s)


@njit(cache=True, parallel=True, fastmath=_FM)
def sor_sweep_rows(indptr, indices, data, dpos, x, b, omega, rows):
    """SOR update of the rows ``rows`` in parallel (one colour of a multicolour sweep).

    Correct only when no two rows in ``rows`` are coupled (``a_ij == 0`` for
    ``i != j`` both in ``rows``), e.g. the red or the black cells of a 5- or
    7-point grid (:func:`red_black_rows`); then the result does not depend on
    the order and equals a sequential sweep over ``rows``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import diagonal_positions, red_black_rows, sor_sweep_rows
    >>> A = linsolve.problems.poisson((8, 8)); b = np.ones(64); x = np.zeros(64)
    >>> dpos = diagonal_positions(A.indptr, A.indices); red, black = red_black_rows((8, 8))
    >>> for _ in range(60):
    ...     sor_sweep_rows(A.indptr, A.indices, A.data, dpos, x, b, 1.5, red)
    ...     sor_sweep_rows(A.indptr, A.indices, A.data, dpos, x, b, 1.5, black)
    >>> bool(np.linalg.norm(b - A @ x) < 1e-6)
    True
    """
    for k in prange(rows.shape[0]):
        i = rows[k]
        start = indptr[i]
        d = dpos[i]
        end = indptr[i + 1]
        s = 0.0
        for jj in range(start, d):
            u = np.uint64(jj)
            s += data[u] * x[np.uint64(indices[u])]
        for jj in range(d + 1, end):
            u = np.uint64(jj)
            s += data[u] * x[np.uint64(indices[u])]
        ui = np.uint64(i)
        x[ui] = (1.0 - omega) * x[ui] + (omega / data[np.uint64(d)]) * (b[ui] - s)


def red_black_rows(shape):
    """``(red, black)`` row indices of a C-ordered grid: red cells have an even index sum.

    Examples
    --------
    >>> from linsolve.kernels import red_black_rows
    >>> red, black = red_black_rows((2, 3))
    >>> red.tolist(), black.tolist()
    ([0, 2, 4], [1, 3, 5])
    """
    shape = tuple(int(s) for s in shape)
    parity = np.indices(shape).sum(axis=0).ravel() % 2
    return np.flatnonzero(parity == 0), np.flatnonzero(parity == 1)
