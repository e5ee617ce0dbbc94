"""Krylov and stationary methods (the KSP side): one module per method, same signature everywhere.

Each method ``m`` has a SciPy-style ``m(A, b, x0, *, rtol, atol, maxiter, ..., callback) -> (x, info)``
and a rich ``m_result(...) -> SolveResult`` that :func:`linsolve.solve` dispatches to.
"""
from .cg import cg, cg_result
from .dcdm import dcdm, dcdm_result
from .sor import sor, sor_result, ssor_cg_result

__all__ = ["cg", "cg_result", "sor", "sor_result", "ssor_cg_result", "dcdm", "dcdm_result"]
