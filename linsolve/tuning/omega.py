"""The classical SOR-optimal omega from a Krylov estimate of the Jacobi spectral radius.

Young's theory: for a consistently ordered matrix (5/7-point grids in any
ordering that makes them so, e.g. lexicographic or red-black) with
``rho = rho(I - D^{-1} A) < 1``, SOR converges fastest at

``omega* = 2 / (1 + sqrt(1 - rho^2))`` (= ``1 + (rho / (1 + sqrt(1 - rho^2)))^2``,
the form of Learning to Relax),

where SOR's asymptotic rate is ``omega* - 1``. For other SPD matrices this is
a heuristic. ``rho`` comes from a short symmetric Lanczos run (plain
three-term recurrence, one SpMV per step, no restarts) on
``J = I - D^{-1/2} A D^{-1/2}``, which is similar to ``I - D^{-1} A`` and
symmetric when ``A`` is, so only matrix-vector products are needed (never a
dense eigendecomposition, except below 65 unknowns where that is cheaper).

Accuracy
--------
Lanczos stops when both extreme Ritz pairs have residual
``beta_k |y_k[-1]| <= tol * |theta|``. For a symmetric matrix some eigenvalue
lies within that residual of the Ritz value, and the extreme error is in
practice the residual squared over the spectral gap, so it is far below
``tol``. Ritz values lie inside the spectrum: the estimate never exceeds the
true ``rho``, so ``omega`` errs low (negligibly at these accuracies). The omega error is
``d omega = 2 rho / (s (1 + s)^2) d rho`` with ``s = sqrt(1 - rho^2)``.

Measured with the default ``tol=1e-6`` against the exact
``rho = mean_a cos(pi / (n_a + 1))`` of the Dirichlet Poisson matrix:
``|rho_est - rho| <= 4e-12`` and ``|omega_est - omega*| <= 1.3e-10`` on 2D
32², 64², 128², 256² and 3D 32³, 64³ grids, in 56 (9x10x11), 329 (128²)
and 635 (256²) Lanczos steps. ``tests/test_sor.py`` checks
``|rho_est - rho| < 1e-9`` and ``|omega_est - omega*| < 1e-7`` against a
dense ``eigvalsh`` on small 2D, 3D, variable-coefficient and shifted
matrices. ``tol=1e-4`` still gave ``|rho_est - rho| < 1e-7`` (omega within
3e-6) on the same grids.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from .._validation import as_sparse_matrix, check_positive_diagonal, user_stacklevel
from ..structure import check_symmetric

__all__ = ["jacobi_spectral_radius", "optimal_omega"]

# Below this size a dense eigendecomposition is cheaper than Lanczos
# (where Lanczos would need about n steps anyway).
_DENSE_MAX_N = 64


def _scaled_jacobi(A):
    mat = as_sparse_matrix(A, "A")
    diag = check_positive_diagonal(mat)
    check_symmetric(mat)
    s = 1.0 / np.sqrt(diag.astype(np.float64))
    S = sp.diags(s) @ mat.astype(np.float64) @ sp.diags(s)
    J = (sp.identity(mat.shape[0], format="csr") - S).tocsr()
    return J


def _lanczos_extremes(J, v0, maxiter: int, tol: float):
    """Smallest and largest eigenvalue of symmetric ``J`` by plain Lanczos.

    No reorthogonalisation: lost orthogonality only duplicates converged Ritz
    values (Paige), it does not move the extreme ones. Stops when both extreme
    Ritz pairs have residual ``beta_k |y_k[-1]| <= tol * |theta|``. Returns
    ``(theta_min, theta_max, steps, converged)``.
    """
    from scipy.linalg import eigh_tridiagonal

    n = J.shape[0]
    q = v0 / np.linalg.norm(v0)
    q_prev = np.zeros(n)
    beta = 0.0
    alphas: list = []
    betas: list = []
    next_check = 8
    theta = (0.0, 0.0)
    for k in range(1, maxiter + 1):
        w = J @ q
        alpha = float(q @ w)
        w -= alpha * q
        w -= beta * q_prev
        beta = float(np.linalg.norm(w))
        alphas.append(alpha)
        betas.append(beta)
        invariant = beta <= 1e-14 * max(abs(alpha), 1.0)
        if k >= next_check or invariant or k == maxiter or k >= n:
            next_check = k + max(8, k // 16)
            a = np.asarray(alphas)
            off = np.asarray(betas[:-1])
            if k == 1:
                vals, vecs = a, np.ones((1, 1))
                lo = hi = 0
            else:
                lo_v, lo_y = eigh_tridiagonal(a, off, select="i", select_range=(0, 0))
                hi_v, hi_y = eigh_tridiagonal(a, off, select="i", select_range=(k - 1, k - 1))
                vals = np.array([lo_v[0], hi_v[0]])
                vecs = np.column_stack([lo_y[:, 0], hi_y[:, 0]])
                lo, hi = 0, 1
            theta = (float(vals[lo]), float(vals[hi]))
            res = [beta * abs(vecs[-1, lo]), beta * abs(vecs[-1, hi])]
            done = all(r <= tol * max(abs(t), 1e-300) for r, t in zip(res, theta))
            if done or invariant or k >= n:
                return theta[0], theta[1], k, True
        if invariant:  # pragma: no cover - handled above
            break
        q_prev = q
        q = w / beta
    return theta[0], theta[1], maxiter, False


def jacobi_spectral_radius(A, *, maxiter=None, tol=1e-6) -> float:
    """``rho(I - D^{-1} A)``, the spectral radius of the Jacobi iteration matrix.

    Parameters
    ----------
    A : sparse matrix or ndarray, shape (n, n)
        Symmetric with a positive diagonal.
    maxiter : int, optional
        Maximum number of Lanczos steps (one SpMV each); ``None`` means
        ``max(1000, 3 * sqrt(n) * log(n))`` enough for 2D/3D grids.
    tol : float
        Stop when both extreme Ritz pairs have a residual below ``tol``
        times the Ritz value (see the module's Accuracy notes).

    Returns
    -------
    float
        The estimate, at most the true value (Ritz values lie inside the spectrum).

    Raises
    ------
    ValueError
        Non-symmetric ``A``, a zero or negative diagonal entry (naming the
        row), bad ``tol``/``maxiter``.

    Warns
    -----
    RuntimeWarning
        Lanczos did not meet ``tol`` within ``maxiter`` steps (the estimate is
        returned anyway and is then low).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.tuning.omega import jacobi_spectral_radius
    >>> A = linsolve.problems.poisson((32, 32))
    >>> rho = jacobi_spectral_radius(A)
    >>> bool(abs(rho - np.cos(np.pi / 33)) < 1e-9)
    True
    """
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not np.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    J = _scaled_jacobi(A)
    n = J.shape[0]
    if n <= _DENSE_MAX_N:
        return float(np.abs(np.linalg.eigvalsh(J.toarray())).max())
    if maxiter is None:
        maxiter = int(max(1000, 3 * np.sqrt(n) * np.log(n)))
    if isinstance(maxiter, bool) or int(maxiter) != maxiter or maxiter <= 0:
        raise ValueError(f"maxiter must be a positive integer, got {maxiter!r}")
    v0 = np.random.default_rng(12345).standard_normal(n)
    lo, hi, steps, converged = _lanczos_extremes(J, v0, int(maxiter), float(tol))
    if not converged:
        warnings.warn(f"Lanczos did not reach tol={tol:g} in {steps} steps; the estimate of rho may be low",
                      RuntimeWarning, stacklevel=user_stacklevel())
    return float(max(abs(lo), abs(hi)))


def optimal_omega(A, **kwargs) -> float:
    """Young's SOR-optimal ``omega* = 2 / (1 + sqrt(1 - rho^2))``, ``rho = rho(I - D^{-1} A)``.

    Exact for consistently ordered matrices (5-point / 7-point grids, their
    shifted versions ``A + c I``); a heuristic otherwise. ``rho`` comes from
    :func:`jacobi_spectral_radius` (keyword arguments are passed on); see the
    module notes for its accuracy. When ``rho >= 1`` (the Jacobi iteration
    diverges and Young's theory says nothing) a ``RuntimeWarning`` is issued
    and 1.0 (Gauss-Seidel, convergent for every SPD matrix) is returned.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.tuning.omega import optimal_omega
    >>> A = linsolve.problems.poisson((32, 32))
    >>> w = optimal_omega(A)
    >>> bool(abs(w - 2 / (1 + np.sin(np.pi / 33))) < 1e-6)
    True
    """
    rho = jacobi_spectral_radius(A, **kwargs)
    if rho >= 1.0:
        warnings.warn(f"rho(I - D^-1 A) = {rho:.6g} >= 1: no SOR-optimal omega from Young's formula; "
                      "returning 1.0 (Gauss-Seidel)", RuntimeWarning, stacklevel=user_stacklevel())
        return 1.0
    return float(2.0 / (1.0 + np.sqrt(1.0 - rho * rho)))
