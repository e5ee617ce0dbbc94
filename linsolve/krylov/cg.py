"""Preconditioned conjugate gradients, iterate for iterate the same as SciPy's ``cg``.

Differences from ``scipy.sparse.linalg.cg`` (all on purpose):

* convergence is claimed only after the *true* residual ``b - A x`` meets the
  threshold; when the recurrence residual has drifted, the true residual
  replaces it and the iteration restarts from ``x`` (so rounding can never make
  us report a wrong ``x`` as converged);
* reaching the threshold on exactly the last allowed iteration gives
  ``info == 0`` (SciPy returns ``maxiter`` there);
* ``p^T A p <= 0`` (A indefinite or not symmetric) stops with ``info = -1``
  and ``r^T M r <= 0`` (M not positive definite) with ``info = -2`` instead of
  returning garbage;
* the iteration count and residual history are available through
  :func:`cg_result` / :func:`linsolve.solve`;
* a preconditioner that declares itself non-symmetric (``M.symmetric is
  False``, e.g. a learned DCDM network) is refused with ``ValueError``: CG's
  short recurrence is only valid for a symmetric ``M``.

The loop itself, :func:`pcg_loop`, is written once against the small array
interface of :mod:`linsolve.backends.array_api`; :func:`cg` runs it on NumPy
arrays (checking every scalar as it comes, exactly SciPy's loop) and the torch
backend runs it on tensors with the convergence check batched every *k*
iterations (see :func:`pcg_loop`).
"""
from __future__ import annotations

import math
import time

import numpy as np

from .._result import SolveResult
from .._validation import make_system
from ..backends.array_api import NUMPY
from ._stopping import BREAKDOWN_INDEFINITE, BREAKDOWN_NONFINITE, BREAKDOWN_PRECONDITIONER

__all__ = ["cg", "cg_result", "pcg_loop", "check_symmetric_preconditioner"]


def cg(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None):
    """Solve ``A x = b`` for symmetric positive definite ``A`` by (preconditioned) CG.

    Drop-in replacement for :func:`scipy.sparse.linalg.cg`.

    Parameters
    ----------
    A : sparse matrix, ndarray or LinearOperator, shape (n, n)
        Symmetric positive definite.
    b : ndarray, shape (n,) or (n, 1)
    x0 : ndarray, optional
        Starting guess (zero by default).
    rtol, atol : float
        Stop when ``||b - A x||_2 <= max(rtol * ||b||_2, atol)``, checked on the
        true residual.
    maxiter : int, optional
        Maximum number of iterations; ``None`` means ``10 * n``.
    M : LinearOperator or matrix, optional
        Symmetric positive definite preconditioner approximating ``A^-1``.
    callback : callable, optional
        ``callback(xk)`` once per iteration with a copy of the iterate.

    Returns
    -------
    x : ndarray
    info : int
        0 converged; > 0 not converged after ``info`` iterations; < 0 breakdown
        (-1 A not SPD, -2 M not SPD, -3 NaN/Inf).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((32, 32))
    >>> b = np.ones(A.shape[0])
    >>> x, info = linsolve.cg(A, b, rtol=1e-8)
    >>> info, bool(np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b))
    (0, True)
    """
    res = cg_result(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback)
    return res.x, res.info


def cg_result(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
              **options) -> SolveResult:
    """:func:`cg` returning a :class:`~linsolve.SolveResult` (iterations, residual history).

    ``residual_norms`` holds the recurrence residual norms (initial one first);
    ``true_residual_norm`` the checked true residual of the returned ``x``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((16, 16))
    >>> res = linsolve.krylov.cg_result(A, np.ones(256), rtol=1e-8)
    >>> res.converged, res.iterations == len(res.residual_norms) - 1
    (True, True)
    """
    if options:
        raise TypeError(f"cg got unexpected options: {sorted(options)}")
    check_symmetric_preconditioner(M)
    t0 = time.perf_counter()
    system = make_system(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback)
    x, info, its, norms, true_norm, message = _pcg(system)
    return SolveResult(x=x, converged=info == 0, info=info, iterations=its, residual_norms=norms,
                       method="cg" if system.M is None else "pcg", time_s=time.perf_counter() - t0,
                       true_residual_norm=true_norm, b_norm=system.bnorm, residual_kind="recurrence",
                       message=message)


