"""Preconditioners, each a ``scipy.sparse.linalg.LinearOperator`` approximating ``A^-1``.

A preconditioner knows nothing of the Krylov method that consumes it (PETSc's PC/KSP split).
"""
from .amg import AMGPreconditioner, amg

__all__ = ["amg", "AMGPreconditioner"]

try:
    from .ssor import ssor  # noqa: F401
    __all__.append("ssor")
except ImportError:  # pragma: no cover - during development only
    pass
try:
    from .learned import learned  # noqa: F401
    __all__.append("learned")
except ImportError:  # pragma: no cover
    pass
try:
    from .multigrid import fast_learned, geometric_mg  # noqa: F401
    __all__ += ["geometric_mg", "fast_learned"]
except ImportError:  # pragma: no cover
    pass
try:
    from .ic import ic0  # noqa: F401
    __all__.append("ic0")
except ImportError:  # pragma: no cover
    pass
