"""Preconditioned conjugate gradients, iterate for iterate the same as SciPy's ``cg``.

:func:`cg` accepts everything ``scipy.sparse.linalg.cg`` accepts (real or
complex Hermitian systems, ``x0="Mb"``, tolerances ``0`` and ``inf``, NumPy
and 0-d array tolerances, a NaN ``rtol``, ``b = 0``, definite systems of
either sign with or without a preconditioner) and computes the same iterates:
the loop below performs SciPy's floating-point operations in SciPy's order.

Where it differs from ``scipy.sparse.linalg.cg`` (all on purpose):

* convergence is claimed only after the *true* residual ``b - A x`` meets
  ``max(atol, rtol ||b||)``; when the recurrence residual has drifted below
  it but the true one has not, the true residual replaces it and the
  iteration continues from ``x`` (SciPy returns ``info = 0`` there; we never
  report a wrong ``x`` as converged). A residual exactly at the threshold
  counts as converged (SciPy asks for strictly below);
* the threshold reached on exactly the last allowed iteration gives
  ``info == 0`` (SciPy returns ``maxiter`` there, without looking);
* CG only needs ``pᴴAp`` to keep one sign (A definite, either sign) and, with
  ``M``, ``rᴴMr`` to keep one sign (M definite): the iterates for ``(A, M)``
  are those for ``(-A, -M)``. When ``pᴴAp`` changes sign or is zero we stop
  with ``info = -1`` (A indefinite), when ``rᴴMr`` does, with ``info = -2``
  (M indefinite), and on NaN/Inf with ``info = -3``, where SciPy would
  continue with garbage;
* NaN or Inf in ``A`` or ``b``, a negative ``rtol``, ``maxiter <= 0`` and a
  plain callable as ``M`` are refused with ``ValueError`` / ``TypeError``
  (SciPy iterates on NaNs, ignores a negative ``rtol`` and returns
  ``info = 0`` for ``maxiter=0``);
* ``callback`` receives a copy of the iterate (SciPy passes ``x`` itself);
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
from ..backends.array_api import NUMPY, NUMPY_COMPLEX
from ._stopping import BREAKDOWN_INDEFINITE, BREAKDOWN_NONFINITE, BREAKDOWN_PRECONDITIONER

__all__ = ["cg", "cg_result", "pcg_loop", "check_symmetric_preconditioner"]


def cg(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None):
    """Solve ``A x = b`` for a symmetric (Hermitian) definite ``A`` by (preconditioned) CG.

    Drop-in replacement for :func:`scipy.sparse.linalg.cg`, with the same
    iterates (see the module notes for the few deliberate differences).

    Parameters
    ----------
    A : sparse matrix, ndarray or LinearOperator, shape (n, n)
        Real symmetric or complex Hermitian, positive or negative definite.
    b : ndarray, shape (n,) or (n, 1)
    x0 : ndarray or "Mb", optional
        Starting guess (zero by default; ``"Mb"``: ``M @ b``).
    rtol, atol : float (Python, NumPy or 0-d array)
        Stop when ``||b - A x||_2 <= max(atol, rtol * ||b||_2)``, checked on
        the true residual. ``inf`` returns ``x0`` at once, ``0`` (both) runs
        to ``maxiter``; a NaN ``rtol`` leaves ``atol`` alone, as in SciPy.
        ``b = 0`` returns ``x = 0`` with ``info = 0`` whatever the tolerances.
    maxiter : int, optional
        Maximum number of iterations; ``None`` means ``10 * n``.
    M : LinearOperator or matrix, optional
        Symmetric definite preconditioner approximating ``A^-1``.
    callback : callable, optional
        ``callback(xk)`` once per iteration with a copy of the iterate.

    Returns
    -------
    x : ndarray
        In the solve dtype (SciPy's coercion of A's and b's dtypes).
    info : int
        0 converged (true residual checked); > 0 not converged after
        ``info`` iterations; < 0 breakdown (-1 ``pᴴAp`` changed sign or
        vanished: A indefinite; -2 ``rᴴMr`` did: M indefinite; -3 NaN/Inf).

    Raises
    ------
    ValueError
        Shapes, NaN/Inf in A or b, a negative tolerance or ``atol=None`` /
        ``"legacy"`` (as SciPy), ``maxiter <= 0``.
    TypeError
        Positional tolerances (keyword-only, as SciPy), non-numeric data, a
        plain callable as ``M``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((32, 32))
    >>> b = np.ones(A.shape[0])
    >>> x, info = linsolve.cg(A, b, rtol=1e-8)
    >>> info, bool(np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b))
    (0, True)
    >>> x_neg, info = linsolve.cg(-A, -b, rtol=1e-8)    # negative definite: same iterates
    >>> info, bool(np.array_equal(x_neg, x))
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
    system = make_system(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback,
                         allow_complex=True)
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
    if system.dense is not None:
        matvec = system.dense.dot  # SciPy's product for a dense A: same rounding, same iterates
    elif system.matrix is not None:
        matvec = system.matrix.dot
    else:
        matvec = system.A.matvec
    ops = NUMPY_COMPLEX if system.dtype.kind == "c" else NUMPY
    return pcg_loop(ops, matvec, M.matvec if M is not None else None, system.b, system.x,
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

    Notes
    -----
    The sign of ``pᴴAp`` (and, with ``M``, of ``rᴴMr``) seen on the first
    iteration is the definite block's sign: a negative definite ``A`` (or
    ``M``) iterates exactly as SciPy does. Breakdown is a later change of that
    sign or an exact zero.

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
    # Signs of p^H A p and r^H M r fixed by the first iteration (0: not seen yet).
    sign_pq = sign_rho = 0
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
            s_pq, s_rho = sign_pq, sign_rho
            for j in range(steps):
                rho_j, pq_j, rn_j = values[3 * j:3 * j + 3]
                if (not (finite(rho_j) and finite(pq_j) and finite(rn_j)) or _sign_broken(pq_j, s_pq)
                        or (has_m and _sign_broken(rho_j, s_rho)) or rn_j <= tol):
                    stop = j
                    break
                s_pq = s_pq or (1 if pq_j > 0 else -1)
                s_rho = s_rho or (1 if rho_j > 0 else -1)
            if stop is None:
                sign_pq, sign_rho = s_pq, s_rho
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
        if has_m and _sign_broken(rho_host, sign_rho):
            return _breakdown(ops, matvec, b, x, iteration, norms, tol, BREAKDOWN_PRECONDITIONER,
                              f"r^T M r = {rho_host:.3g} {_sign_change(sign_rho)}: the preconditioner is not "
                              f"definite")
        sign_rho = sign_rho or (1 if rho_host > 0 else -1)
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
        if _sign_broken(pq_host, sign_pq):
            return _breakdown(ops, matvec, b, x, iteration, norms, tol, BREAKDOWN_INDEFINITE,
                              f"p^T A p = {pq_host:.3g} {_sign_change(sign_pq)}: A is not symmetric definite")
        sign_pq = sign_pq or (1 if pq_host > 0 else -1)
        alpha = rho_cur / pq
        ops.add_scaled(x, alpha, p)
        ops.sub_scaled(r, alpha, q)
        rho_prev = rho_cur
        iteration += 1
        rnorm = host(norm(r))
        norms.append(rnorm)
        if callback is not None:
            callback(ops.copy(x))


def _sign_broken(value: float, sign: int) -> bool:
    """CG's denominators must keep the sign of their first value and never vanish."""
    return value == 0 or (sign > 0 and value < 0) or (sign < 0 and value > 0)


def _sign_change(sign: int) -> str:
    return "after positive values" if sign > 0 else ("after negative values" if sign < 0 else "is zero")


def _breakdown(ops, matvec, b, x, iteration, norms, tol, code, message):
    true_norm = ops.to_float(ops.norm(b - matvec(x)))
    if math.isfinite(true_norm) and true_norm <= tol:
        return x, 0, iteration, norms, true_norm, "converged (true residual checked at breakdown)"
    return x, code, iteration, norms, true_norm, "breakdown: " + message