def check_symmetric_preconditioner(M) -> None:
    """Refuse a preconditioner that declares itself non-symmetric (``M.symmetric is False``).

    Examples
    --------
    >>> from linsolve.krylov.cg import check_symmetric_preconditioner
    >>> class Net: symmetric = False
    >>> check_symmetric_preconditioner(Net())
    Traceback (most recent call last):
    ...
    ValueError: M is not symmetric (learned DCDM network); use linsolve.dcdm or a flexible method
    """
    if M is not None and getattr(M, "symmetric", True) is False:
        raise ValueError("M is not symmetric (learned DCDM network); use linsolve.dcdm or a flexible method")


def _pcg(system):
    """The CG loop on a validated NumPy system. Returns (x, info, iterations, norms, true_norm, msg)."""
    if system.bnorm == 0.0:
        # SciPy's convention: b = 0 has the exact solution 0, whatever x0 was.
        return np.zeros_like(system.b), 0, 0, [0.0], 0.0, "b is zero; x = 0 is exact"
    M = system.M
    # An explicit CSR matrix is applied directly: the same product as LinearOperator.matvec, without its
    # per-call shape checks and reshapes, which dominate small solves (e.g. n = 100 in a tuning loop).
    matvec = system.matrix.dot if system.matrix is not None else system.A.matvec
    return pcg_loop(NUMPY, matvec, M.matvec if M is not None else None, system.b, system.x,
                    tol=system.tol, maxiter=system.maxiter, callback=system.callback)


