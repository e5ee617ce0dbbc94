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
* CG is sign-blind: the iterates for ``(A, M)`` are those for ``(-A, -M)``,
  so negative definite systems (with or without ``M``) iterate as SciPy's.
  Like SciPy we keep iterating when ``pᴴAp`` or ``rᴴMr`` changes sign (a
  symmetric indefinite system, such as a Lagrange-bordered saddle point,
  may still converge), but a solve that then ends unconverged reports
  ``info = -1`` (``pᴴAp`` changed sign: A indefinite) or ``-2`` (``rᴴMr``
  did: M indefinite) instead of ``maxiter``. An exact ``pᴴAp = 0`` or
  ``rᴴMr = 0`` stops at once with ``-1`` / ``-2``, and NaN/Inf with ``-3``,
  where SciPy would divide by zero and continue with garbage;
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
from .._threads import limit_blas
from .._validation import make_system, solve_scaled
from ..backends.array_api import NUMPY, NUMPY_COMPLEX
from ._stopping import BREAKDOWN_INDEFINITE, BREAKDOWN_NONFINITE, BREAKDOWN_PRECONDITIONER

__all__ = ["cg", "cg_result", "cg_system", "pcg_loop", "check_symmetric_preconditioner"]


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
        ``info`` iterations; < 0 breakdown or not converged on an indefinite
        system (-1 ``pᴴAp`` vanished or changed sign: A indefinite; -2
        ``rᴴMr`` did: M indefinite; -3 NaN/Inf).

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
              stall_after=None, **options) -> SolveResult:
    """:func:`cg` returning a :class:`~linsolve.SolveResult` (iterations, residual history).

    ``residual_norms`` holds the recurrence residual norms (initial one first);
    ``true_residual_norm`` the checked true residual of the returned ``x``.
    ``stall_after``: see :func:`pcg_loop` (the drivers of our own
    preconditioners pass :data:`STALL_AFTER`; ``None`` keeps SciPy's loop).

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

    def run(b, x0, atol, callback):
        return cg_system(make_system(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback,
                                     allow_complex=True), stall_after=stall_after)

    res = solve_scaled(run, b, x0, atol, callback)
    res.time_s = time.perf_counter() - t0
    return res


def cg_system(system, stall_after=None) -> SolveResult:
    """:func:`cg_result` on a system already validated by :func:`linsolve._validation.make_system`.

    For callers that validated once and must not pay for it again (the
    drop-in :func:`linsolve.auto_cg` on its plain path).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve._validation import make_system
    >>> from linsolve.krylov.cg import cg_system
    >>> system = make_system(linsolve.problems.poisson((8, 8)), np.ones(64), rtol=1e-8)
    >>> cg_system(system).converged
    True
    """
    t0 = time.perf_counter()
    x, info, its, norms, true_norm, message = _pcg(system, stall_after)
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


def _pcg(system, stall_after=None):
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
    with limit_blas():
        return pcg_loop(ops, matvec, M.matvec if M is not None else None, system.b, system.x,
                        tol=system.tol, maxiter=system.maxiter, callback=system.callback, stall_after=stall_after)


#: ``r^T M r = 0`` with ``||r||`` below this fraction of the initial residual is the floor of the arithmetic
#: (the preconditioner's output underflows), not a singular preconditioner.
UNDERFLOW_FLOOR = 1e-20
#: Restarts from the true residual without halving it, after which :func:`pcg_loop` reports stagnation.
STAGNATION_CONFIRMATIONS = 3
#: Part of :func:`pcg_loop`'s message when it stopped on stagnation (a caller need not polish further).
STAGNATION_MESSAGE = "the true residual stays at"
#: Iterations without halving the best residual after which a loop given ``stall_after`` gives up on an
#: indefinite preconditioner (``r^T M r`` or ``p^T A p`` changed sign): a broken V-cycle (M ~ 1e32 on a pocket
#: sealed at the grid's edge, since fixed) stalled at 0.25 relative residual and ran its 10 n iterations,
#: more than 450 s at 1024^2, where SciPy's plain CG needed 0.25 s.
STALL_AFTER = 100
#: Part of :func:`pcg_loop`'s message when it gave up on an indefinite preconditioner.
STALL_MESSAGE = "no progress"


def _precision_name(x) -> str:
    dtype = getattr(x, "dtype", None)
    return str(dtype).replace("torch.", "") if dtype is not None else "this precision"


def pcg_loop(ops, matvec, psolve, b, x, *, tol, maxiter, callback=None, check_every=1, stall_after=None):
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
    stall_after : int, optional
        Once a sign change has shown ``A`` or ``M`` indefinite, stop (with
        that breakdown's ``info < 0``) when this many iterations have not
        halved the best residual so far; without a sign change, after twice
        as many (``info > 0``: the residual has reached the floor of the
        working precision above the tolerance). ``None`` (SciPy's loop) runs
        on to ``maxiter``; the drivers of our own preconditioners pass
        :data:`STALL_AFTER` so that a broken preconditioner fails fast and
        the caller's fallback can take over.

    Notes
    -----
    Nothing depends on the sign of ``pᴴAp`` or ``rᴴMr``: a negative definite
    ``A`` (or ``M``) iterates exactly as SciPy does. An exact zero stops the
    loop (breakdown); a sign change is remembered and turns an unconverged
    end into ``-1`` / ``-2`` (see the module notes).

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
    # Signs of p^H A p and r^H M r fixed by the first iteration (0: not seen yet), and whether they changed.
    signs = _Signs()
    stalled, best_true = 0, float("inf")
    best_norm, best_at = rnorm, 0  # for stall_after: the smallest residual that halved the one before it
    while True:
        if rnorm <= tol:
            # The recurrence claims convergence: confirm on the true residual.
            r_true, true_norm = ops.true_residual(matvec, b, x)
            if true_norm <= tol:
                return x, 0, iteration, norms, true_norm, "converged (true residual checked)"
            # Restarting from the true residual recovers a drifted recurrence; when it keeps landing above the
            # tolerance the working precision cannot represent a better x (float32 on a stiff matrix): stop.
            stalled = stalled + 1 if true_norm > 0.5 * best_true else 0
            best_true = min(best_true, true_norm)
            if stalled >= STAGNATION_CONFIRMATIONS:
                return (x, max(iteration, 1), iteration, norms, true_norm,
                        f"not converged: {STAGNATION_MESSAGE} {true_norm:.3e} above the tolerance "
                        f"{tol:.3e} after {stalled + 1} restarts from it (the attainable accuracy in "
                        f"{_precision_name(x)})")
            r, rnorm, restart = r_true, true_norm, True
            norms[-1] = rnorm
            if rnorm <= tol:  # pragma: no cover - guarded above
                continue
        if iteration >= maxiter:
            true_norm = ops.true_residual(matvec, b, x)[1]
            if true_norm <= tol:
                return x, 0, iteration, norms, true_norm, "converged at maxiter (true residual checked)"
            code, why = signs.verdict(iteration)
            return x, code, iteration, norms, true_norm, f"not converged after {iteration} iterations{why}"
        if stall_after is not None:
            if rnorm <= 0.5 * best_norm:
                best_norm, best_at = rnorm, iteration
            elif iteration - best_at >= stall_after * (1 if signs.rho_changed or signs.pq_changed else 2):
                # A preconditioned loop that has not halved its residual in this many iterations is stuck: an
                # indefinite preconditioner (a sign change), or the recurrence at the floor of the working
                # precision above the tolerance (a float32 two-phase box: 6e-5 from iteration 8 on, 7,000 more).
                true_norm = ops.true_residual(matvec, b, x)[1]
                if true_norm <= tol:  # pragma: no cover - the recurrence would have said so
                    return x, 0, iteration, norms, true_norm, "converged (true residual checked)"
                code, why = signs.verdict(iteration)
                if code > 0:
                    why = (f": the residual stays at {true_norm:.3e}, above the tolerance {tol:.3e} (the "
                           f"attainable accuracy in {_precision_name(x)}?)")
                return (x, code, iteration, norms, true_norm,
                        f"not converged: {STALL_MESSAGE} in the last {iteration - best_at} iterations{why}")
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
                if (not (finite(rho_j) and finite(pq_j) and finite(rn_j)) or pq_j == 0
                        or (has_m and rho_j == 0) or rn_j <= tol):
                    stop = j
                    break
            if stop is None:
                for j in range(steps):
                    signs.see(values[3 * j], values[3 * j + 1])
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
        if has_m and rho_host == 0:
            if rnorm <= UNDERFLOW_FLOOR * norms[0]:
                # r is so small that M r underflows (a single-precision cycle flushes it to 0): the iteration
                # has reached the floor of the arithmetic, the preconditioner is not at fault (rtol = atol = 0)
                return _at_floor(ops, matvec, b, x, iteration, norms, tol, rnorm)
            return _breakdown(ops, matvec, b, x, iteration, norms, tol, BREAKDOWN_PRECONDITIONER,
                              "r^T M r = 0 for r != 0: the preconditioner is singular or indefinite")
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
        if pq_host == 0:
            if rnorm <= UNDERFLOW_FLOOR * norms[0]:  # r (hence p) vanished: a tolerance of 0 or NaN, not A
                return _at_floor(ops, matvec, b, x, iteration, norms, tol, rnorm)
            return _breakdown(ops, matvec, b, x, iteration, norms, tol, BREAKDOWN_INDEFINITE,
                              "p^T A p = 0 for p != 0: A is singular or indefinite")
        signs.see(rho_host if has_m else 1.0, pq_host)
        alpha = rho_cur / pq
        ops.add_scaled(x, alpha, p)
        ops.sub_scaled(r, alpha, q)
        rho_prev = rho_cur
        iteration += 1
        rnorm = host(norm(r))
        norms.append(rnorm)
        if callback is not None:
            callback(ops.copy(x))


class _Signs:
    """Signs of ``rᴴMr`` and ``pᴴAp``: fixed by the first iteration, watched for a change.

    A change does not stop the iteration (SciPy's loop continues, and CG on a
    symmetric indefinite system may still converge, e.g. a Lagrange-bordered
    saddle point); it decides the code of a solve that ends unconverged.
    """

    __slots__ = ("rho", "pq", "rho_changed", "pq_changed")

    def __init__(self):
        self.rho = self.pq = 0
        self.rho_changed = self.pq_changed = False

    def see(self, rho: float, pq: float) -> None:
        s_rho, s_pq = (1 if rho > 0 else -1), (1 if pq > 0 else -1)
        if not self.pq:
            self.rho, self.pq = s_rho, s_pq
            return
        self.rho_changed |= s_rho != self.rho
        self.pq_changed |= s_pq != self.pq

    def verdict(self, iteration: int) -> tuple:
        if self.pq_changed:
            return BREAKDOWN_INDEFINITE, " (p^T A p changed sign: A is indefinite)"
        if self.rho_changed:
            return BREAKDOWN_PRECONDITIONER, " (r^T M r changed sign: the preconditioner is indefinite)"
        return iteration, ""


def _at_floor(ops, matvec, b, x, iteration, norms, tol, rnorm):
    """The residual fell to the floor of the arithmetic (``r^T M r`` or ``p^T A p`` is 0 because r is):
    converged if the true residual meets the tolerance, else not converged (``info > 0``), never a breakdown."""
    true_norm = ops.true_residual(matvec, b, x)[1]
    if true_norm <= tol:
        return x, 0, iteration, norms, true_norm, "converged (true residual checked)"
    return (x, max(iteration, 1), iteration, norms, true_norm,
            f"not converged: the residual fell to {rnorm:.3e} ({rnorm / norms[0]:.1e} of the initial one), the "
            f"floor of the arithmetic; the tolerance {tol:.3e} cannot be met")


def _breakdown(ops, matvec, b, x, iteration, norms, tol, code, message):
    true_norm = ops.to_float(ops.norm(b - matvec(x)))
    if math.isfinite(true_norm) and true_norm <= tol:
        return x, 0, iteration, norms, true_norm, "converged (true residual checked at breakdown)"
    return x, code, iteration, norms, true_norm, "breakdown: " + message
