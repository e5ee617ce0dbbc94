"""``SolveResult``: what every solver returns from the rich entry point."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

import numpy as np

__all__ = ["SolveResult"]


@dataclass
class SolveResult:
    """Outcome of one solve.

    Attributes
    ----------
    x : ndarray
        The final iterate (on the device of the input for the torch backend).
    converged : bool
        True only if the *true* residual satisfies
        ``||b - A x|| <= max(rtol * ||b||, atol)``, checked on ``x`` itself.
    info : int
        0 converged; >0 iterations done without converging; <0 breakdown
        (-1: ``p^T A p <= 0``, A not positive definite; -2: preconditioner not
        positive definite; -3: NaN/Inf appeared during the iteration).
    iterations : int
        Number of iterations performed (equals the number of ``callback`` calls).
    residual_norms : list of float
        Residual 2-norms, initial one first. For CG these are the recurrence
        residuals (the true one is checked at the end and stored in
        ``true_residual_norm``); methods that compute ``b - A x`` each
        iteration (DCDM, SOR) record true residuals. ``residual_kind`` says which.
    method : str
        The method actually used, after any fallback (e.g. ``"dcdm->pcg"``).
    time_s : float
        Wall-clock seconds of the whole call, setup included.
    setup_time_s : float
        Part of ``time_s`` spent building a preconditioner (AMG hierarchy, ...).
    true_residual_norm : float
        ``||b - A x||`` of the returned ``x``.
    b_norm : float
        ``||b||`` (the reference of the relative residual).
    residual_kind : str
        ``"recurrence"`` or ``"true"``: what ``residual_norms`` holds.
    message : str
        Human-readable reason for stopping.
    extras : dict
        Method-specific details (chosen omega, model name, fallback reason...).
    """

    x: Any
    converged: bool
    info: int
    iterations: int
    residual_norms: List[float] = field(default_factory=list)
    method: str = ""
    time_s: float = 0.0
    setup_time_s: float = 0.0
    true_residual_norm: float = float("nan")
    b_norm: float = float("nan")
    residual_kind: str = "true"
    message: str = ""
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def relative_residual(self) -> float:
        """``||b - A x|| / ||b||`` (``||b - A x||`` itself when b = 0)."""
        if self.b_norm and np.isfinite(self.b_norm) and self.b_norm > 0:
            return self.true_residual_norm / self.b_norm
        return self.true_residual_norm

    def __repr__(self) -> str:  # the iterate itself is too long to print
        return (f"SolveResult(method={self.method!r}, converged={self.converged}, info={self.info}, "
                f"iterations={self.iterations}, relative_residual={self.relative_residual:.3e}, "
                f"time_s={self.time_s:.4f})")

    def continuing(self, earlier: "SolveResult") -> "SolveResult":
        """This result, of a solve started from ``earlier.x``, counted from ``earlier``'s start (iterations,
        ``info``, residual history, times); returns ``self``.

        Examples
        --------
        >>> import numpy as np, linsolve
        >>> A = linsolve.problems.poisson((16, 16)); b = np.ones(256)
        >>> first = linsolve.solve(A, b, method="cg", maxiter=5)
        >>> rest = linsolve.solve(A, b, method="cg", x0=first.x)
        >>> later = rest.iterations
        >>> first.converged, rest.continuing(first).converged, rest.iterations == 5 + later
        (False, True, True)
        """
        self.iterations += earlier.iterations
        if self.info > 0:
            self.info = self.iterations
        self.residual_norms = list(earlier.residual_norms) + list(self.residual_norms[1:])
        self.setup_time_s += earlier.setup_time_s
        self.time_s += earlier.time_s
        return self
