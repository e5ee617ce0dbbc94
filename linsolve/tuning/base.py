"""What every online tuner shares: arm and cost validation, seeding, the suggest/observe
protocol and validated (all-or-nothing) serialisation.

A tuner plays one round per solve: ``value = tuner.suggest(context)`` picks a
parameter value, the caller solves with it, then ``tuner.observe(cost)`` feeds
back what the solve cost (iterations, or seconds).
"""
from __future__ import annotations

import copy
import json
import numbers
import warnings
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["Tuner", "TunerOrderError", "default_omega_arms", "STATE_VERSION"]

# 2: TsallisINF/BinnedTsallisINF gained ``estimator``, ChebCB ``model`` (new state fields).
STATE_VERSION = 2


def default_omega_arms() -> np.ndarray:
    """The paper's ω grid: 20 equally spaced values in [1, 1.95].

    Examples
    --------
    >>> from linsolve.tuning import default_omega_arms
    >>> arms = default_omega_arms()
    >>> len(arms), float(arms[0]), float(arms[-1])
    (20, 1.0, 1.95)
    """
    return np.linspace(1.0, 1.95, 20)


def check_arms(arms, name: str = "arms") -> np.ndarray:
    """Arms as a 1-D numeric array: non-empty, finite, unique (order kept)."""
    if arms is None:
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got None")
    if isinstance(arms, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of numbers, got a string")
    try:
        arr = np.asarray(arms)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} cannot be converted to an array: {exc}") from None
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer)
                                     or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf (first at index {int(np.flatnonzero(~np.isfinite(arr))[0])})")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"{name} must be unique, got duplicates in {arr.tolist()}")
    return arr.copy()


