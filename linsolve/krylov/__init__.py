"""Krylov and stationary methods (the KSP side): one module per method, same signature everywhere.

Each method ``m`` has a SciPy-style ``m(A, b, x0, *, rtol, atol, maxiter, ..., callback) -> (x, info)``
and a rich ``m_result(...) -> SolveResult`` that :func:`linsolve.solve` dispatches to.
"""
from .cg import cg, cg_result

__all__ = ["cg", "cg_result"]

try:
    from .sor import sor, sor_result  # noqa: F401
    __all__ += ["sor", "sor_result"]
except ImportError:  # pragma: no cover - during development only
    pass
try:
    from .dcdm import dcdm, dcdm_result  # noqa: F401
    __all__ += ["dcdm", "dcdm_result"]
except ImportError:  # pragma: no cover
    pass
