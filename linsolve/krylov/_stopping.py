"""The single stopping rule: ``||b - A x||_2 <= max(rtol * ||b||_2, atol)`` on the true residual."""
from __future__ import annotations

import numpy as np

# Codes shared by every method (documented on SolveResult.info).
BREAKDOWN_INDEFINITE = -1
BREAKDOWN_PRECONDITIONER = -2
BREAKDOWN_NONFINITE = -3


def true_residual(A, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``b - A x`` computed explicitly (never from a recurrence)."""
    return b - A.matvec(x)


def true_residual_norm(A, b, x) -> float:
    return float(np.linalg.norm(true_residual(A, b, x)))


def accuracy_floor(dtype, bnorm: float, anorm_estimate: float | None = None) -> float:
    """A residual below roughly ``sqrt(n)·eps·||b||`` cannot be certified in ``dtype``.

    Used only to word messages: convergence is never claimed below the threshold
    the user asked for.
    """
    return float(np.finfo(dtype).eps) * bnorm