def check_context_range(context_range, name: str = "context_range") -> tuple[float, float]:
    """``(lo, hi)`` with finite ``lo < hi``."""
    try:
        lo, hi = context_range
        lo, hi = float(lo), float(hi)
    except Exception:
        raise TypeError(f"{name} must be a pair (lo, hi) of numbers, got {context_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or not lo < hi:
        raise ValueError(f"{name} must be finite with lo < hi, got {context_range!r}")
    return lo, hi


def check_context(context, context_range: tuple[float, float], owner: str) -> float:
    """A finite real context inside ``context_range`` (a 1e-12 relative slack absorbs rounding)."""
    if context is None:
        raise ValueError(f"{owner} is contextual: pass suggest(context=...) with a number in "
                         f"{list(context_range)}")
    if isinstance(context, bool) or not isinstance(context, numbers.Real):
        if isinstance(context, np.ndarray) and context.size == 1:
            context = context.item()
        else:
            raise TypeError(f"context must be a real number, got {type(context).__name__}")
    c = float(context)
    lo, hi = context_range
    if not np.isfinite(c):
        raise ValueError(f"context must be finite, got {context}")
    slack = 1e-12 * max(1.0, abs(lo), abs(hi))
    if c < lo - slack or c > hi + slack:
        raise ValueError(f"context {c} lies outside context_range [{lo}, {hi}] of {owner}; "
                         f"build the tuner with a range that covers every context")
    return min(max(c, lo), hi)


def check_cost(cost) -> float:
    """A finite, non-negative real cost."""
    if isinstance(cost, bool) or not isinstance(cost, numbers.Real):
        if isinstance(cost, np.ndarray) and cost.size == 1:
            cost = cost.item()
        else:
            raise TypeError(f"cost must be a real number (iterations or seconds), got {type(cost).__name__}")
    c = float(cost)
    if not np.isfinite(c):
        raise ValueError(f"cost must be finite, got {cost}")
    if c < 0:
        raise ValueError(f"cost must be >= 0, got {cost}")
    return c


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise TypeError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_offset(offset) -> float:
    if isinstance(offset, bool) or not isinstance(offset, numbers.Real) or not np.isfinite(offset):
        raise TypeError(f"offset must be a finite real number, got {offset!r}")
    return float(offset)


def _state_error(kind: str, what: str) -> ValueError:
    return ValueError(f"invalid {kind} state: {what}")


class TunerOrderError(RuntimeError, ValueError):
    """``observe()`` without a pending ``suggest()``: the calls came in the wrong order.

    A ``RuntimeError`` (a call made in the wrong state) and a ``ValueError``
    (what linsolve raises for every misuse of its API), so either catches it.
    """


class Tuner:
    """Base class of the online tuners (not used directly).

    Subclasses implement ``_choose(context) -> (arm index, extra info)``,
    ``_update(index, loss, pending)`` and their own state fields. The base
    class owns the arms, the random generator and the suggest/observe pairing.

    Attributes
    ----------
    arms : ndarray
        The candidate values (``None`` for :class:`SpectralOmega` without a grid).
    seed : int
        Seed of the tuner's own random generator.
    offset : float
        Smallest possible cost; the learners see ``loss = max(cost - offset, 0)``
        (1 for iteration counts, as in the paper; 0 for seconds).
    """

    kind = "Tuner"
    contextual = False

    def __init__(self, arms, *, seed: int = 0, offset: float = 1.0):
        self.arms = check_arms(arms)
        self.seed = check_seed(seed)
        self.offset = check_offset(offset)
        self._rng = np.random.default_rng(self.seed)
        self._pending: Optional[Dict[str, Any]] = None
        self.t = 0  # completed rounds

    # -- protocol -----------------------------------------------------------------------
    def suggest(self, context=None):
        """Pick a value (one of ``arms``) for the next solve.

        Calling ``suggest`` again before ``observe`` abandons the previous
        suggestion (no feedback is recorded for it).
        """
        ctx = self._check_context(context)
        index, extra = self._choose(ctx)
        self._pending = {"index": int(index), "context": ctx, **extra}
        return self.arms[index].item()

    def observe(self, cost) -> None:
        """Record the cost of the solve run with the last suggested value."""
        if self._pending is None:
            raise TunerOrderError(f"{type(self).__name__}.observe() called without a pending suggest(); "
                               "call suggest() before each solve and observe(cost) once after it")
        cost = check_cost(cost)
        if 0.0 < cost < self.offset:
            # a cost below the smallest possible one: seconds, not iterations. Every loss would be 0 and nothing
            # learned (uniform probabilities after 1000 rounds, 5x the best arm's mean time): count from 0
            warnings.warn(f"{type(self).__name__}: cost {cost:g} is below offset={self.offset:g}, the smallest "
                          f"cost the tuner was told to expect (1 suits iteration counts); using offset=0 from now "
                          f"on (pass offset=0 for costs in seconds)", RuntimeWarning, stacklevel=2)
            self.offset = 0.0
        pending, self._pending = self._pending, None
        self._update(pending["index"], max(cost - self.offset, 0.0), pending)
        self.t += 1

    def _check_context(self, context):
        return None if context is None else context

    def _choose(self, context):  # pragma: no cover - abstract
        raise NotImplementedError

    def _update(self, index: int, loss: float, pending: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- serialisation ------------------------------------------------------------------
    def _config(self) -> dict:
        return {"arms": self.arms.tolist(), "seed": self.seed, "offset": self.offset}

    def _state(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _parse_state(self, state: dict) -> dict:  # pragma: no cover - abstract
        """Validate a subclass state; return the attributes to assign (nothing assigned yet)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """JSON-serialisable snapshot: configuration, learned statistics, random generator.

        A tuner built with the same configuration and given this state with
        :meth:`load_state_dict` continues exactly as this one would.
        """
        state = {"kind": self.kind, "version": STATE_VERSION, "config": self._config(), "t": self.t,
                 "rng": self._rng.bit_generator.state,
                 "pending": copy.deepcopy(self._pending), "state": self._state()}
        # Round-trip through JSON so what we return is exactly what a file would give back.
        return json.loads(json.dumps(state))

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` snapshot.

        Everything is validated before anything is assigned: a corrupt or
        mismatched state raises ``ValueError`` and leaves the tuner unchanged.
        """
        parsed = self._validate_state(state)
        for key, value in parsed.items():
            setattr(self, key, value)

    @classmethod
    def from_state_dict(cls, state: dict) -> "Tuner":
        """Build a tuner from its :meth:`state_dict` (configuration included)."""
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise _state_error(cls.kind, "expected a dict with a 'config' dict")
        try:
            tuner = cls(**state["config"])
        except (TypeError, ValueError) as exc:
            raise _state_error(cls.kind, f"bad config: {exc}") from None
        tuner.load_state_dict(state)
        return tuner

    def _validate_state(self, state) -> dict:
        kind = self.kind
        if not isinstance(state, dict):
            raise _state_error(kind, f"expected a dict, got {type(state).__name__}")
        if state.get("kind") != kind:
            raise _state_error(kind, f"kind is {state.get('kind')!r}, this tuner is {kind!r}")
        version = state.get("version")
        if version != STATE_VERSION:
            if isinstance(version, int) and not isinstance(version, bool) and 0 < version < STATE_VERSION:
                raise _state_error(kind, f"version {version} was written by an earlier linsolve whose tuner "
                                         f"statistics differ (this one reads version {STATE_VERSION}); "
                                         "start a fresh tuner")
            raise _state_error(kind, f"version {version!r} is not supported (expected {STATE_VERSION})")
        config = state.get("config")
        try:
            same = json.loads(json.dumps(config)) == json.loads(json.dumps(self._config()))
        except (TypeError, ValueError):
            same = False
        if not same:
            raise _state_error(kind, f"it was saved for config {config!r}, but this tuner has "
                                     f"{self._config()!r}; build the tuner with the same arguments "
                                     "or use from_state_dict()")
        t = state.get("t")
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise _state_error(kind, f"t must be a non-negative int, got {t!r}")
        rng = np.random.default_rng(0)
        try:
            rng.bit_generator.state = state.get("rng")
        except Exception as exc:
            raise _state_error(kind, f"bad random generator state ({exc})") from None
        pending = state.get("pending")
        if pending is not None:
            if not isinstance(pending, dict):
                raise _state_error(kind, f"bad pending suggestion {pending!r}")
            if self.arms is not None:
                index = pending.get("index")
                if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.arms):
                    raise _state_error(kind, f"bad pending suggestion {pending!r}")
            pending = copy.deepcopy(pending)
        inner = state.get("state")
        if not isinstance(inner, dict):
            raise _state_error(kind, "missing 'state' dict")
        try:
            parsed = self._parse_state(inner)
        except ValueError as exc:
            raise _state_error(kind, str(exc)) from None
        except (TypeError, KeyError, IndexError, AttributeError) as exc:
            raise _state_error(kind, f"malformed field ({type(exc).__name__}: {exc})") from None
        parsed.update({"t": t, "_rng": rng, "_pending": pending})
        return parsed

    def __repr__(self) -> str:
        arms = "None" if self.arms is None else f"{len(self.arms)} arms"
        return f"{type(self).__name__}({arms}, t={self.t}, seed={self.seed})"


# -- small helpers for subclasses' state parsing ------------------------------------------
def parse_array(value, shape, name: str, *, nonneg: bool = False) -> np.ndarray:
    """A finite float array of exactly ``shape`` from a JSON list."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a numeric array") from None
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} has shape {arr.shape}, expected {tuple(shape)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf")
    if nonneg and np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0")
    return arr


def parse_float(value, name: str, *, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if nonneg and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def parse_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def sample_index(rng: np.random.Generator, probs: np.ndarray) -> int:
    """Draw an index from (unnormalised, non-negative) ``probs`` by inverse CDF.

    One uniform draw per call, whatever the distribution, so runs stay
    reproducible and ``rng.choice``'s sum-to-one tolerance never bites.
    """
    cdf = np.cumsum(probs)
    u = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), len(probs) - 1))
