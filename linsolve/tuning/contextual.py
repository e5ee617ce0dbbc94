"""Contextual tuners: the best parameter as a function of a scalar context (a diagonal shift,
a diffusion coefficient, a time-step size...).

* :class:`BinnedTsallisINF` cuts the context range into equal bins and runs an
  independent Tsallis-INF in each.
* :class:`ChebCB` regresses the cost on Chebyshev features of the context
  and explores by inverse-gap weighting (SquareCB, Foster & Rakhlin 2020).
  Default ``model="shared"``: one regression of the *log* cost over
  (context, arm value), shared by all arms.
  ``model="paper"``: per-arm box-constrained regressions of the cost, as in
  "Learning to Relax" (Khodak et al., ICLR 2024).
"""
from __future__ import annotations

import numpy as np
from numpy.polynomial import chebyshev
from scipy.optimize import lsq_linear

from .base import (Tuner, check_context, check_context_range, default_omega_arms, parse_array,
                   parse_float, sample_index)
from .tsallis import baseline_loss, check_estimator, tsallis_eta, tsallis_increment, tsallis_weights

__all__ = ["BinnedTsallisINF", "ChebCB"]

CHEB_MODELS = ("shared", "paper")


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

    Each bin runs :class:`~linsolve.tuning.TsallisINF` on its own rounds, with
    the same ``estimator`` choice (reduced-variance ``"rv"`` by default, the
    paper's importance-weighted ``"iw"`` as an option) and its own running
    mean loss as scale and baseline.

    Parameters
    ----------
    arms : sequence of numbers
        Candidate values; ``None`` means :func:`~linsolve.tuning.default_omega_arms`.
    context_range : (float, float)
        Every context passed to :meth:`suggest` must lie in it (else ``ValueError``).
    bins : int
        Number of equal-width bins.
    estimator : {"rv", "iw"}
        Loss estimator of every bin's Tsallis-INF (see :class:`~linsolve.tuning.TsallisINF`).
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

    def __init__(self, arms=None, context_range=None, bins: int = 5, *, estimator: str = "rv", seed: int = 0,
                 offset: float = 1.0):
        super().__init__(default_omega_arms() if arms is None else arms, seed=seed, offset=offset)
        self.estimator = check_estimator(estimator)
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
        return tsallis_weights(self._k[j] / scale, tsallis_eta(self.estimator, int(self._count[j])))

    def _choose(self, context):
        probs = self.probabilities(context)
        i = sample_index(self._rng, probs)
        return i, {"prob": float(probs[i]), "bin": self.bin_of(context)}

    def _update(self, index, loss, pending):
        j = pending["bin"]
        self._k[j, index] += tsallis_increment(self.estimator, loss, pending["prob"], float(self._loss_sum[j]),
                                               int(self._count[j]))
        self._loss_sum[j] += baseline_loss(self.estimator, loss, float(self._loss_sum[j]), int(self._count[j]))
        self._count[j] += 1

    def _config(self):
        return {**super()._config(), "context_range": list(self.context_range), "bins": self.bins,
                "estimator": self.estimator}

    def _state(self):
        return {"k": self._k.tolist(), "loss_sum": self._loss_sum.tolist(), "count": self._count.tolist()}

    def _parse_state(self, state):
        d = len(self.arms)
        return {"_k": parse_array(state["k"], (self.bins, d), "k", nonneg=self.estimator == "iw"),
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
    """SquareCB contextual bandit over Chebyshev regressions of the cost.

    Arms are drawn by inverse-gap weighting (SquareCB, Foster & Rakhlin,
    ICML 2020): every arm but the predicted best gets
    ``p_i = 1 / (d + γ gap_i)``, the predicted best gets the rest. Two
    regression models are available.

    ``model="shared"`` (default)
        One ridge regression of ``log(cost)`` on the tensor features
        ``T_j(u) T_k(v)`` of the context ``u`` and the arm value ``v`` (both
        mapped to [-1, 1]; ``j <= degree``, ``k <= arm_degree``), shared by
        all arms. Why the log: an iterative solve needs about
        ``log(1/rtol) / (-log ρ)`` iterations, so ``log(cost)`` is minus the
        log of the asymptotic convergence rate, smooth in the context even
        where the cost blows up (ρ → 1), and its errors are relative, so
        cheap and expensive instances weigh alike. Why shared: the cost is
        smooth in the arm value too, so every solve informs every arm and the
        model is usable after a few dozen rounds instead of a few per arm.
        The ridge ``ridge * ||θ||²`` spares the constant term, so an
        unexplored region is predicted at the mean log cost. The gaps are the
        predicted relative excess costs ``exp(ŷ_i - ŷ_best) - 1`` (capped at
        100) and ``γ_t = 4 sqrt(d t / ε_t)``, SquareCB's ``sqrt(d T / Reg_sq)``
        with the regression regret ``Reg_sq`` estimated online by ``ε_t t``
        (``ε_t``: mean squared error of the past log-cost predictions of the
        played arm): the tuner explores while its model is poor and exploits
        as it becomes accurate, but never stops exploring altogether, which
        keeps it from locking onto an arm where its model is wrong. (The
        paper's ``2 t sqrt(d / ε_t)`` grows like ``t``; with the shared model
        it was faster on the synthetic sequences but could lock in on other
        costs.) The constant 4 was chosen on development problems (seeds
        100-105 of the synthetic sequence, a 64×64 heat sequence, a quadratic
        toy cost), not on the benchmark's instances.
    ``model="paper"``
        The algorithm of "Learning to Relax" (Khodak et al., ICLR 2024): each
        arm ``i`` keeps a least-squares fit ``cost_i(c) ≈ 1 + scale θ_i · T(c)``
        of its (scaled) losses, box constrained (``|θ_0| <= 1/N``,
        ``|θ_j| <= 2 (b - a) L / (K N j)``, ``K`` the largest loss, ``L`` the
        loss range over the context width, ``N = 2 + 4 (b - a) L / K (1 + log m)``)
        and solved by :func:`scipy.optimize.lsq_linear`; the gaps are the
        predicted scaled losses and ``γ`` follows the paper's schedule.

    Both keep sufficient statistics (``XᵀX``, ``Xᵀy``), so memory and the
    saved state do not grow with the number of rounds.

    Parameters
    ----------
    arms : sequence of numbers
        Candidate values; ``None`` means :func:`~linsolve.tuning.default_omega_arms`.
    context_range : (float, float)
        Every context must lie in it (else ``ValueError``).
    degree : int
        Highest Chebyshev degree in the context (5: features ``T_0..T_5``, the paper's setting).
    model : {"shared", "paper"}
        Regression model (see above).
    arm_degree : int
        ``model="shared"``: highest Chebyshev degree in the arm value (capped
        at ``len(arms) - 1``). Ignored by ``"paper"``.
    ridge : float
        ``model="shared"``: ridge weight (> 0) on the non-constant coefficients.
    seed : int
        Seed of the tuner's random generator.
    offset : float
        Smallest possible cost (1 for iteration counts, 0 for seconds).

    Notes
    -----
    ``model="shared"`` assumes the cost behaves like an iteration count (the
    inverse of a convergence rate that varies smoothly with the context and
    the arm value). Its exploration weight ``γ`` follows the *average*
    prediction accuracy, so an arm whose cost is over-predicted in a rarely
    visited corner of the context range is explored there only slowly (with
    few arms and a cost of another shape, for instance); ``model="paper"``
    starts optimistic (every unexplored arm is predicted at the lowest loss)
    and can be the safer choice then. The log cost of a round is
    ``log(max(cost, 1e-12))`` with ``cost = loss + offset``.

    Examples
    --------
    SOR iteration counts from Young's theory, context = ρ(Jacobi):

    >>> import numpy as np
    >>> from linsolve.tuning import ChebCB, default_omega_arms
    >>> def sor_iterations(omega, beta):
    ...     w_opt = 1 + (beta / (1 + np.sqrt(1 - beta ** 2))) ** 2
    ...     rho = omega - 1 if omega >= w_opt else (
    ...         (omega * beta + np.sqrt((omega * beta) ** 2 - 4 * (omega - 1))) / 2) ** 2
    ...     return int(np.ceil(np.log(1e-8) / np.log(rho)))
    >>> tuner = ChebCB(default_omega_arms(), context_range=(0.8, 0.99), seed=0)
    >>> rng = np.random.default_rng(0)
    >>> for t in range(1000):
    ...     beta = rng.uniform(0.8, 0.99)
    ...     tuner.observe(sor_iterations(tuner.suggest(beta), beta))
    >>> [round(float(tuner.arms[tuner.predict(b).argmin()]), 2) for b in (0.8, 0.9, 0.99)]   # ω*: 1.25, 1.39, 1.75
    [1.25, 1.4, 1.75]
    >>> paper = ChebCB(default_omega_arms(), context_range=(0.8, 0.99), model="paper")   # the paper's learner
    """

    kind = "ChebCB"
    contextual = True

    def __init__(self, arms=None, context_range=None, degree: int = 5, *, model: str = "shared",
                 arm_degree: int = 6, ridge: float = 1.0, seed: int = 0, offset: float = 1.0):
        super().__init__(default_omega_arms() if arms is None else arms, seed=seed, offset=offset)
        if context_range is None:
            raise ValueError("ChebCB needs context_range=(lo, hi) covering every context")
        self.context_range = check_context_range(context_range)
        self.degree = _check_positive_int(degree, "degree", minimum=0)
        if not isinstance(model, str) or model not in CHEB_MODELS:
            raise ValueError(f"model must be one of {list(CHEB_MODELS)}, got {model!r}")
        self.model = model
        self.arm_degree = _check_positive_int(arm_degree, "arm_degree", minimum=0)
        if (isinstance(ridge, bool) or not isinstance(ridge, (int, float, np.integer, np.floating))
                or not np.isfinite(ridge) or ridge <= 0):
            raise ValueError(f"ridge must be a finite number > 0, got {ridge!r}")
        self.ridge = float(ridge)
        d, m = len(self.arms), self.degree + 1
        if model == "shared":
            self._init_shared(d, m)
        else:
            self._init_paper(d, m)

    # -- common -------------------------------------------------------------------------
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
        """Predicted cost of every arm at ``context`` (lower is better).

        ``model="shared"``: the predicted cost ``exp(ŷ)``; ``model="paper"``:
        the predicted scaled loss.
        """
        ctx = self._check_context(context)
        if self.model == "shared":
            return np.exp(np.minimum(self._design(ctx) @ self._theta, 700.0))
        return self._theta @ self.features(ctx)

    def probabilities(self, context) -> np.ndarray:
        """Sampling distribution over the arms at ``context``."""
        ctx = self._check_context(context)
        if self.model == "shared":
            return self._shared_probabilities(self._design(ctx) @ self._theta)
        return self._probabilities(self._theta @ self.features(ctx))

    def _choose(self, context):
        if self.model == "shared":
            logcost = self._design(context) @ self._theta
            i = sample_index(self._rng, self._shared_probabilities(logcost))
            return i, {"predicted": float(logcost[i])}
        yhat = self._theta @ self.features(context)
        i = sample_index(self._rng, self._probabilities(yhat))
        return i, {"predicted": float(yhat[i])}

    def _update(self, index, loss, pending):
        if self.model == "shared":
            self._update_shared(index, loss, pending)
        else:
            self._update_paper(index, loss, pending)

    @staticmethod
    def _igw(gap: np.ndarray, gamma: float, best: int) -> np.ndarray:
        """Inverse-gap weighting: ``1 / (d + γ gap)`` off the best arm, the rest on it."""
        probs = 1.0 / (len(gap) + gamma * gap)
        probs[best] = 0.0
        probs[best] = max(1.0 - probs.sum(), 0.0)
        return probs

    # -- model="shared" -----------------------------------------------------------------
    GAP_CAP = 100.0   # largest relative excess cost the exploration weights distinguish

    def _init_shared(self, d, m):
        arms = self.arms.astype(float)
        span = arms.max() - arms.min()
        v = 2.0 * (arms - arms.min()) / span - 1.0 if span > 0 else np.zeros_like(arms)
        self._arm_features = chebyshev.chebvander(v, min(self.arm_degree, d - 1))   # (d, k)
        p = m * self._arm_features.shape[1]
        self._gram = np.zeros((p, p))
        self._moment = np.zeros(p)
        self._theta = np.zeros(p)
        self._err = 0.0                      # sum of squared errors of the predicted log cost
        self._count = np.zeros(d, dtype=np.int64)
        penalty = np.full(p, self.ridge)
        penalty[0] = 0.0                     # T_0(u) T_0(v) = 1: leave the mean log cost unpenalised
        self._penalty = penalty

    def _design(self, context) -> np.ndarray:
        """Rows ``T(u) ⊗ T(v_i)``, one per arm."""
        phi = self.features(context)
        return (phi[None, :, None] * self._arm_features[:, None, :]).reshape(len(self.arms), -1)

    def _shared_probabilities(self, logcost: np.ndarray) -> np.ndarray:
        d = len(logcost)
        if self.t == 0:
            return np.full(d, 1.0 / d)
        best = int(np.argmin(logcost))
        gap = np.expm1(np.minimum(logcost - logcost[best], np.log(self.GAP_CAP)))
        eps = max(self._err / self.t, 1e-12)
        gamma = 4.0 * np.sqrt(d * (self.t + 1) / eps)
        return self._igw(gap, gamma, best)

    def _update_shared(self, index, loss, pending):
        x = self._design(pending["context"])[index]
        target = np.log(max(loss + self.offset, 1e-12))
        # The very first round had no model: count it as an error of 1 (a factor e), so gamma starts small.
        self._err += (pending["predicted"] - target) ** 2 if self.t else 1.0
        self._gram += np.outer(x, x)
        self._moment += target * x
        self._count[index] += 1
        system = self._gram + np.diag(self._penalty)
        try:
            # Positive definite once a round is in: the constant feature is 1 and the rest are penalised.
            self._theta = np.linalg.solve(system, self._moment)
        except np.linalg.LinAlgError:  # pragma: no cover - defensive
            self._theta = np.linalg.lstsq(system, self._moment, rcond=None)[0]

    # -- model="paper" ------------------------------------------------------------------
    def _init_paper(self, d, m):
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

    def _probabilities(self, yhat: np.ndarray) -> np.ndarray:
        return self._igw(yhat - yhat.min(), self._eta, int(np.argmin(yhat)))

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

    def _update_paper(self, index, loss, pending):
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

    # -- serialisation ------------------------------------------------------------------
    def _config(self):
        config = {**super()._config(), "context_range": list(self.context_range), "degree": self.degree,
                  "model": self.model}
        if self.model == "shared":
            config.update(arm_degree=self.arm_degree, ridge=self.ridge)
        return config

    def _state(self):
        if self.model == "shared":
            return {"gram": self._gram.tolist(), "moment": self._moment.tolist(), "theta": self._theta.tolist(),
                    "count": self._count.tolist(), "err": self._err}
        return {"gram": self._gram.tolist(), "moment": self._moment.tolist(), "count": self._count.tolist(),
                "theta": self._theta.tolist(), "lmin": self._lmin, "lmax": self._lmax,
                "scale": self._scale, "eta": self._eta, "pp": self._pp, "pl": self._pl, "ll": self._ll}

    def _parse_state(self, state):
        d, m = len(self.arms), self.degree + 1
        if self.model == "shared":
            p = self._gram.shape[0]
            out = {"_gram": parse_array(state["gram"], (p, p), "gram"),
                   "_moment": parse_array(state["moment"], (p,), "moment"),
                   "_theta": parse_array(state["theta"], (p,), "theta"),
                   "_count": _parse_counts(state["count"], (d,), "count"),
                   "_err": parse_float(state["err"], "err", nonneg=True)}
            if not np.allclose(out["_gram"], out["_gram"].T):
                raise ValueError("gram matrix is not symmetric")
            return out
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
