"""``SpectralOmega``: the classical, learning-free ω* baseline (Young's formula per instance)."""
from __future__ import annotations

import numbers

import numpy as np

from .._validation import user_stacklevel
from .base import (Tuner, TunerOrderError, check_arms, check_cost, check_offset, check_seed, parse_float,
                   parse_int)

__all__ = ["SpectralOmega", "omega_from_beta"]


def omega_from_beta(beta: float, omega_max: float = 1.99) -> float:
    """Young's optimal SOR ω for Jacobi spectral radius ``beta``.

    ``ω* = 1 + (β / (1 + sqrt(1 - β²)))²`` (exact for consistently ordered
    matrices such as 5-point Laplacians), clipped to ``[1, omega_max]``.

    Examples
    --------
    >>> from linsolve.tuning.spectral import omega_from_beta
    >>> round(omega_from_beta(0.0), 6), round(omega_from_beta(0.9), 4)
    (1.0, 1.3929)
    """
    b = min(abs(float(beta)), 1.0)
    omega = 1.0 + (b / (1.0 + np.sqrt(max(1.0 - b * b, 0.0)))) ** 2
    return float(min(max(omega, 1.0), omega_max))


class SpectralOmega(Tuner):
    """ω* from a Krylov (Lanczos/Arnoldi) estimate of ρ(I - D⁻¹A), per instance.

    Not a learner: it needs the matrix, so call ``suggest(context, A=A)``
    (:class:`linsolve.SequenceSolver` passes ``A``). The estimate comes from
    :func:`linsolve.tuning.jacobi_spectral_radius`; the value is reused while
    the context stays within ``context_tol`` of the context it was computed
    for, which saves the eigenvalue estimate on slowly varying sequences.
    ``observe`` only records costs (for :attr:`stats`).

    Parameters
    ----------
    arms : sequence of numbers, optional
        If given, ω* is snapped to the nearest arm (so ``suggest`` returns one
        of them, like the bandits); ``None`` returns ω* itself.
    context_tol : float
        Reuse the last ω* while ``|context - last context| <= context_tol``
        (0: recompute for every instance; ``context=None`` always recomputes).
    omega_max : float
        Upper clip of ω* (ω must stay below 2).
    seed : int
        Accepted for a uniform interface; nothing here is random.
    offset : float
        Accepted for a uniform interface.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.tuning import SpectralOmega
    >>> A = linsolve.problems.poisson((10, 10))
    >>> tuner = SpectralOmega()
    >>> omega = tuner.suggest(A=A)
    >>> beta = np.cos(np.pi / 11)                 # exact rho(Jacobi) of this Laplacian
    >>> bool(abs(omega - (1 + (beta / (1 + np.sqrt(1 - beta**2)))**2)) < 1e-3)
    True
    >>> tuner.observe(40)
    """

    kind = "SpectralOmega"
    contextual = False

    def __init__(self, arms=None, *, context_tol: float = 0.0, omega_max: float = 1.99, seed: int = 0,
                 offset: float = 1.0):
        self.arms = None if arms is None else check_arms(arms)
        self.seed = check_seed(seed)
        self.offset = check_offset(offset)
        if (isinstance(context_tol, bool) or not isinstance(context_tol, numbers.Real)
                or not np.isfinite(context_tol) or context_tol < 0):
            raise ValueError(f"context_tol must be a finite number >= 0, got {context_tol!r}")
        self.context_tol = float(context_tol)
        if (isinstance(omega_max, bool) or not isinstance(omega_max, numbers.Real)
                or not 1.0 <= float(omega_max) < 2.0):
            raise ValueError(f"omega_max must lie in [1, 2), got {omega_max!r}")
        self.omega_max = float(omega_max)
        self._rng = np.random.default_rng(self.seed)
        self._pending = None
        self.t = 0
        self._last_context = None
        self._last_omega = None
        self.n_estimates = 0       # eigenvalue estimates computed
        self._cost_sum = 0.0

    @property
    def stats(self) -> dict:
        """Rounds, eigenvalue estimates computed and mean observed cost."""
        return {"rounds": self.t, "estimates": self.n_estimates,
                "mean_cost": self._cost_sum / self.t if self.t else float("nan")}

    def suggest(self, context=None, A=None):
        """ω* for matrix ``A`` (reused while ``context`` is within ``context_tol``).

        Parameters
        ----------
        context : float, optional
            Scalar feature of the instance; enables reuse of the last estimate.
        A : sparse matrix
            The system matrix. Without it and without a context, the last ω*
            is returned, or ω = 1 (Gauss-Seidel, with a warning) before the
            first estimate, so the generic ``tuner.suggest(context=None)``
            works for every tuner; with a context far from the last one it is
            required.
        """
        ctx = None
        if context is not None:
            if isinstance(context, bool) or not isinstance(context, numbers.Real) or not np.isfinite(context):
                raise ValueError(f"context must be a finite real number or None, got {context!r}")
            ctx = float(context)
        reuse = (ctx is not None and self._last_context is not None and self._last_omega is not None
                 and abs(ctx - self._last_context) <= self.context_tol)
        if reuse:
            omega = self._last_omega
        elif A is None and ctx is None:
            # the generic tuner call (suggest(context=None)) has no matrix to estimate from: the last
            # estimate, or Gauss-Seidel's omega = 1 (convergent for every SPD matrix) before the first
            import warnings

            omega = self._last_omega if self._last_omega is not None else 1.0
            if self._last_omega is None:
                warnings.warn("SpectralOmega.suggest without A: omega = 1 (Gauss-Seidel) until it is given the "
                              "matrix (suggest(context, A=A); SequenceSolver passes it)", UserWarning,
                              stacklevel=user_stacklevel())
        else:
            if A is None:
                raise ValueError("SpectralOmega needs the matrix for a context it has no estimate near: call "
                                 "suggest(context, A=A) (SequenceSolver passes A for you)")
            from .omega import jacobi_spectral_radius

            omega = omega_from_beta(jacobi_spectral_radius(A), self.omega_max)
            self.n_estimates += 1
            self._last_context, self._last_omega = ctx, omega
        self._pending = {"context": ctx, "omega": omega}
        if self.arms is not None:
            index = int(np.argmin(np.abs(self.arms.astype(float) - omega)))
            self._pending["index"] = index
            return self.arms[index].item()
        return omega

    def observe(self, cost) -> None:
        """Record the cost of the solve run with the last suggested ω."""
        if self._pending is None:
            raise TunerOrderError("SpectralOmega.observe() called without a pending suggest(); "
                               "call suggest() before each solve and observe(cost) once after it")
        self._cost_sum += check_cost(cost)
        self._pending = None
        self.t += 1

    def _config(self):
        return {"arms": None if self.arms is None else self.arms.tolist(), "seed": self.seed,
                "offset": self.offset, "context_tol": self.context_tol, "omega_max": self.omega_max}

    def _state(self):
        return {"last_context": self._last_context, "last_omega": self._last_omega,
                "n_estimates": self.n_estimates, "cost_sum": self._cost_sum}

    def _parse_state(self, state):
        last_c, last_o = state["last_context"], state["last_omega"]
        out = {"_last_context": None if last_c is None else parse_float(last_c, "last_context"),
               "_last_omega": None if last_o is None else parse_float(last_o, "last_omega"),
               "n_estimates": parse_int(state["n_estimates"], "n_estimates"),
               "_cost_sum": parse_float(state["cost_sum"], "cost_sum", nonneg=True)}
        if out["_last_omega"] is not None and not 0 < out["_last_omega"] < 2:
            raise ValueError(f"last_omega {out['_last_omega']} not in (0, 2)")
        return out

    def _validate_state(self, state):
        parsed = super()._validate_state(state)
        pending = parsed["_pending"]
        if pending is not None:
            omega = pending.get("omega")
            if isinstance(omega, bool) or not isinstance(omega, (int, float)) or not 0 < omega < 2:
                raise ValueError(f"invalid {self.kind} state: bad pending suggestion {pending!r}")
        return parsed
