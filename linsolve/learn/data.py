"""Ritz-vector training data for DCDM-style networks (Kaneda et al., ICML 2023).

Lanczos from ``A·N(0,1)`` with full reorthogonalisation gives an orthonormal
Krylov basis ``V`` and a tridiagonal ``T``; the eigenvectors of ``T`` give Ritz
vectors ``V s`` that approximate both ends of the spectrum. A training sample
is ``Σ cᵢ vᵢ`` with ``cᵢ ~ N(0,1)`` and the coefficients of the lowest half
(+θ) of the Ritz values multiplied by 9, so the data are rich in the smooth,
slowly converging modes a Krylov method struggles with; samples are normalised
to unit 2-norm and stored as float32.

Only NumPy/SciPy here: generating data does not need torch.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .._validation import as_operator

__all__ = ["lanczos", "ritz_vectors", "ritz_dataset", "RitzData", "dataset_peak_bytes"]


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def lanczos(A, m: int, *, v0=None, seed=0, reorthogonalize: bool = True, breakdown_tol: float = 1e-10):
    """``m`` steps of symmetric Lanczos with full (twice-is-enough) reorthogonalisation.

    Parameters
    ----------
    A : sparse matrix or LinearOperator, shape (n, n), symmetric
    m : int
        Number of steps (at most ``n``); fewer are returned after an invariant
        subspace is found.
    v0 : ndarray, optional
        Start vector; default ``A @ z`` with ``z ~ N(0, 1)`` (as the DCDM authors),
        which removes components in A's null space.
    seed : int or numpy Generator
        Seed of ``z``.
    reorthogonalize : bool
        Full classical Gram-Schmidt against every kept vector, applied twice.
        Without it the Ritz vectors of converged eigenvalues repeat (ghosts).

    Returns
    -------
    V : ndarray, shape (k, n), float64
        Orthonormal Lanczos vectors (rows), ``k <= m``.
    alpha : ndarray, shape (k,)
    beta : ndarray, shape (k - 1,)
        Diagonal and off-diagonal of ``T = V A Vᵀ``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.learn import lanczos
    >>> A = linsolve.problems.poisson((8, 8))
    >>> V, a, b = lanczos(A, 20, seed=1)
    >>> bool(np.allclose(V @ V.T, np.eye(len(a)), atol=1e-10))
    True
    """
    op, _ = as_operator(A, "A")
    n = op.shape[0]
    m = min(_check_positive_int(m, "m"), n)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if v0 is None:
        v = op.matvec(rng.standard_normal(n))
    else:
        v = np.asarray(v0, dtype=np.float64).ravel()
        if v.shape != (n,):
            raise ValueError(f"v0 must have length {n}, got shape {np.shape(v0)}")
    v = np.asarray(v, dtype=np.float64)
    norm = np.linalg.norm(v)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("Lanczos start vector is zero or not finite")
    V = np.empty((m, n), dtype=np.float64)
    alpha = np.empty(m)
    beta = np.empty(max(m - 1, 0))
    V[0] = v / norm
    k = m
    for j in range(m):
        w = np.asarray(op.matvec(V[j]), dtype=np.float64)
        alpha[j] = V[j] @ w
        w -= alpha[j] * V[j]
        if j > 0:
            w -= beta[j - 1] * V[j - 1]
        if reorthogonalize:
            for _ in range(2):
                w -= V[:j + 1].T @ (V[:j + 1] @ w)
        if j == m - 1:
            break
        b = np.linalg.norm(w)
        if b <= breakdown_tol * max(abs(alpha[j]), 1.0):
            k = j + 1
            break
        beta[j] = b
        V[j + 1] = w / b
    return V[:k], alpha[:k], beta[:k - 1]


def ritz_vectors(A, m: int, *, seed=0, null_tol: float = 1e-8):
    """Ritz values (ascending) and Ritz vectors (rows, float32) from ``m`` Lanczos steps.

    Ritz values below ``null_tol`` (A's null space, e.g. pure Neumann or
    all-air components) are dropped.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.learn.data import ritz_vectors
    >>> theta, Y = ritz_vectors(linsolve.problems.poisson((8, 8)), 30)
    >>> Y.shape[1], bool((theta[1:] >= theta[:-1]).all())
    (64, True)
    """
    V, alpha, beta = lanczos(A, m, seed=seed)
    if len(alpha) == 1:
        theta, S = alpha.copy(), np.ones((1, 1))
    else:
        theta, S = scipy.linalg.eigh_tridiagonal(alpha, beta)
    keep = theta >= null_tol
    theta, S = theta[keep], S[:, keep]
    # (S^T V) row by row in blocks so float64 temporaries stay one block big.
    Y = np.empty((S.shape[1], V.shape[1]), dtype=np.float32)
    block = 256
    for start in range(0, S.shape[1], block):
        Y[start:start + block] = (S[:, start:start + block].T @ V).astype(np.float32)
    return theta, Y


@dataclass
class RitzData:
    """Samples (float32, unit norm, one per row) and what produced them."""

    samples: np.ndarray
    ritz_values: np.ndarray
    recipe: dict


def dataset_peak_bytes(n: int, n_lanczos: int, n_samples: int) -> int:
    """Peak memory of :func:`ritz_dataset`: Lanczos basis (float64) + Ritz vectors + samples (float32)."""
    m = min(n_lanczos, n)
    return int(8 * m * n + 4 * m * n + 4 * n_samples * n + 8 * 256 * n)


def ritz_dataset(A, n_lanczos: int, n_samples: int, *, seed=0, theta=None, low_factor: float = 9.0,
                 null_tol: float = 1e-8, chunk: int = 256) -> RitzData:
    """Training right-hand sides from Ritz vectors of ``A`` (the DCDM data recipe).

    Parameters
    ----------
    A : sparse matrix, shape (n, n), symmetric positive (semi)definite
    n_lanczos : int
        Lanczos steps ``m`` (the paper uses 10,000 at 64³; far fewer fit a laptop).
    n_samples : int
        Number of samples.
    seed : int
        Seeds both the Lanczos start vector and the coefficients.
    theta : int, optional
        Extra low modes boosted beyond half of the kept Ritz vectors; default
        ``m // 20`` (the paper: 500 for m = 10,000).
    low_factor : float
        Multiplier of the low-mode coefficients (9 in the paper).
    chunk : int
        Samples formed per matrix product (bounds temporaries).

    Returns
    -------
    RitzData
        ``samples`` has shape ``(n_samples, n)``, float32, unit 2-norm rows;
        ``recipe`` records every parameter and the peak memory estimate.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.learn import ritz_dataset
    >>> data = ritz_dataset(linsolve.problems.poisson((8, 8)), 30, 5, seed=0)
    >>> data.samples.shape, bool(np.allclose(np.linalg.norm(data.samples, axis=1), 1, atol=1e-5))
    ((5, 64), True)
    """
    n_lanczos = _check_positive_int(n_lanczos, "n_lanczos")
    n_samples = _check_positive_int(n_samples, "n_samples")
    chunk = _check_positive_int(chunk, "chunk")
    if not np.isfinite(low_factor) or low_factor <= 0:
        raise ValueError(f"low_factor must be positive, got {low_factor!r}")
    ritz_values, Y = ritz_vectors(A, n_lanczos, seed=np.random.default_rng([seed, 0]), null_tol=null_tol)
    k = len(ritz_values)
    if k == 0:
        raise ValueError("A has no Ritz values above null_tol: it looks like the zero matrix")
    if theta is None:
        theta = n_lanczos // 20
    n_low = min(k, k // 2 + int(theta))
    scale = np.ones(k, dtype=np.float32)
    scale[:n_low] = low_factor
    rng = np.random.default_rng([seed, 1])
    n = Y.shape[1]
    samples = np.empty((n_samples, n), dtype=np.float32)
    for start in range(0, n_samples, chunk):
        stop = min(start + chunk, n_samples)
        coeff = rng.standard_normal((stop - start, k)).astype(np.float32) * scale
        block = coeff @ Y
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        samples[start:stop] = block
    recipe = {"n_lanczos": n_lanczos, "ritz_kept": k, "n_samples": n_samples, "seed": seed,
              "theta": int(theta), "low_boosted": n_low, "low_factor": float(low_factor),
              "null_tol": null_tol, "start": "A @ N(0,1)", "reorthogonalization": "full, twice",
              "peak_bytes_estimate": dataset_peak_bytes(n, n_lanczos, n_samples)}
    return RitzData(samples=samples, ritz_values=ritz_values, recipe=recipe)