def pcg_loop(ops, matvec, psolve, b, x, *, tol, maxiter, callback=None, check_every=1):
    """The preconditioned CG iteration, written once against an array interface.

    Used with :data:`linsolve.backends.array_api.NUMPY` by :func:`cg` (where it
    reproduces SciPy's iterates exactly) and with the torch operations by
    :mod:`linsolve.backends.torch_backend`.

    Parameters
    ----------
    ops : ArrayOps
        :mod:`linsolve.backends.array_api` operations for the arrays' kind.
    matvec, psolve : callable
        ``A @ v`` and ``M @ v`` (``psolve=None``: no preconditioner).
    b, x : arrays
        Right-hand side (nonzero) and starting iterate (updated in place
        unless the batched scheme rewinds it; use the returned ``x``).
    tol : float
        Absolute threshold on the true residual norm.
    maxiter : int
    callback : callable, optional
        ``callback(copy of x)`` after every iteration.
    check_every : int
        Host synchronisation interval *k*. ``1``: every scalar is brought to
        the host and checked as soon as it is computed (NumPy; SciPy's loop).
        ``k > 1`` (torch): *k* iterations run without looking at any scalar;
        their ``r^T z``, ``p^T A p`` and ``||r||`` stay on the device and are
        fetched in one transfer. If none of them asks to stop, all *k* are
        kept. Otherwise the first one that does (index *j*) is known exactly:
        ``x, r, p`` are restored from the copy taken at the start of the batch
        and the first *j + 1* iterations are replayed one by one with checks,
        so the returned ``x``, the iteration count, ``info`` and the residual
        history are those of the unbatched loop. Cost: three vector copies
        per batch and at most ``2k - 1`` extra iterations per solve (the
        overshoot and the replay). With a callback every iterate must be seen,
        so ``check_every`` is forced to 1.

    Returns
    -------
    x, info, iterations, residual_norms (host floats, recurrence residuals,
    initial one first), true_norm, message

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.backends.array_api import NUMPY
    >>> from linsolve.krylov.cg import pcg_loop
    >>> A = linsolve.problems.poisson((8, 8)); b = np.ones(64)
    >>> x, info, its, norms, true_norm, msg = pcg_loop(NUMPY, A.dot, None, b, np.zeros(64),
    ...                                                tol=1e-8, maxiter=100)
    >>> info, its == len(norms) - 1, true_norm <= 1e-8
    (0, True, True)
    """
    dot, norm, host = ops.dot, ops.norm, ops.to_float
    finite = ops.isfinite
    has_m = psolve is not None
    r = b - matvec(x) if ops.any_nonzero(x) else ops.copy(b)
    rnorm = host(norm(r))
    norms = [rnorm]
    p = None
    rho_prev = None
    restart = True
    iteration = 0
    batched = check_every > 1 and callback is None
    replay = 0  # iterations still to run one by one after a rewind
    while True:
        if rnorm <= tol:
            # The recurrence claims convergence: confirm on the true residual.
            r_true = b - matvec(x)
            true_norm = host(norm(r_true))
            if true_norm <= tol:
                return x, 0, iteration, norms, true_norm, "converged (true residual checked)"
            r, rnorm, restart = r_true, true_norm, True
            norms[-1] = rnorm
            if rnorm <= tol:  # pragma: no cover - guarded above
                continue
        if iteration >= maxiter:
            true_norm = host(norm(b - matvec(x)))
            if true_norm <= tol:
                return x, 0, iteration, norms, true_norm, "converged at maxiter (true residual checked)"
            return x, iteration, iteration, norms, true_norm, f"not converged after {iteration} iterations"
        if batched and replay == 0:
            steps = min(check_every, maxiter - iteration)
            saved = (x, r, p, rho_prev, restart)
            x, r = ops.copy(x), ops.copy(r)
            if not restart:
                p = ops.copy(p)
            scalars = []
            for _ in range(steps):
                z = psolve(r) if has_m else r
                rho_cur = dot(r, z)
                if restart:
                    p = ops.copy(z)
                    restart = False
                else:
                    ops.scale_add(p, rho_cur / rho_prev, z)
                q = matvec(p)
                pq = dot(p, q)
                alpha = rho_cur / pq
                ops.add_scaled(x, alpha, p)
                ops.sub_scaled(r, alpha, q)
                rho_prev = rho_cur
                scalars += (rho_cur, pq, norm(r))
            values = ops.to_host(scalars)
            stop = None
            for j in range(steps):
                rho_j, pq_j, rn_j = values[3 * j:3 * j + 3]
                if (not (finite(rho_j) and finite(pq_j) and finite(rn_j)) or pq_j <= 0
                        or (has_m and rho_j <= 0) or rn_j <= tol):
                    stop = j
                    break
            if stop is None:
                iteration += steps
                new_norms = values[2::3]
                norms += new_norms
                rnorm = new_norms[-1]
                continue
            # Rewind to the start of the batch (the copies above left these untouched).
            x, r, p, rho_prev, restart = saved
            replay = stop + 1
            continue
        if replay:
            replay -= 1
        z = psolve(r) if has_m else r
        rho_cur = dot(r, z)
        rho_host = host(rho_cur)
        if not finite(rho_host):
            return _breakdown(ops, matvec, b, x, iteration, norms, tol, BREAKDOWN_NONFINITE,
                              "NaN/Inf in r^T M r")
        if has_m and rho_host <= 0:
            return _breakdown(ops, matvec, b, x, iteration, norms, tol, BREAKDOWN_PRECONDITIONER,
                              f"r^T M r = {rho_host:.3g} <= 0: the preconditioner is not positive definite")
        if restart:
            p = ops.copy(z)
            restart = False
        else:
            ops.scale_add(p, rho_cur / rho_prev, z)
        q = matvec(p)
        pq = dot(p, q)
        pq_host = host(pq)
        if not finite(pq_host):
            return _breakdown(ops, matvec, b, x, iteration, norms, tol, BREAKDOWN_NONFINITE,
                              "NaN/Inf in p^T A p")
        if pq_host <= 0:
            return _breakdown(ops, matvec, b, x, iteration, norms, tol, BREAKDOWN_INDEFINITE,
                              f"p^T A p = {pq_host:.3g} <= 0: A is not symmetric positive definite")
        alpha = rho_cur / pq
        ops.add_scaled(x, alpha, p)
        ops.sub_scaled(r, alpha, q)
        rho_prev = rho_cur
        iteration += 1
        rnorm = host(norm(r))
        norms.append(rnorm)
        if callback is not None:
            callback(ops.copy(x))


def _breakdown(ops, matvec, b, x, iteration, norms, tol, code, message):
    true_norm = ops.to_float(ops.norm(b - matvec(x)))
    if math.isfinite(true_norm) and true_norm <= tol:
        return x, 0, iteration, norms, true_norm, "converged (true residual checked at breakdown)"
    return x, code, iteration, norms, true_norm, "breakdown: " + message
