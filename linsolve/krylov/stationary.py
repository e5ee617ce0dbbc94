"""The stationary iteration ``x <- sweep(x)``, written once against the array interface.

Used by the torch backend's red-black SOR/SSOR (:mod:`linsolve.backends.torch_backend`)
with batched convergence checks; any array kind with the operations of
:mod:`linsolve.backends.array_api` works (the examples run it on NumPy).
The NumPy ``sor`` runs whole solves inside a compiled kernel instead
(:mod:`linsolve.krylov.sor`).
"""
from __future__ import annotations

import math

__all__ = ["stationary_loop"]


def stationary_loop(ops, sweep, matvec, b, x, *, tol, maxiter, callback=None, check_every=1):
    """A stationary iteration ``x <- sweep(x)`` with true residuals and batched checks.

    ``sweep(x, b, residual)`` updates ``x`` in place, given ``residual = b - A x``
    (which it may use for its first half sweep). The residual of every iterate is
    computed anyway for the next sweep, so ``residual_norms`` are true residuals
    at no extra cost. With ``check_every = k > 1`` the norms of *k* sweeps stay on
    the device; if one of them meets ``tol`` (index *j*), ``x`` is restored from
    the copy taken at the start of the batch and exactly *j + 1* sweeps are
    replayed, so ``x`` and the count are those of the unbatched loop.

    Returns ``(x, info, iterations, residual_norms, true_norm, message)``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.backends.array_api import NUMPY
    >>> from linsolve.krylov.stationary import stationary_loop
    >>> A = linsolve.problems.poisson((6, 6)); b = np.ones(36); d = A.diagonal()
    >>> jacobi = lambda x, b, r: NUMPY.add_scaled(x, 0.8 / d, r)
    >>> x, info, its, norms, true_norm, msg = stationary_loop(NUMPY, jacobi, A.dot, b, np.zeros(36),
    ...                                                       tol=1e-6, maxiter=1000)
    >>> info, its == len(norms) - 1, true_norm <= 1e-6
    (0, True, True)
    """
    host, norm = ops.to_float, ops.norm
    fused = getattr(matvec, "residual", None)
    residual = fused if fused is not None else (lambda b, x: b - matvec(x))
    res = residual(b, x)
    rnorm = host(norm(res))
    norms = [rnorm]
    iteration = 0
    batched = check_every > 1 and callback is None
    while True:
        if rnorm <= tol:
            return x, 0, iteration, norms, rnorm, "converged (true residual)"
        if not math.isfinite(rnorm):
            return x, -3, iteration, norms, rnorm, "breakdown: NaN/Inf in the residual"
        if iteration >= maxiter:
            return x, iteration, iteration, norms, rnorm, f"not converged after {iteration} iterations"
        if batched:
            steps = min(check_every, maxiter - iteration)
            start_x, start_res = ops.copy(x), res
            pending = []
            for _ in range(steps):
                sweep(x, b, res)
                res = residual(b, x)
                pending.append(norm(res))
            values = ops.to_host(pending)
            stop = next((j for j, v in enumerate(values) if not (v > tol)), None)
            if stop is None:
                iteration += steps
                norms += values
                rnorm = values[-1]
                continue
            x, res = start_x, start_res
            for _ in range(stop + 1):
                sweep(x, b, res)
                res = residual(b, x)
            iteration += stop + 1
            rnorm = host(norm(res))
            norms += values[:stop] + [rnorm]
            continue
        sweep(x, b, res)
        iteration += 1
        res = residual(b, x)
        rnorm = host(norm(res))
        norms.append(rnorm)
        if callback is not None:
            callback(ops.copy(x))
