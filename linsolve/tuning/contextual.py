"""Contextual tuners: the best parameter as a function of a scalar context (a diagonal shift,
a diffusion coefficient, a time-step size...).

* :class:`BinnedTsallisINF` cuts the context range into equal bins and runs an
  independent Tsallis-INF in each.
* :class:`ChebCB` regresses each arm's cost on Chebyshev features of the
  context and explores by inverse-gap weighting (SquareCB), as in "Learning to
  Relax" (Khodak et al., ICLR 2024).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import lsq_linear

from .base import (Tuner, check_context, check_context_range, default_omega_arms, parse_array,
                   parse_float, sample_index)
from .tsallis import tsallis_weights

__all__ = ["BinnedTsallisINF", "ChebCB"]


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _parse_counts(value, shape, name: str) -> np.ndarray:
    arr = parse_array(value, shape, name, nonneg=True)
    if not np.all(arr == np.round(arr)):
        raise ValueError(f"{name} must hold integers")
    return arr.astype(np.int64)


class BinnedTsallisINF(Tuner):
    """One Tsallis-INF per context bin (``bins`` equal bins over ``context_range``).

    Parameters
    ----------
    arms : sequence of numbers
        Candidate values; ``None`` means :func:`~linsolve.tuning.default_omega_arms`.
    context_range : (float, float)
        Every context passed to :meth:`suggest` must lie in it (else ``ValueError``).
    bins : int
        Number of equal-width bins.
    seed : int
        Seed of the tuner's random generator.
    offset : float
        Smallest possible cost (1 for iteration counts, 0 for seconds).

    Examples
    --------
    >>> from linsolve.tuning import BinnedTsallisINF
    >>> tuner = BinnedTsallisINF([1.0, 1.5, 1.9], context_range=(0.0, 1.0), bins=2, seed=0)
    >>> for t in range(400):
    ...     c = (t % 10) / 9
    ...     omega = tuner.suggest(c)
    ...     best = 1.0 if c < 0.5 else 1.9       # the best arm depends on the context
    ...     tuner.observe(10 + 50 * abs(omega - best))
    >>> [float(tuner.arms[tuner.probabilities(c).argmax()]) for c in (0.1, 0.9)]
    [1.0, 1.9]
    """

    kind = "BinnedTsallisINF"
    contextual = True

    def __init__(self, arms=None, context_range=None, bins: int = 5, *, seed: int = 0, offset: float = 1.0):
        super().__init__(default_omega_arms() if arms is None else arms, seed=seed, offset=offset)
        if context_range is None:
            raise ValueError("BinnedTsallisINF needs context_range=(lo, hi) covering every context")
        self.context_range = check_context_range(context_range)
        self.bins = _check_positive_int(bins, "bins")
        d = len(self.arms)
        self._k = np.zeros((self.bins, d))
        self._loss_sum = np.zeros(self.bins)
        self._count = np.zeros(self.bins, dtype=np.int64)

    def _check_context(self, context):
        return check_context(context, self.context_range, type(self).__name__)

    def bin_of(self, context) -> int:
        """Index of the bin holding ``context`` (the nearest bin centre)."""
        c = check_context(context, self.context_range, type(self).__name__)
        lo, hi = self.context_range
        return int(min(int((c - lo) / (hi - lo) * self.bins), self.bins - 1))

    def probabilities(self, context) -> np.ndarray:
        """Sampling distribution of the bin holding ``context``."""
        j = self.bin_of(context)
        mean = self._loss_sum[j] / self._count[j] if self._count[j] else 0.0
        scale = mean if mean > 0 else 1.0
        return tsallis_weights(self._k[j] / scale, 2.0 / np.sqrt(self._count[j] + 1))

    def _choose(self, context):
        probs = self.probabilities(context)
        i = sample_index(self._rng, probs)
        return i, {"prob": float(probs[i]), "bin": self.bin_of(context)}

    def _update(self, index, loss, pending):
        j = pending["bin"]
        self._loss_sum[j] += loss
        self._count[j] += 1
        self._k[j, index] += loss / pending["prob"]

    def _config(self):
        return {**super()._config(), "context_range": list(self.context_range), "bins": self.bins}

    def _state(self):
        return {"k": self._k.tolist(), "loss_sum": self._loss_sum.tolist(), "count": self._count.tolist()}

    def _parse_state(self, state):
        d = len(self.arms)
        return {"_k": parse_array(state["k"], (self.bins, d), "k", nonneg=True),
                "_loss_sum": parse_array(state["loss_sum"], (self.bins,), "loss_sum", nonneg=True),
                "_count": _parse_counts(state["count"], (self.bins,), "count")}

    def _validate_state(self, state):
        parsed = super()._validate_state(state)
        pending = parsed["_pending"]
        if pending is not None:
            prob, j = pending.get("prob"), pending.get("bin")
            if (isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 < prob <= 1
                    or isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < self.bins):
                raise ValueError(f"invalid {self.kind} state: bad pending suggestion {pending!r}")
        if parsed["t"] != int(parsed["_count"].sum()):
            raise ValueError(f"invalid {self.kind} state: t = {parsed['t']} but bin counts sum to "
                             f"{int(parsed['_count'].sum())}")
        return parsed


class ChebCB(Tuner):
    """SquareCB contextual bandit over Chebyshev regressions of each arm's cost.

    Each arm ``i`` keeps a least-squares fit ``cost_i(c) ≈ 1 + scale * θ_i · T(c)``
    of its observed (scaled) losses on the Chebyshev features
    ``T_0(u) .. T_degree(u)`` of the context mapped to ``u ∈ [-1, 1]``. The
    fits are box constrained as in the paper (``|θ_0| <= 1/N``,
    ``|θ_j| <= 2 (b - a) L / (K N j)`` with ``K`` the largest loss, ``L`` the
    loss range over the context width and ``N = 2 + 4 (b - a) L / K (1 + log m)``),
    solved by :func:`scipy.optimize.lsq_linear`. Arms are then drawn by
    inverse-gap weighting: ``p_i = 1 / (d + η (ŷ_i - ŷ_min))`` for every arm
    but the predicted best, which gets the rest; ``η`` grows roughly linearly
    in ``t`` (the paper's schedule).

    The fits use per-arm sufficient statistics (``XᵀX``, ``Xᵀy``), so memory
    and the saved state do not grow with the number of rounds.

    Parameters
    ----------
    arms : sequence of numbers
        Candidate values; ``None`` means :func:`~linsolve.tuning.default_omega_arms`.
    context_range : (float, float)
        Every context must lie in it (else ``ValueError``).
    degree : int
        Highest Chebyshev degree (5: features ``T_0..T_5``, the paper's setting).
    seed : int
        Seed of the tuner's random generator.
    offset : float
        Smallest possible cost (1 for iteration counts, 0 for seconds).

    Examples
    --------
    >>> from linsolve.tuning import ChebCB
    >>> tuner = ChebCB([1.0, 1.3, 1.6, 1.9], context_range=(0.0, 1.0), seed=0)
    >>> for t in range(500):
    ...     c = (t % 11) / 10
    ...     omega = tuner.suggest(c)
    ...     tuner.observe(10 + 100 * (omega - (1.0 + 0.9 * c)) ** 2)   # best ω grows with c
    >>> [float(tuner.arms[tuner.predict(c).argmin()]) for c in (0.0, 1.0)]
    [1.0, 1.9]
    """

    kind = "ChebCB"
    contextual = True

    def __init__(self, arms=None, context_range=None, degree: int = 5, *, seed: int = 0, offset: float = 1.0):
        super().__init__(default_omega_arms() if arms is None else arms, seed=seed, offset=offset)
        if context_range is None:
            raise ValueError("ChebCB needs context_range=(lo, hi) covering every context")
        self.context_range = check_context_range(context_range)
        self.degree = _check_positive_int(degree, "degree", minimum=0)
        d, m = len(self.arms), self.degree + 1
        self._gram = np.zeros((d, m, m))     # per arm: sum of phi phi^T
        self._moment = np.zeros((d, m))      # per arm: sum of loss * phi
        self._count = np.zeros(d, dtype=np.int64)
        self._theta = np.zeros((d, m))
        self._lmin = 0.0
        self._lmax = 0.0
        self._scale = 0.0
        self._eta = 0.0
        # Running sums for the online squared error of the predictions.
        self._pp = 0.0
        self._pl = 0.0
        self._ll = 0.0
        self._eig_cache: dict = {}  # arm -> eigen-factors of its Gram matrix (derived, not saved)

    def _check_context(self, context):
        return check_context(context, self.context_range, type(self).__name__)

    def features(self, context) -> np.ndarray:
        """Chebyshev features ``T_0..T_degree`` of ``context`` mapped to [-1, 1].

        Examples
        --------
        >>> from linsolve.tuning import ChebCB
        >>> ChebCB([1.0, 1.5], context_range=(0.0, 2.0), degree=3).features(2.0).tolist()
        [1.0, 1.0, 1.0, 1.0]
        """
        lo, hi = self.context_range
        u = 2.0 * (float(context) - lo) / (hi - lo) - 1.0
        # Three-term recurrence T_{j+1} = 2u T_j - T_{j-1}: chebvander's overhead dominates at m = 6.
        out = np.empty(self.degree + 1)
        out[0] = 1.0
        if self.degree >= 1:
            out[1] = u
        for j in range(1, self.degree):
            out[j + 1] = 2.0 * u * out[j] - out[j - 1]
        return out

    def predict(self, context) -> np.ndarray:
        """Predicted scaled loss of every arm at ``context`` (lower is better)."""
        return self._theta @ self.features(self._check_context(context))

    def _probabilities(self, yhat: np.ndarray) -> np.ndarray:
        d = len(yhat)
        best = int(np.argmin(yhat))
        probs = 1.0 / (d + self._eta * (yhat - yhat[best]))
        probs[best] = 0.0
        probs[best] = max(1.0 - probs.sum(), 0.0)
        return probs

    def probabilities(self, context) -> np.ndarray:
        """Sampling distribution over the arms at ``context``."""
        return self._probabilities(self.predict(context))

    def _choose(self, context):
        yhat = self._theta @ self.features(context)
        i = sample_index(self._rng, self._probabilities(yhat))
        return i, {"predicted": float(yhat[i])}

    def _fit(self, i: int, ub: np.ndarray) -> np.ndarray:
        """Box-constrained least squares for arm ``i`` from its sufficient statistics.

        With ``XᵀX = V Λ Vᵀ``, ``||X θ - y||² = ||Λ^½ Vᵀ θ - Λ^-½ Vᵀ Xᵀy||² + const``,
        so a small ``(rank × m)`` problem replaces the ``(count × m)`` one.
        """
        if i not in self._eig_cache:
            lam, vec = np.linalg.eigh(self._gram[i])
            keep = lam > max(lam.max(), 0.0) * 1e-12
            self._eig_cache[i] = (lam[keep], vec[:, keep])
        lam, vec = self._eig_cache[i]
        if lam.size == 0:
            return np.zeros_like(ub)
        proj = vec.T @ (self._moment[i] / self._scale)
        theta = vec @ (proj / lam)            # minimum-norm unconstrained solution
        if np.all(np.abs(theta) <= ub * (1 + 1e-12)):
            return theta
        rmat = np.sqrt(lam)[:, None] * vec.T
        rhs = proj / np.sqrt(lam)
        free = ub > 0
        out = np.zeros_like(ub)
        sol = lsq_linear(rmat[:, free], rhs, bounds=(-ub[free], ub[free]), method="bvls")
        out[free] = sol.x
        return out

    def _update(self, index, loss, pending):
        phi = self.features(pending["context"])
        first = self.t == 0
        self._eig_cache.pop(index, None)
        self._gram[index] += np.outer(phi, phi)
        self._moment[index] += loss * phi
        self._count[index] += 1
        self._lmin = loss if first else min(self._lmin, loss)
        self._lmax = loss if first else max(self._lmax, loss)
        m = self.degree + 1
        K, spread = self._lmax, self._lmax - self._lmin
        if K > 0:
            N = 2.0 + 4.0 * spread / K * (1.0 + np.log(m))
            scale = K * N
        else:  # every loss so far is 0: nothing to learn yet, avoid 0/0
            N, scale = 2.0, 1.0
        refit_all = scale != self._scale
        self._scale = scale
        ub = np.concatenate([[1.0 / N], 2.0 * spread / scale / np.arange(1, m)])
        for i in (range(len(self.arms)) if refit_all else [index]):
            if self._count[i]:
                self._theta[i] = self._fit(i, ub)
        # eta: 2 t sqrt(d t / (online squared error + 2 alpha^2 t)), the paper's schedule.
        p = pending["predicted"]
        self._pp += p * p
        self._pl += p * loss
        self._ll += loss * loss
        t = self.t + 1
        err = max(self._pp - 2.0 * self._pl / scale + self._ll / scale ** 2, 0.0)
        alpha = (np.pi + 2.0 / np.pi * np.log(2.0 * m + 1.0)) / (2.0 * scale * (m + 1.0)) * spread
        denom = err + 2.0 * alpha ** 2 * t
        d = len(self.arms)
        # A zero denominator means perfect predictions so far: exploit (finite, for JSON).
        self._eta = float(min(2.0 * t * np.sqrt(d * t / denom), 1e300)) if denom > 0 else 1e300

    def _config(self):
        return {**super()._config(), "context_range": list(self.context_range), "degree": self.degree}

    def _state(self):
        return {"gram": self._gram.tolist(), "moment": self._moment.tolist(), "count": self._count.tolist(),
                "theta": self._theta.tolist(), "lmin": self._lmin, "lmax": self._lmax,
                "scale": self._scale, "eta": self._eta, "pp": self._pp, "pl": self._pl, "ll": self._ll}

    def _parse_state(self, state):
        d, m = len(self.arms), self.degree + 1
        out = {"_gram": parse_array(state["gram"], (d, m, m), "gram"),
               "_moment": parse_array(state["moment"], (d, m), "moment"),
               "_count": _parse_counts(state["count"], (d,), "count"),
               "_theta": parse_array(state["theta"], (d, m), "theta"),
               "_lmin": parse_float(state["lmin"], "lmin", nonneg=True),
               "_lmax": parse_float(state["lmax"], "lmax", nonneg=True),
               "_scale": parse_float(state["scale"], "scale", nonneg=True),
               "_eta": parse_float(state["eta"], "eta", nonneg=True),
               "_pp": parse_float(state["pp"], "pp", nonneg=True),
               "_pl": parse_float(state["pl"], "pl"),
               "_ll": parse_float(state["ll"], "ll", nonneg=True)}
        out["_eig_cache"] = {}
        if out["_lmin"] > out["_lmax"]:
            raise ValueError("lmin > lmax")
        if not np.allclose(out["_gram"], np.transpose(out["_gram"], (0, 2, 1))):
            raise ValueError("gram matrices are not symmetric")
        return out

    def _validate_state(self, state):
        parsed = super()._validate_state(state)
        pending = parsed["_pending"]
        if pending is not None:
            p, c = pending.get("predicted"), pending.get("context")
            if (isinstance(p, bool) or not isinstance(p, (int, float)) or not np.isfinite(p)
                    or isinstance(c, bool) or not isinstance(c, (int, float))):
                raise ValueError(f"invalid {self.kind} state: bad pending suggestion {pending!r}")
            check_context(c, self.context_range, self.kind)
        if parsed["t"] != int(parsed["_count"].sum()):
            raise ValueError(f"invalid {self.kind} state: t = {parsed['t']} but counts sum to "
                             f"{int(parsed['_count'].sum())}")
        return parsed
