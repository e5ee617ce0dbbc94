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
  :func:`cg_result` / :func:`linsolve.solve`.
"""
from __future__ import annotations

import time

import numpy as np

from .._result import SolveResult
from .._validation import make_system
from ._stopping import (BREAKDOWN_INDEFINITE, BREAKDOWN_NONFINITE, BREAKDOWN_PRECONDITIONER,
                        true_residual)

__all__ = ["cg", "cg_result"]


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
    t0 = time.perf_counter()
    system = make_system(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback)
    x, info, its, norms, true_norm, message = _pcg(system)
    return SolveResult(x=x, converged=info == 0, info=info, iterations=its, residual_norms=norms,
                       method="cg" if system.M is None else "pcg", time_s=time.perf_counter() - t0,
                       true_residual_norm=true_norm, b_norm=system.bnorm, residual_kind="recurrence",
                       message=message)


def _pcg(system):
    """The CG loop on a validated system. Returns (x, info, iterations, norms, true_norm, msg)."""
    A, b, x, M, tol = system.A, system.b, system.x, system.M, system.tol
    callback = system.callback
    dot = np.dot
    if system.bnorm == 0.0:
        # SciPy's convention: b = 0 has the exact solution 0, whatever x0 was.
        x = np.zeros_like(b)
        return x, 0, 0, [0.0], 0.0, "b is zero; x = 0 is exact"

    r = true_residual(A, b, x) if x.any() else b.copy()
    rnorm = float(np.linalg.norm(r))
    norms = [rnorm]
    p = None
    rho_prev = None
    restart = True
    iteration = 0
    while True:
        if rnorm <= tol:
            # The recurrence claims convergence: confirm on the true residual.
            r_true = true_residual(A, b, x)
            true_norm = float(np.linalg.norm(r_true))
            if true_norm <= tol:
                return x, 0, iteration, norms, true_norm, "converged (true residual checked)"
            r, rnorm, restart = r_true, true_norm, True
            norms[-1] = rnorm
            if rnorm <= tol:  # pragma: no cover - guarded above
                continue
        if iteration >= system.maxiter:
            true_norm = float(np.linalg.norm(true_residual(A, b, x)))
            if true_norm <= tol:
                return x, 0, iteration, norms, true_norm, "converged at maxiter (true residual checked)"
            return x, iteration, iteration, norms, true_norm, f"not converged after {iteration} iterations"
        z = M.matvec(r) if M is not None else r
        rho_cur = dot(r, z)
        if not np.isfinite(rho_cur):
            return _breakdown(A, b, x, iteration, norms, tol, BREAKDOWN_NONFINITE, "NaN/Inf in r^T M r")
        if M is not None and rho_cur <= 0:
            return _breakdown(A, b, x, iteration, norms, tol, BREAKDOWN_PRECONDITIONER,
                              f"r^T M r = {rho_cur:.3g} <= 0: the preconditioner is not positive definite")
        if restart:
            p = np.empty_like(r)
            p[:] = z[:]
            restart = False
        else:
            beta = rho_cur / rho_prev
            p *= beta
            p += z
        q = A.matvec(p)
        pq = dot(p, q)
        if not np.isfinite(pq):
            return _breakdown(A, b, x, iteration, norms, tol, BREAKDOWN_NONFINITE, "NaN/Inf in p^T A p")
        if pq <= 0:
            return _breakdown(A, b, x, iteration, norms, tol, BREAKDOWN_INDEFINITE,
                              f"p^T A p = {pq:.3g} <= 0: A is not symmetric positive definite")
        alpha = rho_cur / pq
        x += alpha * p
        r -= alpha * q
        rho_prev = rho_cur
        iteration += 1
        rnorm = float(np.linalg.norm(r))
        norms.append(rnorm)
        if callback is not None:
            callback(x.copy())


def _breakdown(A, b, x, iteration, norms, tol, code, message):
    true_norm = float(np.linalg.norm(true_residual(A, b, x)))
    if np.isfinite(true_norm) and true_norm <= tol:
        return x, 0, iteration, norms, true_norm, "converged (true residual checked at breakdown)"
    return x, code, iteration, norms, true_norm, "breakdown: " + message
