"""Online tuning of a solver parameter across a sequence of systems ("Learning to Relax"),
and classical estimates such as the SOR-optimal omega.

This sub-package owns the tuners (:class:`TsallisINF`, :class:`BinnedTsallisINF`,
:class:`ChebCB`, the learning-free :class:`SpectralOmega`), their common
``suggest(context) / observe(cost) / state_dict() / load_state_dict()``
protocol, :func:`make_tuner` (what ``SequenceSolver(tuner=...)`` calls) and the
spectral ω helpers :func:`optimal_omega` / :func:`jacobi_spectral_radius`.
Tuners work with any numeric arms: SOR/SSOR ω, an AMG threshold, a degree...
"""
from __future__ import annotations

from .base import Tuner, default_omega_arms
from .contextual import BinnedTsallisINF, ChebCB
from .omega import jacobi_spectral_radius, optimal_omega
from .spectral import SpectralOmega
from .tsallis import TsallisINF

__all__ = ["Tuner", "TsallisINF", "BinnedTsallisINF", "ChebCB", "SpectralOmega", "make_tuner",
           "default_omega_arms", "optimal_omega", "jacobi_spectral_radius", "TUNERS"]

TUNERS = {"tsallis": TsallisINF, "binned": BinnedTsallisINF, "chebcb": ChebCB, "spectral": SpectralOmega}
_ALIASES = {"tsallis-inf": "tsallis", "tsallisinf": "tsallis", "binned-tsallis": "binned",
            "binnedtsallisinf": "binned", "cheb": "chebcb", "spectralomega": "spectral"}


def make_tuner(name_or_tuner, arms=None, context_range=None, seed: int = 0):
    """A tuner from its name, or the given tuner object unchanged.

    Parameters
    ----------
    name_or_tuner : str or tuner
        ``"tsallis"``, ``"binned"``, ``"chebcb"`` or ``"spectral"`` (case
        insensitive), or an object with ``suggest`` and ``observe`` (returned
        as is; ``arms``, ``context_range`` and ``seed`` are then ignored).
    arms : sequence of numbers, optional
        Candidate values; ``None`` means :func:`default_omega_arms` for the
        bandits and the continuous ω* for ``"spectral"``.
    context_range : (float, float), optional
        Required by the contextual tuners ``"binned"`` and ``"chebcb"``.
    seed : int
        Seed of the tuner's random generator.

    Returns
    -------
    Tuner

    Examples
    --------
    >>> from linsolve.tuning import make_tuner
    >>> make_tuner("chebcb", context_range=(0.0, 1.0), seed=1)
    ChebCB(20 arms, t=0, seed=1)
    >>> t = make_tuner("tsallis", arms=[1.0, 1.5])
    >>> make_tuner(t) is t
    True
    """
    if not isinstance(name_or_tuner, str):
        if callable(getattr(name_or_tuner, "suggest", None)) and callable(getattr(name_or_tuner, "observe", None)):
            return name_or_tuner
        raise TypeError(f"tuner must be a name ({sorted(TUNERS)}) or an object with suggest() and observe(), "
                        f"got {type(name_or_tuner).__name__}")
    key = name_or_tuner.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TUNERS:
        raise ValueError(f"unknown tuner {name_or_tuner!r}; choose one of {sorted(TUNERS)}")
    cls = TUNERS[key]
    if cls.contextual:
        if context_range is None:
            raise ValueError(f"tuner {key!r} is contextual and needs context_range=(lo, hi)")
        return cls(arms, context_range, seed=seed)
    return cls(arms, seed=seed)
