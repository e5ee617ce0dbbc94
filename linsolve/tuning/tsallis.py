"""Tsallis-INF: a multi-armed bandit that learns the best fixed parameter from costs alone."""
from __future__ import annotations

import numpy as np

from .base import Tuner, default_omega_arms, parse_array, parse_float, sample_index

__all__ = ["TsallisINF", "tsallis_weights"]


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


class TsallisINF(Tuner):
    """½-Tsallis-INF bandit (Zimmert & Seldin) as used in "Learning to Relax".

    Learns, from the cost of each solve only, the arm with the lowest total
    cost; its regret against the best fixed arm in hindsight grows like
    ``sqrt(d T)``. The step is ``eta_t = 2 / sqrt(t)``; the loss of a round is
    ``(cost - offset) / p_i``, importance-weighted, and divided by the running
    mean loss so the learner is scale free (when every loss so far is 0 the
    scale is 1 instead of a division by zero).

    Parameters
    ----------
    arms : sequence of numbers, optional
        Candidate values (ω of SOR/SSOR, an AMG threshold, a polynomial
        degree...). Default: :func:`default_omega_arms`, 20 points in [1, 1.95].
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
    """

    kind = "TsallisINF"

    def __init__(self, arms=None, *, seed: int = 0, offset: float = 1.0):
        super().__init__(default_omega_arms() if arms is None else arms, seed=seed, offset=offset)
        d = len(self.arms)
        self._k = np.zeros(d)          # cumulative importance-weighted losses
        self._loss_sum = 0.0           # for the running mean loss (the scale)

    @property
    def scale(self) -> float:
        mean = self._loss_sum / self.t if self.t else 0.0
        return mean if mean > 0 else 1.0

    def probabilities(self) -> np.ndarray:
        """Current sampling distribution over the arms."""
        eta = 2.0 / np.sqrt(self.t + 1)
        return tsallis_weights(self._k / self.scale, eta)

    def _choose(self, context):
        probs = self.probabilities()
        i = sample_index(self._rng, probs)
        return i, {"prob": float(probs[i])}

    def _update(self, index, loss, pending):
        self._loss_sum += loss
        self._k[index] += loss / pending["prob"]

    def _state(self) -> dict:
        return {"k": self._k.tolist(), "loss_sum": self._loss_sum}

    def _parse_state(self, state):
        return {"_k": parse_array(state["k"], (len(self.arms),), "k", nonneg=True),
                "_loss_sum": parse_float(state["loss_sum"], "loss_sum", nonneg=True)}

    def _validate_state(self, state):
        parsed = super()._validate_state(state)
        pending = parsed["_pending"]
        if pending is not None:
            prob = pending.get("prob")
            if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 < prob <= 1:
                raise ValueError(f"invalid {self.kind} state: pending probability {prob!r} not in (0, 1]")
        return parsed

