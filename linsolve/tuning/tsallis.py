"""Tsallis-INF: a multi-armed bandit that learns the best fixed parameter from costs alone."""
from __future__ import annotations

import numpy as np

from .base import Tuner, default_omega_arms, parse_array, parse_float, sample_index

__all__ = ["TsallisINF", "tsallis_weights", "tsallis_increment", "baseline_loss", "ESTIMATORS"]


def tsallis_weights(k: np.ndarray, eta: float, *, tol: float = 1e-12, max_newton: int = 100) -> np.ndarray:
    """Probabilities of ½-Tsallis FTRL: ``p_i = 4 / (eta (k_i - x))^2`` with ``sum p = 1``.

    The normaliser ``x`` is found by Newton's method. Shifting ``k`` so that
    ``min k = 0`` puts the root in ``[-2 sqrt(d) / eta, -2 / eta]``; starting
    at the right end, where the (increasing, convex) normalisation error is
    ``>= 0``, Newton's iterates decrease monotonically onto the root and never
    cross the pole at ``x = min k``.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.tuning.tsallis import tsallis_weights
    >>> p = tsallis_weights(np.array([0.0, 1.0, 5.0]), eta=1.0)
    >>> bool(abs(p.sum() - 1) < 1e-12 and p[0] > p[1] > p[2])
    True
    """
    k = np.asarray(k, dtype=float)
    k = k - k.min()
    x = -2.0 / eta
    for _ in range(max_newton):
        w = 4.0 / (eta * (k - x)) ** 2
        f = w.sum() - 1.0
        if f <= tol:
            break
        x -= f / (eta * np.sum(w ** 1.5))
    w = 4.0 / (eta * (k - x)) ** 2
    return w / w.sum()


ESTIMATORS = ("rv", "iw")


def check_estimator(estimator) -> str:
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    return estimator


def tsallis_eta(estimator: str, rounds: int) -> float:
    """Step of round ``rounds + 1``: ``4/sqrt(t)`` (reduced variance) or ``2/sqrt(t)`` (importance weighted)."""
    return (4.0 if estimator == "rv" else 2.0) / np.sqrt(rounds + 1)


#: The reduced-variance estimator's baseline (the running mean loss) counts a loss at most this many times the mean
#: so far: solves that fail at ``maxiter`` (100x the usual cost) inflated it far above every arm that converges,
#: whose estimates then all hit the clip alike, and the learner locked onto whichever it played most (5 of 30 seeds
#: on an arm 2.5x the best's cost; 14 of 30 with costs spread over 1e3-1e12).
BASELINE_WINSOR = 4.0


def baseline_loss(estimator: str, loss: float, loss_sum: float, rounds: int) -> float:
    """What a round adds to the running sum behind the baseline and scale (``loss`` itself for ``"iw"``).

    Examples
    --------
    >>> from linsolve.tuning.tsallis import baseline_loss
    >>> baseline_loss("rv", 10_000.0, loss_sum=500.0, rounds=10), baseline_loss("iw", 10_000.0, 500.0, 10)
    (200.0, 10000.0)
    """
    if estimator != "rv" or not rounds or loss_sum <= 0:
        return loss
    return min(loss, BASELINE_WINSOR * loss_sum / rounds)


def tsallis_increment(estimator: str, loss: float, prob: float, loss_sum: float, rounds: int) -> float:
    """What the played arm adds to its cumulative (unnormalised) loss estimate.

    ``loss_sum`` and ``rounds`` describe the rounds before this one, so the
    baseline and the scale are known before the arm is drawn.

    * ``"iw"``: ``loss / prob``.
    * ``"rv"``: ``(loss - B) / prob`` with the baseline ``B`` = the running
      mean loss, clipped below at ``-s / (2 eta sqrt(prob))`` (``s`` the
      running mean, i.e. the learner's scale; ``eta`` this round's step).
      On the normalised scale the clip is ``eta lhat sqrt(p) >= -1/2``: one
      round can then raise an arm's ½-Tsallis weight ``p = 4 / (eta (L - x))²``
      by at most ``(4/3)²``, the condition of the usual local-norm stability
      bound. Without it a rarely played arm that happens to beat the average
      once (an easy instance) gets a huge negative estimate and is then
      exploited for thousands of rounds.

    Examples
    --------
    >>> from linsolve.tuning.tsallis import tsallis_increment
    >>> tsallis_increment("iw", 30.0, 0.5, loss_sum=400.0, rounds=10)
    60.0
    >>> tsallis_increment("rv", 30.0, 0.5, loss_sum=400.0, rounds=10)   # (30 - 40) / 0.5
    -20.0
    >>> bool(tsallis_increment("rv", 0.0, 1e-6, loss_sum=400.0, rounds=10) > -40 / 1e-6)   # clipped
    True
    """
    if estimator != "rv":
        return loss / prob
    mean = loss_sum / rounds if rounds else 0.0
    scale = mean if mean > 0 else 1.0
    floor = -scale / (2.0 * tsallis_eta(estimator, rounds) * np.sqrt(prob))
    return max((loss - mean) / prob, floor)


