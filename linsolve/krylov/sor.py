"""SOR and SSOR as stationary solvers, and the driver of SSOR-preconditioned CG.

One SOR iteration is one forward sweep ``x += (D/omega + L)^{-1} (b - A x)``;
with ``symmetric=True`` (SSOR) it is a forward then a backward sweep. Sweeps
follow ``pyamg.relaxation.relaxation.sor`` (see :mod:`linsolve.kernels.sor`).

Stopping rule: the TRUE residual ``||b - A x_k||`` of every iterate is
compared with ``max(rtol ||b||, atol)``. It costs no separate SpMV: the
forward sweep that produces ``x_{k+1}`` computes ``b - A x_k`` from the
entries of ``x_k`` on the way (it still has them), and when ``x_k`` turns out
converged that extra sweep is undone by restoring ``x_k`` exactly. The
iteration count is therefore exact (it is the cost signal of Learning to
Relax) and the returned ``x`` is the iterate whose residual was measured.

Before ``info == 0`` is returned, ``b - A x`` of the final iterate is also
computed once more with a separate SpMV (:func:`linsolve.kernels.csr_residual`);
should rounding make it disagree with the in-sweep value at the threshold, the
iteration simply continues.

Without a callback the whole loop runs inside one numba function
(:func:`linsolve.kernels.sor_solve`): validation happens once, then there is
no Python work per iteration, which keeps n = 100 solves at tens of
microseconds.
"""
from __future__ import annotations

import time

import numpy as np

from .._result import SolveResult
from .._validation import (check_omega, check_positive_diagonal, complex_operand, make_system, solve_scaled,
                           user_stacklevel)
from ._stopping import BREAKDOWN_NONFINITE

__all__ = ["sor", "sor_result", "ssor_cg_result"]

# Residual history is written by the kernel into a preallocated buffer; long
# runs are split into chunks of this many iterations so the buffer stays small.
_CHUNK = 20_000


def sor(A, b, x0=None, *, omega=1.0, rtol=1e-5, atol=0.0, maxiter=None, symmetric=False, callback=None):
    """Solve ``A x = b`` by successive over-relaxation (SSOR with ``symmetric=True``).

    Parameters
    ----------
    A : sparse matrix or ndarray, shape (n, n)
        Any matrix with a positive diagonal, or a negative one throughout (a
        negative definite A iterates as ``-A``), converted to CSR once. SOR
        converges for every ``omega`` in (0, 2) when ``A`` is SPD. What
        SciPy's ``cg`` takes but SOR cannot sweep (a LinearOperator, complex
        data) is solved by CG, with a ``UserWarning`` and ``method="sor->cg"``.
    b : ndarray, shape (n,) or (n, 1)
    x0 : ndarray, optional
        Starting guess (warm start); zero by default.
    omega : float
        Relaxation factor in (0, 2); 1 is Gauss-Seidel. See
        :func:`linsolve.tuning.optimal_omega` for the classical optimum.
    rtol, atol : float
        Stop when ``||b - A x||_2 <= max(rtol * ||b||_2, atol)`` on the true
        residual (computed inside the sweep, no extra SpMV).
    maxiter : int, optional
        Maximum number of iterations (sweeps); ``None`` means ``10 * n``.
    symmetric : bool
        One iteration = forward + backward sweep (SSOR).
    callback : callable, optional
        ``callback(xk)`` once per iteration with a copy of the iterate.

    Returns
    -------
    x : ndarray
    info : int
        0 converged; > 0 not converged after ``info`` iterations; -3 NaN/Inf
        appeared (the iteration diverged, e.g. a non-SPD ``A``).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((16, 16))
    >>> b = np.ones(A.shape[0])
    >>> x, info = linsolve.sor(A, b, omega=1.7, rtol=1e-8)
    >>> info, bool(np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b))
    (0, True)
    """
    def run(b, x0, atol, callback):
        return sor_result(A, b, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback, omega=omega,
                          symmetric=symmetric)

    res = solve_scaled(run, b, x0, atol, callback)  # right-hand sides beyond 2^+-400, as cg does
    return res.x, res.info


