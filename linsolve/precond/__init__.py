"""Preconditioners, each a ``scipy.sparse.linalg.LinearOperator`` approximating ``A^-1``.

A preconditioner knows nothing of the Krylov method that consumes it (PETSc's PC/KSP split).
"""
from .amg import AMGPreconditioner, amg
from .banded import BandedCholeskyPreconditioner, banded_cholesky
from .deflation import aggregation_deflation
from .direct import SparseFactorPreconditioner, sparse_factor
from .ic import ic0
from .jacobi import JacobiPreconditioner, jacobi
from .learned import learned
from .multigrid import fast_learned, geometric_mg
from .ssor import ssor

__all__ = ["amg", "AMGPreconditioner", "ssor", "learned", "geometric_mg", "fast_learned", "ic0",
           "aggregation_deflation", "banded_cholesky", "BandedCholeskyPreconditioner", "sparse_factor",
           "SparseFactorPreconditioner", "jacobi", "JacobiPreconditioner"]
