"""linsolve: faster sparse SPD solves by learning, behind SciPy's interface.

Drop-in solvers (``cg``, ``dcdm``, ``sor``), a fast drop-in for code that calls
SciPy (``auto_cg``, ``patch_scipy``), a rich entry point (``solve``),
preconditioners as LinearOperators (``precond``), problem generators
(``problems``), online parameter tuning (``tuning``), learned models
(``models``, ``learn``) and a simulation-loop plugin (``SequenceSolver``).

Stopping rule everywhere: converged means ``||b - A x||_2 <= max(rtol ||b||_2, atol)``
on the true residual.
"""
from . import krylov, precond, problems, shim, structure
from ._result import SolveResult
from .krylov import cg, dcdm, sor
from .solve import available_methods, forget_last_preconditioners, register_method, solve
from .shim import auto_cg, patch_scipy
from .structure import find_grid

__version__ = "0.1.0"

__all__ = ["cg", "dcdm", "sor", "solve", "auto_cg", "patch_scipy", "find_grid", "structure", "shim", "SolveResult",
           "SequenceSolver", "available_methods", "register_method", "forget_last_preconditioners", "problems", "precond", "krylov", "tuning", "models", "learn", "kernels",
           "backends", "__version__"]

_LAZY = {
    "SequenceSolver": ("linsolve.sequence", "SequenceSolver"),
    "tuning": ("linsolve.tuning", None),
    "models": ("linsolve.models", None),
    "learn": ("linsolve.learn", None),
    "kernels": ("linsolve.kernels", None),
    "backends": ("linsolve.backends", None),
}


def __getattr__(name):
    # Heavy parts (torch, numba compilation) load on first use, not on ``import linsolve``.
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'linsolve' has no attribute {name!r}")