def _no_sor_reason(A, b):
    """Why SOR cannot run on this system (None when it can): complex data, or no entries to sweep."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import LinearOperator

    complex_name = complex_operand((A, "A"), (b, "b"))
    if complex_name is not None:
        return f"{complex_name} is complex (the SOR sweeps are real)"
    if isinstance(A, LinearOperator) and not sp.issparse(A):
        return "A is a LinearOperator (SOR sweeps need its entries)"
    return None


def _prepare(A, b, x0, rtol, atol, maxiter, callback, omega, symmetric):
    from ..kernels.sor import diagonal_positions

    system = make_system(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback)
    if system.matrix is None:
        raise TypeError("SOR needs the matrix entries: pass A as a sparse matrix or ndarray, "
                        "not a LinearOperator")
    omega = check_omega(omega)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric must be True or False, got {symmetric!r}")
    mat = system.matrix
    diag = mat.diagonal()
    if not (diag.size and np.all(diag < 0)):
        # a negative definite A (every diagonal entry negative) iterates as -A: each row's update
        # (b_i - sum_j a_ij x_j) / a_ii does not change when the row changes sign
        check_positive_diagonal(mat)
    dpos = diagonal_positions(mat.indptr, mat.indices)
    return system, omega, bool(symmetric), dpos


def sor_result(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None, omega=1.0,
               symmetric=False) -> SolveResult:
    """:func:`sor` returning a :class:`~linsolve.SolveResult` (driver of ``solve(method="sor")``).

    ``residual_norms`` are true residual norms ``||b - A x_k||`` of iterates
    ``k = 0 .. iterations``; ``extras`` holds ``omega`` and ``symmetric``.
    ``M`` must be ``None`` (SOR takes no preconditioner).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((10, 10))
    >>> res = linsolve.solve(A, np.ones(100), method="sor", omega=1.5, rtol=1e-8)
    >>> res.converged, res.iterations == len(res.residual_norms) - 1, res.method
    (True, True, 'sor')
    """
    t0 = time.perf_counter()
    if M is not None:
        raise ValueError("SOR takes no preconditioner: M must be None (use method='ssor-cg' for "
                         "SSOR-preconditioned CG)")
    reason = _no_sor_reason(A, b)
    if reason is not None:
        # what the contract lets a caller pass to any CG: solved by CG, and said so
        import warnings

        from .cg import cg_result

        check_omega(omega)
        warnings.warn(f"sor: {reason}; solved by CG instead", UserWarning, stacklevel=user_stacklevel())
        res = cg_result(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback)
        res.method = f"{'ssor' if symmetric else 'sor'}->cg"
        res.message = f"{reason}: solved by CG; {res.message}"
        res.extras.update(fallback_reason=reason)
        res.time_s = time.perf_counter() - t0
        return res
    system, omega, symmetric, dpos = _prepare(A, b, x0, rtol, atol, maxiter, callback, omega, symmetric)
    method = "ssor" if symmetric else "sor"
    extras = {"omega": omega, "symmetric": symmetric}
    if system.bnorm == 0.0:
        # SciPy's convention, as in CG: b = 0 has the exact solution 0.
        return SolveResult(x=np.zeros_like(system.b), converged=True, info=0, iterations=0,
                           residual_norms=[0.0], method=method, time_s=time.perf_counter() - t0,
                           true_residual_norm=0.0, b_norm=0.0, residual_kind="true",
                           message="b is zero; x = 0 is exact", extras=extras)
    if system.callback is None:
        its, status, norms, true_norm = _run_compiled(system, omega, symmetric, dpos)
    else:
        its, status, norms, true_norm = _run_with_callback(system, omega, symmetric, dpos)
    if status == 0:
        info, message = 0, "converged (true residual)"
    elif status == -3:
        info, message = BREAKDOWN_NONFINITE, f"NaN/Inf in the residual after {its} iterations (diverged)"
    else:
        info, message = its, f"not converged after {its} iterations"
    return SolveResult(x=system.x, converged=info == 0, info=info, iterations=its,
                       residual_norms=norms, method=method, time_s=time.perf_counter() - t0,
                       true_residual_norm=true_norm, b_norm=system.bnorm, residual_kind="true",
                       message=message, extras=extras)


def _explicit_residual_norm(mat, x, b) -> float:
    from ..kernels.spmv import csr_residual

    return csr_residual(mat.indptr, mat.indices, mat.data, x, b)[1]


def _run_compiled(system, omega, symmetric, dpos):
    """Whole solve in :func:`linsolve.kernels.sor_solve`, in chunks of ``_CHUNK`` iterations.

    Returns ``(iterations, status, norms, true_norm)``; ``true_norm`` is an
    explicit ``b - A x`` of the returned iterate (one SpMV per solve).
    """
    from ..kernels.sor import sor_backward, sor_forward, sor_solve

    mat, x, b, tol = system.matrix, system.x, system.b, system.tol
    norms: list = []
    done = 0
    known = False  # whether norms[-1] already holds the residual of the current x
    while True:
        chunk = min(system.maxiter - done, _CHUNK)
        buf = np.empty(chunk + 1)
        k, status = sor_solve(mat.indptr, mat.indices, mat.data, dpos, x, b, omega, symmetric, tol, chunk,
                              buf)
        # The kernel's first entry is the residual of the iterate it started from.
        norms.extend(buf[(1 if known else 0):k + 1].tolist())
        known = True
        done += k
        if status == 0:
            true_norm = _explicit_residual_norm(mat, x, b)
            if true_norm <= tol:
                return done, 0, norms, true_norm
            if done >= system.maxiter:
                return done, 1, norms, true_norm
            # The fused and the explicit residual straddle tol (rounding): step
            # once here so the kernel does not stop at the same iterate again.
            sor_forward(mat.indptr, mat.indices, mat.data, dpos, x, b, omega)
            if symmetric:
                sor_backward(mat.indptr, mat.indices, mat.data, dpos, x, b, omega)
            done += 1
            known = False
            continue
        if status != 1 or done >= system.maxiter:
            return done, status, norms, _explicit_residual_norm(mat, x, b)


def _run_with_callback(system, omega, symmetric, dpos):
    from ..kernels.sor import sor_backward, sor_forward_residual

    mat, x, b, tol = system.matrix, system.x, system.b, system.tol
    indptr, indices, data = mat.indptr, mat.indices, mat.data
    xprev = np.empty_like(x)
    norms = []
    k = 0
    while True:
        rn = float(sor_forward_residual(indptr, indices, data, dpos, x, xprev, b, omega))
        norms.append(rn)
        stop = k >= system.maxiter or not np.isfinite(rn)
        if rn <= tol:
            true_norm = _explicit_residual_norm(mat, xprev, b)
            stop = stop or true_norm <= tol
        if stop:
            x[:] = xprev
            true_norm = _explicit_residual_norm(mat, x, b)
            status = 0 if true_norm <= tol else (-3 if not np.isfinite(rn) else 1)
            return k, status, norms, true_norm
        if symmetric:
            sor_backward(indptr, indices, data, dpos, x, b, omega)
        k += 1
        system.callback(x.copy())


def ssor_cg_result(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
                   omega=1.0) -> SolveResult:
    """CG preconditioned by SSOR (driver of ``solve(method="ssor-cg")``).

    Builds :func:`linsolve.precond.ssor` ``(A, omega)`` (counted in
    ``setup_time_s``) and runs :func:`linsolve.krylov.cg.cg_result` with it.
    ``residual_norms`` are CG's recurrence residuals; the true residual of the
    returned ``x`` is checked before convergence is claimed. ``extras["omega"]``
    records the omega used.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((32, 32))
    >>> res = linsolve.solve(A, np.ones(A.shape[0]), method="ssor-cg", omega=1.5, rtol=1e-8)
    >>> res.converged, res.method, res.extras["omega"]
    (True, 'ssor-cg', 1.5)
    """
    from ..precond.ssor import ssor
    from .cg import cg_result

    t0 = time.perf_counter()
    if M is not None:
        raise ValueError("method='ssor-cg' builds its own preconditioner; do not pass M")
    precond = ssor(A, omega)
    setup = time.perf_counter() - t0
    res = cg_result(precond.matrix, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=precond,
                    callback=callback)
    res.method = "ssor-cg"
    res.setup_time_s = setup
    res.time_s = time.perf_counter() - t0
    res.extras["omega"] = precond.omega
    return res