class TsallisINF(Tuner):
    """½-Tsallis-INF bandit (Zimmert & Seldin, JMLR 2021) as used in "Learning to Relax".

    Learns, from the cost of each solve only, the arm with the lowest total
    cost; its regret against the best fixed arm in hindsight grows like
    ``sqrt(d T)`` (adversarial) and ``log T`` (stochastic). Losses are
    ``cost - offset``, divided by their running mean so the learner is scale
    free (scale 1 while every loss so far is 0). Two loss estimators:

    ``estimator="rv"`` (default)
        A reduced-variance estimator in the spirit of Zimmert & Seldin's
        (their ``(l - B)/p + B``, step ``eta_t = 4 / sqrt(t)``): the played
        arm's cumulative loss grows by ``(loss - B_t) / p_i`` with the
        baseline ``B_t`` = the running mean loss (a control variate known
        before the round, so the estimate stays unbiased), which removes the
        part of the loss every arm shares: that part dominates the variance
        when the difficulty of the instances varies. The estimate is clipped
        below at ``-1 / (2 eta_t sqrt(p_i))`` on the normalised scale (see
        :func:`tsallis_increment`), a small bias, only in rounds where a
        rarely played arm beats the average, that keeps the learner stable.
        Baseline and clip were chosen on development sequences (seeds 100-105
        of :func:`~linsolve.problems.shifted_laplacian_sequence`), not on the
        benchmark's.
    ``estimator="iw"``
        The plain importance-weighted estimate ``loss / p_i`` with
        ``eta_t = 2 / sqrt(t)``: the algorithm of "Learning to Relax"
        (Khodak et al., ICLR 2024) and its MATLAB code.

    Parameters
    ----------
    arms : sequence of numbers, optional
        Candidate values (ω of SOR/SSOR, an AMG threshold, a polynomial
        degree...). Default: :func:`default_omega_arms`, 20 points in [1, 1.95].
    estimator : {"rv", "iw"}
        Loss estimator (see above).
    seed : int
        Seed of the tuner's random generator.
    offset : float
        Smallest possible cost (1 for iteration counts, 0 for seconds).

    Examples
    --------
    >>> from linsolve.tuning import TsallisINF
    >>> tuner = TsallisINF([1.0, 1.5, 1.9], seed=0)
    >>> costs = {1.0: 90, 1.5: 40, 1.9: 70}
    >>> for _ in range(300):
    ...     omega = tuner.suggest()
    ...     tuner.observe(costs[omega])
    >>> float(tuner.arms[tuner.probabilities().argmax()])
    1.5
    >>> TsallisINF(estimator="iw").estimator      # the paper's variant
    'iw'
    """

    kind = "TsallisINF"

    def __init__(self, arms=None, *, estimator: str = "rv", seed: int = 0, offset: float = 1.0):
        super().__init__(default_omega_arms() if arms is None else arms, seed=seed, offset=offset)
        self.estimator = check_estimator(estimator)
        d = len(self.arms)
        self._k = np.zeros(d)          # cumulative loss estimates (unnormalised)
        self._loss_sum = 0.0           # for the running mean loss (the scale)

    @property
    def scale(self) -> float:
        mean = self._loss_sum / self.t if self.t else 0.0
        return mean if mean > 0 else 1.0

    def probabilities(self) -> np.ndarray:
        """Current sampling distribution over the arms."""
        return tsallis_weights(self._k / self.scale, tsallis_eta(self.estimator, self.t))

    def _choose(self, context):
        probs = self.probabilities()
        i = sample_index(self._rng, probs)
        return i, {"prob": float(probs[i])}

    def _update(self, index, loss, pending):
        self._k[index] += tsallis_increment(self.estimator, loss, pending["prob"], self._loss_sum, self.t)
        self._loss_sum += baseline_loss(self.estimator, loss, self._loss_sum, self.t)

    def _config(self):
        return {**super()._config(), "estimator": self.estimator}

    def _state(self) -> dict:
        return {"k": self._k.tolist(), "loss_sum": self._loss_sum}

    def _parse_state(self, state):
        # Reduced-variance estimates go below zero for arms better than the baseline.
        return {"_k": parse_array(state["k"], (len(self.arms),), "k", nonneg=self.estimator == "iw"),
                "_loss_sum": parse_float(state["loss_sum"], "loss_sum", nonneg=True)}

    def _validate_state(self, state):
        parsed = super()._validate_state(state)
        pending = parsed["_pending"]
        if pending is not None:
            prob = pending.get("prob")
            if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 < prob <= 1:
                raise ValueError(f"invalid {self.kind} state: pending probability {prob!r} not in (0, 1]")
        return parsed
